"""What in a folder this tool wrote: the layouts it may write, delete and continue (docs/run-directory.md).

A folder handed to ``--out`` may be anything (a git repository, a home folder, a run directory crafted by someone
else), so the exist policy never trusts a name alone:

- Nothing is written or deleted through a symbolic link: a link anywhere in a folder the tool writes or
  empties is refused (:func:`refuse_link` for one path, :func:`survey` for a whole tree).
- A folder belongs to this tool only by its marker (``.hf_llpf-run``, a plain file whose JSON names the kind of
  folder) or, for run directories of older versions, by their exact layout with nothing else in it.
- Even then only the entries of the layout are deleted (:data:`~hf_llpf.run.layout.RUN_FILES`, the point
  folders ``points/t_NNNNNN``, the checkpoint's files, the plots it draws, ...): anything else makes
  ``--overwrite`` refuse, naming what is foreign and what would have been deleted.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hf_llpf.errors import RunDirectoryError
from hf_llpf.run.layout import (
    ASIDE,
    ASSETS_DIR,
    BASELINES_DIR,
    CHECKPOINT_DIR,
    COMPARISON_FILES,
    CONFIG_YAML,
    LOCK,
    MARKER,
    PLOT_FILES,
    PLOTS_DIR,
    POINTS_DIR,
    REPEATS_FILES,
    RUN_FILES,
    TRACKER_DIR,
)

KINDS = ("run", "comparison", "repeats")
_POINT = re.compile(r"t_\d{6,}")
_REPEAT = re.compile(r"repeat_\d{2,}")
_TENSORS = re.compile(r"tensors-\d+(-rank-\d+-of-\d+)?\.safetensors")  # (a sharded run: each process's own)
_TMP_POINT = re.compile(r"\.tmp_t_\d{6,}")  # hf_llpf.run.layout.temporary_point_name
TMP_ASSETS = f".tmp_{ASSETS_DIR}"  # hf_llpf.run.assets.write_assets writes the folder here, then renames it


def is_leftover(name: str, is_dir: bool, folder: str = "") -> bool:
    """A leftover of a write killed half-way, by the names the tool gives them in ``folder`` (relative to the run
    directory): atomic writes' ``.NAME.*.tmp`` files anywhere, ``.tmp_assets/`` at the top, ``points/.tmp_t_*/``."""
    if not is_dir:
        return name.startswith(".") and name.endswith(".tmp")
    return (folder == "" and name == TMP_ASSETS) or (folder == POINTS_DIR and bool(_TMP_POINT.fullmatch(name)))


# A rule says, for one entry of a folder (its name, whether it is a folder), whether the tool writes it there:
# None (foreign), FILE (a file of the layout), ANY (a folder the tool writes whole) or the rule of its entries.
Rule = Callable[[str, bool], object]
FILE, ANY = "file", "any"


def _point_entry(name: str, is_dir: bool) -> object:
    # A point folder holds what save_model writes: weights (possibly sharded, with their index) and config JSON.
    return FILE if not is_dir and name.endswith((".json", ".safetensors")) else None


def _points_entry(name: str, is_dir: bool) -> object:
    if is_leftover(name, is_dir, POINTS_DIR):
        return ANY if is_dir else FILE
    return _point_entry if is_dir and _POINT.fullmatch(name) else None


def _checkpoint_entry(name: str, is_dir: bool) -> object:
    known = name in ("state.json", "state.pt") or _TENSORS.fullmatch(name) or is_leftover(name, is_dir)
    return FILE if not is_dir and known else None


def _plots_entry(name: str, is_dir: bool) -> object:
    return FILE if not is_dir and (name in PLOT_FILES or is_leftover(name, is_dir)) else None


def _files_entry(name: str, is_dir: bool) -> object:
    return None if is_dir else FILE


# A path method's name (the registry's names, and a method a user registers): a comparison writes one run directory
# of that name per method. The run layer does not import the registry (it sits below the methods); the folders'
# content is what run_entry checks.
_METHOD_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
# The methods of comparisons written before the marker: the only folder names such a comparison can hold.
LEGACY_COMPARISON_METHODS = ("llpf", "linear", "slerp", "bezier", "autoneb", "weight-matching")


def _is_method_name(name: str) -> bool:
    return bool(_METHOD_NAME.fullmatch(name))


