"""Host memory for CPU training: keep freed blocks for reuse instead of giving each back to
the operating system, as jemalloc and tcmalloc do (PyTorch's CPU tuning guide recommends
them; nbaccel cannot swap a running kernel's allocator, so it tunes glibc's).

By default glibc's malloc serves blocks over a threshold (128 KiB, raised as blocks are
freed) with mmap and unmaps them when freed, and trims the top of its heap once 128 KiB is
free there. A training step allocates and frees the same large activations every time, so
each step can fault fresh, zeroed pages back in. Measured here: resnet18 at 32 px trained
its second epoch at 560-620 images/s instead of 700-800 once the best epoch's weights had
been copied to the host (the copy changed the heap's layout), and at 740-860 every epoch
with the thresholds below.

And no new arenas: glibc gives each new thread that allocates a malloc arena of its own,
which starts cold, so a run's first epoch on a fresh training thread faulted in its pages
again (in a script, background epochs 1 at 380-460 images/s against 450-480 on the main
thread, resnet18 at 32 px). With M_ARENA_MAX at 1, threads started afterwards reuse the
existing arenas (in a script, the main thread's: 460-483 against 461-475). Set before the
threads that train are started: a thread keeps the arena it got first, and glibc ignores a
later limit once it has fixed one itself (past 8 arenas), so in a kernel with many threads
it may not take effect. Linux with glibc only; elsewhere nothing is changed.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # mallopt's parameters
MMAP_THRESHOLD = 32 * 1024**2  # glibc's largest: blocks up to this come from the heap
TRIM_THRESHOLD = 512 * 1024**2  # free memory kept at the heap's top before trimming


def keep_freed_memory() -> bool:
    """Sets glibc's thresholds so freed blocks are kept for reuse, and no new arenas for
    the threads started after it (process-wide, and it stays: it changes speed, never
    results). True where glibc accepted the settings."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        and libc.mallopt(M_ARENA_MAX, 1)
    )


def give_back_freed_memory() -> None:
    """Returns the free memory malloc kept to the operating system (after a run)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")  # already loaded: no search, no subprocess
    except OSError:  # musl (Alpine) and others: their malloc is left alone
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
