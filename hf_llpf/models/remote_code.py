"""Pointers to code in other repos (``auto_map``, ``custom_pipelines``), removed from every file hf_llpf writes.

A transformers ``config.json``, ``tokenizer_config.json`` or processor config may carry ``auto_map``
(``{"AutoModel": "org/repo--modeling_x.MyModel"}``): with ``trust_remote_code=True``, transformers then downloads
and runs that repo's Python code. An endpoint's pointer would be copied into every point, the run's ``assets/``,
the repo root and exports, and so republished under the path's name, pointing its users at code nobody reviewed
for the path. hf_llpf never runs remote code (points are built from safetensors and transformers' own classes),
so what it writes drops these keys, and one log line says so; ``keep_auto_map`` (a run setting, and
``--keep-auto-map`` for ``push`` and ``export``) keeps them, for a model whose class exists only as remote code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# The keys that name code in another repo (transformers reads both when trust_remote_code=True).
REMOTE_CODE_KEYS = ("auto_map", "custom_pipelines")
# The JSON files of a model folder that may carry them.
CONFIG_FILES = (
    "config.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
)
KEEP_HINT = "keep_auto_map=true (push/export: --keep-auto-map) keeps them"


def strip_remote_code(value: object, *, at: str = "") -> list[str]:
    """Remove :data:`REMOTE_CODE_KEYS` from a parsed JSON value in place, at any depth (composite configs nest a
    sub-config per part); returns the dotted names removed."""
    removed: list[str] = []
    if isinstance(value, dict):
        for key in list(value):
            name = f"{at}.{key}" if at else str(key)
            if key in REMOTE_CODE_KEYS:
                del value[key]
                removed.append(name)
            else:
                removed += strip_remote_code(value[key], at=name)
    elif isinstance(value, list):
        for j, item in enumerate(value):
            removed += strip_remote_code(item, at=f"{at}[{j}]")
    return removed


def stripped_json(data: bytes) -> tuple[bytes, list[str]]:
    """The content of a JSON config without the remote-code keys, and the names removed.

    Content that does not parse as a JSON object is returned as it is (its reader reports it).
    """
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return data, []
    removed = strip_remote_code(value)
    if not removed:
        return data, []
    return (json.dumps(value, indent=2) + "\n").encode(), removed


def strip_file(path: str | os.PathLike) -> list[str]:
    """Rewrite the JSON config ``path`` without the remote-code keys (unchanged when it has none)."""
    path = Path(path)
    if not path.is_file():
        return []
    data, removed = stripped_json(path.read_bytes())
    if removed:
        path.write_bytes(data)
    return removed


def strip_files(files: dict[str, bytes | Path]) -> tuple[dict[str, bytes | Path], dict[str, list[str]]]:
    """A set of files to publish (name -> content or file) with the remote-code keys removed from its configs.

    Returns:
        tuple: the files (a changed config as bytes, the others as they were) and name -> the keys removed.
    """
    out, found = dict(files), {}
    for rel, value in files.items():
        if rel.rsplit("/", 1)[-1] not in CONFIG_FILES:
            continue
        data = value if isinstance(value, bytes) else Path(value).read_bytes()
        cleaned, removed = stripped_json(data)
        if removed:
            out[rel], found[rel] = cleaned, removed
    return out, found


def carried(config: object) -> list[str]:
    """The remote-code keys a parsed config (an endpoint's ``config.json`` as a dict) carries, as dotted names."""
    import copy

    return strip_remote_code(copy.deepcopy(config))


def removed_note(found: dict[str, list[str]], *, what: str) -> str:
    """The one log line saying which remote-code keys were removed from which files."""
    keys = sorted({k.rsplit(".", 1)[-1].split("[")[0] for names in found.values() for k in names})
    names = sorted(found)
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return (
        f"{' and '.join(keys)} (pointers to code in other repos) removed from {what}: {shown}; hf_llpf never runs "
        f"remote code and does not republish pointers to it; {KEEP_HINT}"
    )


__all__ = [
    "CONFIG_FILES",
    "REMOTE_CODE_KEYS",
    "carried",
    "removed_note",
    "strip_file",
    "strip_files",
    "strip_remote_code",
    "stripped_json",
]
