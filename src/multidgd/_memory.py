"""Keep freed large blocks in the process (Linux with glibc).

glibc serves every allocation above 32 MB with its own ``mmap`` and gives it back with
``munmap`` when freed, so each minibatch's (cells x features) temporaries and weight
gradients arrive as fresh pages that the kernel must fault in and zero, which at the
paper's feature counts costs about as much as the element-wise work itself. Setting
``M_MMAP_MAX`` to 0 serves them from the heap instead, where the blocks freed by one
minibatch are reused by the next; ``M_TRIM_THRESHOLD`` keeps up to 1 GiB of freed heap
top in the process. The setting is process-wide and lasts; set the environment variable
``MULTIDGD_KEEP_FREED_MEMORY=0`` to leave malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Apply the malloc setting once; True when it is in effect."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("MULTIDGD_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to do
        return _done
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30)) and bool(mallopt(_M_MMAP_MAX, 0))
    return _done
