"""Keep freed memory in the process instead of returning it to the kernel (glibc only).

Training and batched inference allocate and free the same few hundred MB of activations
every step. With glibc's defaults each of those blocks is mmap'ed and munmap'ed again, so
every step pays hundreds of thousands of page faults: on 2 cores the kernel time was about
half of a LW-RefineNet-MobileNetV2 training step. Raising the mmap and trim thresholds keeps
the memory in the heap for reuse; ``MALLOC_*_`` environment variables do the same but must
be set before the process starts, which a ``refinenet-ros train`` user should not need to know.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger("refinenet_ros")

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
#: blocks below this come from the heap (activations of a 8x288x288 batch reach ~100 MB)
_MAX_MMAP_THRESHOLD = 2**30


def keep_freed_memory(trim_threshold: int = 2**30, top_pad: int = 256 * 2**20) -> bool:
    """Tell glibc to reuse freed blocks; True when it took effect (False off glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, trim_threshold),
            (_M_TOP_PAD, top_pad),
        )
    )
    log.debug("glibc mallopt (keep freed memory): %s", "set" if ok else "refused")
    return ok
