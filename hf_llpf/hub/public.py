"""What a published path may say about the machine it was made on: nothing.

A run directory records where its endpoints and data were read from (``endpoints.json``, the command in
``llpf_config.yaml``), often as paths of the machine. Before anything is published:

- a local endpoint is named by its folder name and content hash (``endpoint_seed0``, ``local:70aebf…``,
  the ``sha256`` of its weights), never by its path (:func:`public_endpoints`);
- every published text file (JSON, YAML, Markdown, CSV, text, up to 4 MB) has the endpoints' recorded paths
  replaced by those names and any other absolute path by its last component (:func:`scrub_text`);
- :func:`check_no_machine_paths` then refuses, by name, a file that still holds a path of this machine
  (the working directory, the home directory, the temporary directory, the run directory), so a path
  that slipped through is never uploaded.

The license of the published models is decided here too (:func:`resolve_license`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path as FsPath
from typing import Any

from hf_llpf.errors import ConfigError, RunDirectoryError

TEXT_SUFFIXES = (".json", ".yaml", ".yml", ".md", ".csv", ".txt", ".toml", ".cfg", ".jinja")
_MAX_TEXT = 4 << 20  # larger files are weights or data, not settings
# An absolute POSIX path: a "/" that starts a token (at the start, or after a space, a quote, a backtick, "(", "[",
# "=" or ","), then at least one "name/" component. Relative names ("plots/loss.png"), URLs ("https://x/y") and
# code such as f"{folder}/points/t_1" do not match.
_ABS_PATH = re.compile(r"(?<![^\s\"'`(\[=,])/(?:[\w.@+-]+/)+[\w.@+-]*")
_WINDOWS_PATH = re.compile(r"\b[A-Za-z]:\\(?:[^\\\s\"'<>|]+\\)*[^\\\s\"'<>|]*")
_LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+-]*")
UNKNOWN_LICENSE = "unknown"  # the Hub's own value for "not known"
logger = logging.getLogger(__name__)


def is_local(entry: dict) -> bool:
    """Whether an ``endpoints.json`` entry is a local endpoint (a Hub one was resolved to a 40-hex commit)."""
    return not re.fullmatch(r"[0-9a-f]{40}", str(entry.get("revision") or ""))


def public_name(entry: dict) -> str:
    """The published name of an endpoint: its repo id, or a local endpoint's folder (or file) name."""
    source = str(entry.get("id") or "")
    if not is_local(entry):
        return source
    name = re.split(r"[\\/]", source.rstrip("/\\"))[-1]
    return name or "local-endpoint"


def local_names(endpoints: dict) -> dict[str, str]:
    """Recorded local endpoint paths (as written and made absolute) -> their public names, longest first."""
    names: dict[str, str] = {}
    for key in ("A", "B"):
        entry = endpoints.get(key)
        if not isinstance(entry, dict) or not is_local(entry) or not entry.get("id"):
            continue
        source = str(entry["id"])
        for form in (source, os.path.abspath(source), os.path.realpath(source)):
            names[form] = public_name(entry)
    return dict(sorted(names.items(), key=lambda kv: -len(kv[0])))


def public_endpoints(endpoints: dict) -> dict:
    """``endpoints.json`` as published: local endpoints named by folder name (their hash and sha256 kept)."""
    out = json.loads(json.dumps(endpoints))  # a deep copy of plain JSON
    for key in ("A", "B"):
        entry = out.get(key)
        if isinstance(entry, dict) and is_local(entry):
            entry["id"] = public_name(entry)
            entry["source"] = "local"
    return out


def scrub_text(text: str, names: dict[str, str]) -> str:
    """``text`` with the recorded local paths replaced by their public names, any other absolute path by its
    last component."""
    for local, public in names.items():
        if local and local not in (".", "/"):
            text = text.replace(local, public)
    text = _ABS_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1] or "local", text)
    return _WINDOWS_PATH.sub(lambda m: m.group(0).rstrip("\\").rsplit("\\", 1)[-1] or "local", text)


def _is_text(rel: str) -> bool:
    return rel.lower().endswith(TEXT_SUFFIXES)


def public_files(files: dict[str, bytes | FsPath], names: dict[str, str]) -> dict[str, bytes | FsPath]:
    """``files`` with every text file scrubbed (:func:`scrub_text`); a file left unchanged is kept as a path."""
    out: dict[str, bytes | FsPath] = {}
    for rel, value in files.items():
        if not _is_text(rel) or (not isinstance(value, bytes) and FsPath(value).stat().st_size > _MAX_TEXT):
            out[rel] = value
            continue
        raw = value if isinstance(value, bytes) else FsPath(value).read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            out[rel] = value
            continue
        clean = scrub_text(text, names)
        out[rel] = value if clean == text else clean.encode()
    return out


