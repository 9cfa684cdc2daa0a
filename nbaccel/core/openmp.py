"""Giving back the calling thread's OpenMP worker pool, so that a run training on a CPU in
a background thread is as fast as on the main thread.

Every thread that runs a parallel PyTorch op on a CPU gets its own OpenMP pool of worker
threads. Once the notebook's main thread has run one (it has: preparing a run builds the
model), the training thread's pool brings the process to more OpenMP threads than cores,
and GNU libgomp (PyTorch's, on Linux) then all but stops spin-waiting: its workers go to
sleep and are woken between every parallel op. On 2 cores the same loop ran at 0.68x of its
main-thread speed in a thread. OpenMP 5's `omp_pause_resource_all` frees the calling
thread's pool; called on the main thread before training starts (and, in a notebook, after
each cell while a run trains), the training thread's pool is the only one, and it trains
at the main thread's speed.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: free the threads; keep nothing else paused
# GNU libgomp only: there the call frees the calling thread's pool alone (measured). LLVM's
# libomp and Intel's libiomp5 pause the whole runtime, the training thread's pool with it.
RUNTIMES = ("libgomp",)


def cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def release_thread_pool() -> bool:
    """Frees the OpenMP worker threads of the calling thread (they are made again, at the
    cost of a thread start, if it runs a parallel op later), in every OpenMP runtime loaded
    (PyTorch's, and others such as scikit-learn's own libgomp). True if any was freed or
    had none; False where no GNU libgomp is loaded (macOS, Windows, conda's Intel OpenMP:
    there nothing is done)."""
    results = [lib.omp_pause_resource_all(OMP_PAUSE_SOFT) == 0 for lib in _runtimes()]
    return any(results)


def _runtimes() -> list[ctypes.CDLL]:
    """The loaded OpenMP runtimes (found among the loaded libraries, so that those very
    copies are called) that implement omp_pause_resource_all (OpenMP 5.0)."""
    found = []
    for path in _loaded_libraries():
        if any(Path(path).name.startswith(name) for name in RUNTIMES):
            try:
                library = ctypes.CDLL(path)
            except OSError:
                continue
            if hasattr(library, "omp_pause_resource_all"):
                found.append(library)
    return found


def _loaded_libraries() -> list[str]:
    maps = Path("/proc/self/maps")
    if maps.is_file():  # Linux
        lines = maps.read_text().splitlines()
        return sorted({line.split()[-1] for line in lines if ".so" in line})
    torch = sys.modules.get("torch")  # elsewhere: the runtime in torch's own lib folder
    folder = Path(torch.__file__).parent / "lib" if torch is not None else None
    return [str(p) for p in folder.glob("lib*omp*")] if folder is not None else []
