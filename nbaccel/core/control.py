"""Control: the stop and pause flags the loop reads between steps, and Ctrl-C as a stop for
a run trained on the calling thread."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator


class Control:
    """Stop and pause flags, set from any thread, read by the loop between steps.

    Time spent paused is not counted in `elapsed()`, so a time budget means training time.
    """

    def __init__(self) -> None:
        self.stop_requested = threading.Event()
        self._running = threading.Event()  # cleared while paused
        self._running.set()
        self._started = time.perf_counter()
        self._paused_s = 0.0
        self._already_s = 0.0

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self.stop_requested.set()
        self._running.set()  # wakes a paused loop so that it can end

    def start_clock(self, already_s: float = 0.0) -> None:
        """Starts the run's clock at `already_s` (a resumed run's time so far)."""
        self._started, self._paused_s = time.perf_counter(), 0.0
        self._already_s = already_s

    def elapsed(self) -> float:
        return self._already_s + time.perf_counter() - self._started - self._paused_s

    def should_stop(self) -> bool:
        """Called between steps: blocks while paused, then says whether to stop."""
        if not self._running.is_set():
            paused_at = time.perf_counter()
            self._running.wait()
            self._paused_s += time.perf_counter() - paused_at
        return self.stop_requested.is_set()


@contextlib.contextmanager
def interrupt_stops(control: Control) -> Iterator[list[int]]:
    """While inside, Ctrl-C (SIGINT, on the main thread only) asks `control` to stop at the
    next step instead of raising; a second Ctrl-C interrupts at once. Yields a list that
    holds the signal once one came."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received  # signal handlers can only be set on the main thread
        return

    def on_interrupt(signum: int, frame: object) -> None:
        received.append(signum)
        control.stop()
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield received
    finally:
        if signal.getsignal(signal.SIGINT) is on_interrupt:
            signal.signal(signal.SIGINT, previous)
