"""Names read from a run directory or a Hub repo, resolved strictly inside it.

A run directory and a published path are untrusted input: ``path_metrics.json`` names each point's
folder, a repo lists its files, and a folder may hold symbolic links. Every such name goes through
:func:`resolve_inside` before anything is read, copied or uploaded, so no name (``"../../.."``, an
absolute path, a link to ``~/.ssh``) can make the tool touch a file outside the directory it was given.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from hf_llpf.errors import RunDirectoryError


def check_relative_name(name: object, *, field: str) -> str:
    """Return ``name`` if it is a plain relative POSIX path (no ``..``, no absolute path, no drive).

    Raises:
        RunDirectoryError: naming ``field`` and the value, when the name could leave its directory.
    """
    allowed = "a relative path inside the run directory (no '..', no leading '/', no '\\\\', no drive letter)"
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        raise RunDirectoryError(f"{field}={name!r} is refused: expected {allowed}")
    pure = PurePosixPath(name)
    if pure.is_absolute() or ":" in pure.parts[0] or any(p in ("..", ".", "") for p in name.split("/")):
        raise RunDirectoryError(f"{field}={name!r} is refused: expected {allowed}")
    return name


def is_inside(path: Path, root: Path) -> bool:
    """Whether ``path``, with every symbolic link followed, lies in ``root`` (also resolved)."""
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
    except ValueError:
        return False
    return True


def resolve_inside(root: str | os.PathLike, name: object, *, field: str, allowed_root: Path | None = None) -> Path:
    """``root / name`` after checking that ``name`` cannot leave ``root``.

    Args:
        root: the run directory (or the snapshot folder of a Hub repo).
        name: the relative name read from that directory (a point folder, a plot, a listed file).
        field: how to name the value in the error, e.g. ``"points[3].point"``.
        allowed_root: where links may point (default ``root``); a Hub snapshot's files are links into the
            repo's blob store beside it, so its allowed root is the repo's cache folder.

    Raises:
        RunDirectoryError: the name is absolute, climbs with ``..``, or resolves (through links) outside.
    """
    root = Path(root)
    target = root / check_relative_name(name, field=field)
    if os.path.lexists(target) and not is_inside(target, allowed_root or root):
        raise RunDirectoryError(
            f"{field}={name!r} is refused: it resolves to {os.path.realpath(target)!r}, outside {str(root)!r}"
        )
    return target


def walk_files(root: str | os.PathLike, *, allowed_root: Path | None = None) -> Iterator[Path]:
    """Every regular file under ``root`` without following directory links, sorted by relative path.

    Raises:
        RunDirectoryError: a file or directory link resolves outside ``allowed_root`` (default ``root``);
            its name is given. Links that stay inside are listed as the files they name.
    """
    root = Path(root)
    fence = allowed_root or root
    found: list[Path] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in [*dirs, *files]:
            p = Path(folder) / name
            if p.is_symlink() and not is_inside(p, fence):
                rel = p.relative_to(root).as_posix()
                raise RunDirectoryError(
                    f"file {rel!r} in {str(root)!r} is refused: it is a link to {os.path.realpath(p)!r}, "
                    "outside the directory"
                )
        found += [Path(folder) / f for f in files if (Path(folder) / f).is_file()]
    return iter(sorted(found, key=lambda p: p.relative_to(root).as_posix()))