def machine_paths(*roots: str | os.PathLike) -> list[str]:
    """Absolute paths of this machine that must not be published (each with a trailing separator)."""
    found = {os.getcwd(), str(FsPath.home()), tempfile.gettempdir()}
    for r in roots:
        found |= {os.path.abspath(r), os.path.realpath(r)}
        found |= {os.path.dirname(os.path.abspath(r)), os.path.dirname(os.path.realpath(r))}
    return sorted({p.rstrip(os.sep) + os.sep for p in found if p and len(FsPath(p).parts) > 1})


def check_no_machine_paths(files: dict[str, bytes | FsPath], forbidden: list[str]) -> None:
    """Refuse, by file name, a published text file that holds one of the ``forbidden`` paths.

    Raises:
        RunDirectoryError: the first file found, with the path it holds.
    """
    needles = [p.encode() for p in forbidden] + [p.rstrip(os.sep).encode() + b'"' for p in forbidden]
    for rel, value in sorted(files.items()):
        if not _is_text(rel):
            continue
        raw = value if isinstance(value, bytes) else FsPath(value).read_bytes()[:_MAX_TEXT]
        for needle in needles:
            if needle in raw:
                raise RunDirectoryError(
                    f"published file {rel!r} holds a path of this machine ({needle.decode().rstrip(chr(34))!r}); "
                    "nothing was uploaded: remove the path from the file (or report the file as a bug)"
                )


# ---- license ----------------------------------------------------------------------------------------------------


def _card_license(text: str) -> str | None:
    """The ``license`` of a model card's YAML header, or None."""
    m = re.match(r"---\s*\n(.*?)\n---", text, re.S)
    if not m:
        return None
    from hf_llpf.recipes import parse_yaml  # strict: aliases refused (a license of nested aliases would explode)

    try:
        meta = parse_yaml(m.group(1), where="model card")
    except ConfigError:
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return str(value) if value else None


def endpoint_license(entry: dict, *, api: Any = None) -> str | None:
    """The license of one endpoint: recorded in ``endpoints.json``, else its card (the folder's ``README.md``
    for a local endpoint, the Hub card at the recorded commit when ``api`` is given), else None."""
    if entry.get("license"):
        return str(entry["license"])
    source = str(entry.get("id") or "")
    if is_local(entry):
        readme = FsPath(source) / "README.md"
        return _card_license(readme.read_text(errors="replace")) if readme.is_file() else None
    if api is None:
        return None
    try:
        file = api.hf_hub_download(source, "README.md", revision=entry.get("revision"))
    except Exception as err:  # no card, a refusal, a network error: the push goes on, the license unknown
        logger.warning("license of endpoint %s: its card could not be read (%s)", source, type(err).__name__)
        return None
    return _card_license(FsPath(file).read_text(errors="replace"))


def resolve_license(endpoints: dict, *, license: str | None = None, api: Any = None) -> tuple[str, str]:
    """The ``license`` of the published models and where it came from (one phrase, for the card).

    Args:
        endpoints: the run's ``endpoints.json``.
        license: given by the user (``--license``); wins over the endpoints' licenses.
        api: an ``HfApi`` to read Hub endpoints' cards with (None: offline, only what is recorded or local).

    Returns:
        tuple: ``(license id, source)``; ``"unknown"`` when neither the user nor the endpoints say.

    Raises:
        ConfigError: ``license`` is not a license id, or the endpoints' licenses differ and none was given.
    """
    if license is not None:
        if not isinstance(license, str) or not _LICENSE_ID.fullmatch(license):
            raise ConfigError(
                f"license={license!r}: not a license id (allowed: a Hub license id in lower case, e.g. "
                "'apache-2.0', 'mit', 'cc-by-4.0', 'other')"
            )
        return license, "given with --license"
    found = {
        key: endpoint_license(endpoints[key], api=api) for key in ("A", "B") if isinstance(endpoints.get(key), dict)
    }
    values = {v for v in found.values() if v}
    if len(values) > 1:
        listed = ", ".join(f"{k}: {v!r}" for k, v in found.items())
        raise ConfigError(
            f"license: the endpoints' licenses differ ({listed}); give the license of the path with --license "
            "(python: license=...) after checking both allow it"
        )
    if len(values) == 1 and all(found.values()):
        return values.pop(), "the license of both endpoints"
    if values:
        known = next(k for k, v in found.items() if v)
        return UNKNOWN_LICENSE, f"endpoint {known}'s license is {found[known]!r}, the other's is not recorded"
    return UNKNOWN_LICENSE, "neither endpoint records a license; give one with --license"


__all__ = [
    "UNKNOWN_LICENSE",
    "check_no_machine_paths",
    "endpoint_license",
    "is_local",
    "local_names",
    "machine_paths",
    "public_endpoints",
    "public_files",
    "public_name",
    "resolve_license",
    "scrub_text",
]
