"""The C allocator's handling of large buffers in a serving process.

A large frame passes through several buffers of its size: an 8 MiB ``fs/readFile`` result is
11 MB of JSON, read from the socket, unmasked, decoded to text, rewritten, encoded and framed
again. glibc's malloc serves such a buffer from its own mapping or returns the free top of its
heap to the kernel once that grows past the trim threshold (by default twice the largest
buffer freed so far), so the next frame's buffers are fresh pages again, each faulted in and
zeroed by the kernel: 9,500 page faults per 8 MiB read, a third of the gateway's CPU for it
(docs/performance.md). Here buffers up to 32 MiB (the frame limit is 16 MiB) come from the
heap, and up to 64 MiB at its top may stay free for the next frame. Free memory below the top
(held there by smaller allocations that outlive a burst of large frames) is given back by a
thread calling ``malloc_trim`` every ``TRIM_EVERY`` seconds, so after a burst a process returns
to what it uses within that time. Operators who set glibc's own ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` (or either threshold in ``GLIBC_TUNABLES``) keep theirs; on another
C library nothing changes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time

logger = logging.getLogger(__name__)

MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed on 64-bit
TRIM_THRESHOLD = 64 * 1024 * 1024
TRIM_EVERY = 30.0
_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_SETTINGS = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
_GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_large_buffers(trim_every: float = TRIM_EVERY) -> bool:
    """Tune this process's allocator as the module docstring says; whether it was."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if any(name in os.environ for name in _GLIBC_VARIABLES) or "_threshold" in tunables:
        return False
    libc = ctypes.CDLL(None)  # the C library this interpreter runs on
    if not hasattr(libc, "gnu_get_libc_version"):
        return False
    tuned = all(libc.mallopt(parameter, value) == 1 for parameter, value in _SETTINGS)
    if not tuned:
        logger.warning("could not set glibc's malloc thresholds: large frames will cost page faults")
        return False
    # A thread: trimming takes the allocator's locks for a few milliseconds (ctypes releases the
    # GIL), which must not stall the event loop.
    threading.Thread(target=_trim_now_and_then, args=(libc, trim_every), name="malloc trim", daemon=True).start()
    return True


def _trim_now_and_then(libc: ctypes.CDLL, every: float) -> None:
    while True:
        time.sleep(every)
        libc.malloc_trim(0)