def _baselines_entry(name: str, is_dir: bool) -> object:
    if is_dir:
        return run_entry if _is_method_name(name) else None
    return FILE if name in COMPARISON_FILES or is_leftover(name, is_dir) else None


_RUN_FOLDERS: dict[str, Rule | str] = {
    POINTS_DIR: _points_entry,
    CHECKPOINT_DIR: _checkpoint_entry,
    PLOTS_DIR: _plots_entry,
    ASSETS_DIR: _files_entry,
    TRACKER_DIR: ANY,  # TensorBoard's event files (report_to: [tensorboard])
    BASELINES_DIR: _baselines_entry,
}


def run_entry(name: str, is_dir: bool) -> object:
    """The rule of a run directory's own entries."""
    if is_leftover(name, is_dir):
        return ANY if is_dir else FILE
    if is_dir:
        if name == ASIDE:
            return run_entry
        return _RUN_FOLDERS.get(name)
    return FILE if name in RUN_FILES and name not in _RUN_FOLDERS else None


def comparison_entry(name: str, is_dir: bool) -> object:
    """The rule of a ``compare --out`` folder: one run directory per method, the table and the plot."""
    if is_dir:
        return run_entry if _is_method_name(name) else None
    return FILE if name in (*COMPARISON_FILES, MARKER, LOCK) or is_leftover(name, is_dir) else None


def repeats_entry(name: str, is_dir: bool) -> object:
    """The rule of a ``connect --repeats`` folder: the repeats' run directories, the summary and its report."""
    if is_dir:
        return run_entry if _REPEAT.fullmatch(name) else _plots_entry if name == PLOTS_DIR else None
    return FILE if name in (*REPEATS_FILES, MARKER, LOCK) or is_leftover(name, is_dir) else None


RULES: dict[str, Rule] = {"run": run_entry, "comparison": comparison_entry, "repeats": repeats_entry}


@dataclass
class Survey:
    """What a folder holds, against the layout of its kind (relative names, folders ending in ``/``).

    Attributes:
        links: symbolic links anywhere in it (``name -> target``).
        foreign: entries this tool does not write there (the first of each foreign folder, not its content).
        owned: its top-level entries of the layout (what ``--overwrite`` deletes), the lock excluded.
    """

    links: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    owned: list[str] = field(default_factory=list)


def survey(root: Path, kind: str = "run") -> Survey:
    """Walk ``root`` without following links and sort its entries into links, foreign entries and owned ones."""
    found = Survey()
    _walk(Path(root), "", RULES[kind], found)
    found.owned = [n for n in found.owned if n != LOCK]
    return found


def _walk(folder: Path, prefix: str, rule: Rule | str, found: Survey) -> None:
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        rel = f"{prefix}{entry.name}"
        if entry.is_symlink():
            found.links.append(f"{rel} -> {os.readlink(entry.path)}")
            continue
        is_dir = entry.is_dir(follow_symlinks=False)
        sub = ANY if rule == ANY else rule(entry.name, is_dir)
        shown = rel + "/" if is_dir else rel
        if sub is None:
            found.foreign.append(shown)
            continue
        if not prefix:
            found.owned.append(shown)
        if is_dir:
            _walk(Path(entry.path), rel + "/", sub, found)


def marker_kind(root: Path) -> str | None:
    """The kind of folder the marker of ``root`` names (``run`` for markers of older versions), or None when
    there is no marker: a link or a folder in its place is no marker."""
    try:
        info = os.lstat(root / MARKER)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    try:
        recorded = json.loads((root / MARKER).read_text())
    except (OSError, ValueError, RecursionError):
        return "run"  # written by hand or damaged: still our marker, for a run directory
    kind = recorded.get("kind", "run") if isinstance(recorded, dict) else "run"
    return kind if kind in KINDS else "run"


def is_ours(root: Path, kind: str = "run") -> bool:
    """Whether ``root`` is a folder of this tool of ``kind``: its marker names that kind, or it has the exact
    layout older versions wrote without a marker: a run's ``llpf_config.yaml`` and nothing outside
    :data:`RUN_FILES`; a comparison's method folders and table; a repeats folder's ``repeat_NN`` folders and
    summary (their content is checked by :func:`survey`)."""
    recorded = marker_kind(root)
    if recorded is not None:
        return recorded == kind
    entries = [(p.name, p.is_dir() and not p.is_symlink()) for p in root.iterdir()]
    names = {n for n, _ in entries}
    if kind == "run":
        return CONFIG_YAML in names and all(n in RUN_FILES or is_leftover(n, d) for n, d in entries)
    signature = (lambda n: n in LEGACY_COMPARISON_METHODS) if kind == "comparison" else _REPEAT.fullmatch
    return any(d and signature(n) for n, d in entries) and all(RULES[kind](n, d) is not None for n, d in entries)


