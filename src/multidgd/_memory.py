"""Reuse freed large blocks during training and inference (Linux with glibc).

glibc serves every allocation above its mmap threshold (at most 32 MB) with its own
``mmap`` and gives it back with ``munmap`` when freed, so each minibatch's
(cells x features) temporaries and weight gradients arrive as fresh pages that the kernel
must fault in and zero; at the paper's feature counts that costs about as much as the
element-wise work itself. Inside :func:`freed_memory_kept`, ``M_MMAP_MAX`` = 0 serves them
from the heap instead, where the blocks one minibatch frees are reused by the next, and
``M_TRIM_THRESHOLD`` keeps up to 1 GiB of freed heap top in the process. On exit glibc's
defaults are set back and the freed heap is returned to the system (``malloc_trim``).
Set the environment variable ``MULTIDGD_KEEP_FREED_MEMORY=0`` to leave malloc alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from collections.abc import Iterator

__all__ = ["freed_memory_kept"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_DEFAULT_TRIM = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
_depth = 0


def _libc():
    if os.environ.get("MULTIDGD_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to do
        return None
    return libc


@contextlib.contextmanager
def freed_memory_kept() -> Iterator[bool]:
    """Within the block, large freed blocks stay in the process for reuse; yields whether
    the setting is in effect. Nested use is fine (only the outermost block sets and restores).
    """
    global _depth
    libc = _libc() if _depth == 0 else None
    active = libc is not None and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_MMAP_MAX, 0))
    _depth += 1
    try:
        yield active or _depth > 1
    finally:
        _depth -= 1
        if libc is not None:
            libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM)
            libc.malloc_trim(0)
