"""Give big freed buffers back to the operating system (glibc).

A fax is handled as a few buffers of its own size: the mail (28 MB for a 20 MB PDF), the decoded
document, the document read back for sending. glibc serves a request above its *mmap threshold*
with a mapping of its own and unmaps it on free, but it raises that threshold to the size of
every such block freed (up to 32 MiB). After the first big fax, the next ones come from the
heap and stay in the process when freed: the daemon's RSS then keeps the high-water mark of its
biggest fax for good. Fixing the threshold turns the adjustment off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["MMAP_THRESHOLD_BYTES", "release_big_blocks"]

M_MMAP_THRESHOLD = -3  # from glibc's <malloc.h>

# Blocks of 1 MiB or more get their own mapping: each fax's buffers, never the many small
# objects of an ordinary mail.
MMAP_THRESHOLD_BYTES = 1 << 20


def release_big_blocks(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Sets glibc's mmap threshold; False where that is not glibc, or when the operator chose a
    threshold already (``MALLOC_MMAP_THRESHOLD_`` in the environment wins)."""
    if platform.libc_ver()[0] != "glibc" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError):
        return False
