"""The C allocator's kept memory: on Linux with glibc, a connect can have freed large blocks returned at once.

glibc serves a large allocation from its own memory map, returned when freed, but raises that threshold to the
size of each such block that is freed (up to 32 MiB on 64-bit systems): after the first model-sized tensors are
freed, later ones come from the heap, and the heap keeps what is freed for reuse instead of returning it. A walk
allocates and frees whole-model tensors and activations all along (snapshots, gradients, point writes,
checkpoints), so the process grew far above what it held at any moment (docs/benchmarks.md, "A 124M model").
:func:`return_freed_memory` fixes the threshold at glibc's initial 128 KiB, which also stops it from rising.

Asked for with ``HF_LLPF_ALLOCATOR=return`` (off by default: every allocation above the threshold is then a memory
map of its own, whose cost per tick was not measured apart from the machine's noise); a threshold set by the user
(``MALLOC_MMAP_THRESHOLD_``, or ``glibc.malloc.mmap_threshold`` in ``GLIBC_TUNABLES``) is never overridden.
Elsewhere (macOS, Windows, another C library) nothing is done.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

MMAP_THRESHOLD = 128 * 1024  # bytes: glibc's own initial threshold, kept fixed
M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
ENV = "HF_LLPF_ALLOCATOR"  # "return": fix the threshold; unset or anything else: leave the allocator alone
_done = False


def _wanted() -> bool:
    """Whether to set it: ``HF_LLPF_ALLOCATOR=return``, and no threshold of the user's own."""
    if os.environ.get(ENV, "").strip().lower() != "return":
        return False
    return "MALLOC_MMAP_THRESHOLD_" not in os.environ and "mmap_threshold" not in os.environ.get("GLIBC_TUNABLES", "")


def return_freed_memory() -> bool:
    """Fix glibc's memory-map threshold at :data:`MMAP_THRESHOLD` for this process (once); returns whether it is set.

    Set only when asked (:func:`_wanted`) on Linux with glibc; a failure to find ``mallopt`` leaves it unset.
    """
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc" or not _wanted():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return _done


__all__ = ["ENV", "MMAP_THRESHOLD", "return_freed_memory"]