def refuse_link(path: Path, *, inside: Path | None = None, field: str = "--out") -> None:
    """Refuse ``path`` when it is a symbolic link, or when a folder between ``inside`` and it is one.

    Raises:
        RunDirectoryError: naming the link and where it points.
    """
    path = Path(path)
    chain = [path]
    if inside is not None:
        rel = os.path.relpath(path, inside)
        parts = Path(rel).parts
        chain = [Path(inside).joinpath(*parts[: i + 1]) for i in range(len(parts))]
    for p in chain:
        if p.is_symlink():
            where = f"{field} {str(p)!r} is" if p == path else f"{field} {str(path)!r}: the folder {str(p)!r} is"
            raise RunDirectoryError(
                f"{where} a symbolic link (to {os.readlink(p)!r}); hf_llpf never writes or deletes through a link. "
                "Nothing was changed: remove the link (for --out: or pass the folder it points to)"
            )


def refuse_links_under(root: Path, names: Sequence[str], *, field: str = "in the run directory,") -> None:
    """Refuse to write ``names`` of ``root`` (files or folders the tool writes there) when one of them, a folder on
    the way to it, or anything inside it is a symbolic link.

    Raises:
        RunDirectoryError: naming the first link found.
    """
    root = Path(root)
    for name in names:
        target = root / name
        refuse_link(target, inside=root, field=field)
        if target.is_dir():
            for folder, dirs, files in os.walk(target):
                for entry in sorted(dirs + files):
                    refuse_link(Path(folder) / entry, field=field)


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def read_by_this_run(root: Path, protected: Sequence[os.PathLike]) -> list[str]:
    """The paths of ``protected`` (what the command reads) that ``root`` is, holds, or lies inside."""
    here = Path(os.path.realpath(root))
    hits = []
    for p in protected:
        other = Path(os.path.realpath(p))
        if other == here or here in other.parents or (other.is_dir() and other in here.parents):
            hits.append(str(p))
    return list(dict.fromkeys(hits))


def check_owned(
    root: Path, *, kind: str, action: str, field: str = "--out", protected: Sequence[os.PathLike] = ()
) -> Survey:
    """Refuse ``action`` (``overwrite``, ``resume``, ...) on ``root`` unless it is a folder of this tool of ``kind``
    holding no link, nothing foreign and nothing the command reads; returns the survey (``owned``: what an
    overwrite deletes).

    Raises:
        RunDirectoryError: naming the links, the foreign entries, the paths read and what would have been deleted.
    """
    found = survey(root, kind)
    what = {"run": "a run directory", "comparison": "a comparison folder", "repeats": "a repeats folder"}[kind]
    problems = []
    read = read_by_this_run(root, protected)
    if read:
        problems.append(f"it holds {_listing(read)}, which this command reads (an endpoint, the data or the recipe)")
    if not is_ours(root, kind):
        problems.append(f"it is not {what} of hf_llpf (no {MARKER} marker of one, nor an older run's exact layout)")
    if found.links:
        problems.append(f"it holds symbolic links, never followed: {_listing(found.links)}")
    if found.foreign:
        problems.append(f"it holds files hf_llpf did not write there: {_listing(found.foreign)}")
    if problems:
        deleted = f"; it would delete: {_listing(found.owned)}" if action == "overwrite" and found.owned else ""
        raise RunDirectoryError(
            f"{field} {str(root)!r}: refusing to {action} it: {'; '.join(problems)}{deleted}. Nothing was changed: "
            f"move those entries out{' and remove the links' if found.links else ''}, or choose a new or empty {field}"
        )
    return found


__all__ = [
    "KINDS",
    "RULES",
    "Survey",
    "check_owned",
    "is_leftover",
    "is_ours",
    "marker_kind",
    "read_by_this_run",
    "refuse_link",
    "refuse_links_under",
    "survey",
]
