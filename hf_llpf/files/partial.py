"""Nothing half-written: what a failed write (a full disk, a read-only folder) leaves behind is removed again.

Files and folders are written under a temporary name and renamed into place (:func:`hf_llpf.run.atomic_write_bytes`
for files, :func:`hf_llpf.reporting.layer_plots.save_figure` for plots). :func:`cleaned_on_failure` removes the
temporary file or folder when the writing fails, and names it in the ``OSError`` (a failed ``write`` says neither
which file nor where), so the command's one-line error can say which file could not be written.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def cleaned_on_failure(path: str | os.PathLike) -> Iterator[Path]:
    """Yield ``path`` (a temporary file or folder being written); remove it when the block raises.

    An ``OSError`` without a file name gets ``path`` as its ``filename``.
    """
    path = Path(path)
    try:
        yield path
    except BaseException as err:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)
        os_error = as_os_error(err, path)
        if os_error is None or os_error is err:
            raise
        raise os_error from err


def as_os_error(err: BaseException, path: str | os.PathLike) -> OSError | None:
    """``err`` as an ``OSError`` naming ``path`` when it is one (or wraps one, as safetensors' writer does: "I/O
    error: No space left on device (os error 28)"), else None."""
    if isinstance(err, OSError):
        if err.filename is None:
            err.filename = os.fspath(path)
        return err
    found = re.search(r"\(os error (\d+)\)", str(err))
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code), os.fspath(path))


__all__ = ["as_os_error", "cleaned_on_failure"]
