"""Reading the JSON and YAML files the tool is handed (run directories, endpoints, Hub snapshots), checked.

Every reader goes through :func:`parse_json` / :func:`read_json` / :func:`read_yaml`, so a damaged file is one
error naming the file and what is wrong with it, whatever the damage: not UTF-8, not valid JSON or YAML, nested
too deeply to read (``RecursionError``), an integer too long to convert (Python's limit on integer strings),
a YAML alias (refused: an alias bomb expands to billions of entries), or another type than expected.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hf_llpf.errors import LLPFError, RunDirectoryError


def parse_json(
    text: str | bytes, *, where: str, kind: type | tuple[type, ...] = dict, error: type[LLPFError] = RunDirectoryError
) -> Any:
    """Parse JSON text, refusing anything that does not parse into a ``kind``.

    Args:
        text: the file's content.
        where: how the message names the file (its path, or ``config.json of org/repo``).
        kind: the type(s) the top-level value must have.
        error: the error class raised (the caller's domain: a run directory, an endpoint).

    Raises:
        LLPFError: an ``error``, naming ``where`` and the problem.
    """
    try:
        # JSON is UTF-8 (RFC 8259): bytes are not left to json's guess, which would read \xff\xfe as UTF-16.
        value = json.loads(text.decode("utf-8-sig") if isinstance(text, bytes) else text)
    except UnicodeDecodeError as err:
        raise error(f"{where}: not UTF-8 text (byte {err.start}); expected a JSON file") from None
    except json.JSONDecodeError as err:
        raise error(f"{where}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply to read") from None
    except ValueError as err:  # e.g. an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise error(f"{where}: not readable JSON ({str(err).split(';')[0]})") from None
    return check_kind(value, kind=kind, where=where, error=error)


def check_kind(value: Any, *, kind: type | tuple[type, ...], where: str, error: type[LLPFError]) -> Any:
    """``value`` when it is a ``kind`` (a bool is never taken for a number), else an ``error`` naming ``where``."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise error(f"{where}: expected {type_names(kinds)}, got {json_type(value)}")
    return value


def type_names(kinds: tuple[type, ...]) -> str:
    """How a message names JSON types: ``a JSON object``, ``a number or null``."""
    names = {dict: "object", list: "list", str: "string", int: "integer", float: "number", bool: "boolean"}
    words = [names.get(k, k.__name__) if k is not type(None) else "null" for k in kinds]
    if "integer" in words and "number" in words:
        words.remove("integer")
    return "a JSON " + " or ".join(dict.fromkeys(words))


def json_type(value: Any) -> str:
    """The JSON type of ``value`` as a message names it, with a short sample (``string 'yes'``, ``integer 7``)."""
    if value is None:
        return "null"
    name = {dict: "an object", list: "a list"}.get(type(value))
    if name:
        return name
    kind = {bool: "boolean", str: "string", int: "integer", float: "number"}.get(type(value), type(value).__name__)
    sample = repr(value)
    return f"{kind} {sample[:40]}{'…' if len(sample) > 40 else ''}"


def read_json(
    path: str | os.PathLike, *, kind: type | tuple[type, ...] = dict, error: type[LLPFError] = RunDirectoryError
) -> Any:
    """Read a JSON file with :func:`parse_json` (an unreadable file is an ``error`` naming it, too)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror or err})") from None
    return parse_json(raw, where=str(path), kind=kind, error=error)


def read_text(path: str | os.PathLike, *, error: type[LLPFError] = RunDirectoryError) -> str:
    """A text file (a README, a CSV) as UTF-8; an unreadable or non-UTF-8 file is an ``error`` naming it."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror or err})") from None


def read_yaml(path: str | os.PathLike, *, error: type[LLPFError] = RunDirectoryError) -> dict:
    """Read a YAML mapping (``llpf_config.yaml``) strictly: safe loader, no aliases, no duplicate keys.

    Raises:
        LLPFError: an ``error`` naming the file: unreadable, not UTF-8, not valid YAML, aliases, not a mapping.
    """
    from hf_llpf.recipes import parse_yaml

    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text (byte {err.start}); expected a YAML file") from None
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror or err})") from None
    value = parse_yaml(text, where=str(path), error=error)
    return check_kind({} if value is None else value, kind=dict, where=str(path), error=error)


__all__ = ["check_kind", "json_type", "parse_json", "read_json", "read_text", "read_yaml", "type_names"]
