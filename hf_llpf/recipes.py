"""Settings as text: YAML recipes read strictly, ``key=value`` overrides, resolved settings written back.

YAML is read with the safe loader only (no Python tags) and refuses duplicate keys and aliases (``*name``: an
alias bomb expands a few lines into billions of entries); every problem is a
:class:`~hf_llpf.errors.ConfigError` naming the file or the override. Validation is :func:`hf_llpf.config.build`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from hf_llpf.errors import ConfigError, LLPFError


def load_recipe(path: str | Path | None) -> dict[str, Any]:
    """Read a YAML recipe into a plain dict (empty when ``path`` is None)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe={str(path)!r}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"recipe={str(path)!r}: not UTF-8 text (byte {err.start}); a recipe is a YAML file"
        ) from None
    loaded = parse_yaml(text, where=f"recipe={str(path)!r}") or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"recipe={str(path)!r}: must be a YAML mapping, got {type(loaded).__name__}")
    return loaded


def apply_overrides(
    values: dict[str, Any], overrides: list[str], *, where: Callable[[str], str] | None = None
) -> dict[str, Any]:
    """Apply ``key=value`` overrides (dotted keys for nested settings, values parsed as YAML).

    ``where`` maps a key to the dotted place it sets (a connect run's bare ``lr`` sets ``repair.lr``); problems
    name the override as it was typed.
    """
    merged = _deep_copy(values)
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            problems.append(f"override {item!r}: expected key=value")
            continue
        target = merged
        parts = (where(key) if where is not None else key).split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                problems.append(f"override {item!r}: {part!r} is not a group of settings")
                break
        else:
            try:
                target[parts[-1]] = parse_yaml(raw, where=f"override {item!r}") if raw != "" else None
            except ConfigError as err:
                problems.extend(err.problems)
    if problems:
        raise ConfigError(problems)
    return merged


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing duplicate keys (YAML keeps the last one, hiding a typo) and aliases."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        # Refused before anything is built: nested aliases ("billion laughs") expand exponentially once walked.
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are refused; write each value out", mark)
        return super().compose_node(parent, index)


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (YAML would keep only the last)", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def parse_yaml(text: str, *, where: str, error: type[LLPFError] = ConfigError) -> Any:
    """Parse YAML with the safe loader (no Python tags), duplicate keys and aliases refused.

    Raises:
        ConfigError: (or ``error``) naming ``where`` and the line/column of the problem.
    """
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise error(f"{where}: YAML nested too deeply to read") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        hint = "; only plain YAML values are read, Python tags are refused" if "constructor" in problem else ""
        raise error(f"{where}: not valid YAML{at}: {problem}{hint}") from None


def _deep_copy(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}


def to_yaml(settings: BaseModel) -> str:
    """The fully resolved settings as YAML (what ``llpf_config.yaml`` holds): as the settings write themselves
    (``as_written``: a connect run's in blocks), else every field."""
    written = getattr(settings, "as_written", None)
    values = written() if callable(written) else settings.model_dump(mode="json")
    return yaml.dump(values, Dumper=_PlainDumper, sort_keys=False)


class _PlainDumper(yaml.SafeDumper):
    """The safe dumper, writing a value seen twice out again (the readers refuse aliases)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True
