"""Which files of a run directory are published, and their content hash.

A run directory holds more than a path: the resume checkpoint (pickled, large, machine-specific), the
run's marker and lock files, and the leftovers of writes killed half-way. :data:`IGNORE_PATTERNS` names
them in huggingface_hub's pattern language (``fnmatch``, where ``*`` also matches ``/``), and the same
patterns are applied by :func:`publishable_files` here. The run directory
is walked with :func:`hf_llpf.files.safe_paths.walk_files`, so a link that leaves it is refused by name.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path as FsPath

from hf_llpf.errors import RunDirectoryError
from hf_llpf.files.hashing import file_sha256
from hf_llpf.files.safe_paths import walk_files
from hf_llpf.run import CHECKPOINT_DIR, METRICS_JSON
from hf_llpf.run.layout import LOG_FILE
from hf_llpf.run.lock import LOCK, MARKER

# Never published. The run's log names the machine's folders; temporary names are those hf_llpf.run writes:
# ``.NAME.<random>.tmp`` files and ``points/.tmp_t_<tick>`` folders; each is listed at the top level and below it,
# as a file and as a folder.
IGNORE_PATTERNS = (
    MARKER,
    LOCK,
    LOG_FILE,
    CHECKPOINT_DIR,
    f"{CHECKPOINT_DIR}/*",
    ".tmp_*",
    "*/.tmp_*",
    ".*.tmp",
    "*/.*.tmp",
    ".*.tmp/*",
    "*/.*.tmp/*",
    "__pycache__",
    "__pycache__/*",
    "*/__pycache__",
    "*/__pycache__/*",
)


def check_run_dir(run_dir: str | os.PathLike) -> FsPath:
    """``run_dir`` as a path, after checking that it is a run directory (it has ``path_metrics.json``).

    Raises:
        RunDirectoryError: not a directory, or no ``path_metrics.json`` in it.
    """
    root = FsPath(run_dir)
    if not root.is_dir():
        raise RunDirectoryError(f"run_dir={str(root)!r}: not a directory")
    if not (root / METRICS_JSON).is_file():
        raise RunDirectoryError(f"run_dir={str(root)!r} is not a run directory: {METRICS_JSON} is missing")
    return root


def publishable_files(run_dir: str | os.PathLike) -> list[str]:
    """The files of a run directory that are published, as sorted POSIX paths relative to it.

    Left out: everything :data:`IGNORE_PATTERNS` matches (``checkpoint/``, the run's marker and lock files,
    temporary files of interrupted writes, ``__pycache__``).

    Raises:
        RunDirectoryError: a file or folder of the run directory is a link that resolves outside it.
    """
    from huggingface_hub.utils import filter_repo_objects

    root = FsPath(run_dir)
    files = [p.relative_to(root).as_posix() for p in walk_files(root)]
    return sorted(filter_repo_objects(files, ignore_patterns=list(IGNORE_PATTERNS)))


def content_hash(files: dict[str, bytes | FsPath]) -> str:
    """A sha256 over the (path, content) pairs of a set of files; the same content gives the same hash.

    Args:
        files: relative path -> the content (bytes) or the file holding it.
    """
    digest = hashlib.sha256()
    for rel in sorted(files):
        value = files[rel]
        blob = hashlib.sha256(value).hexdigest() if isinstance(value, bytes) else file_sha256(value)
        digest.update(f"{rel}\0{blob}\n".encode())
    return digest.hexdigest()
