"""Control: the stop and pause flags the loop reads between steps, and Ctrl-C as a stop for
a run trained on the calling thread."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from multiprocessing.context import BaseContext
from typing import Any, Optional

from nbaccel.core.ranks import Ranks


class Control:
    """Stop and pause flags, set from any thread, read by the loop between steps.

    Time spent paused is not counted in `elapsed()`, so a time budget means training time.
    With `context` (a multiprocessing context) the flags are that context's Events, which
    the processes of a `devices=N` run share with the notebook's Run; `ranks` is set in
    each of them (ranks.py), so that all take the same decision at the same step.
    """

    def __init__(self, context: Optional[BaseContext] = None) -> None:
        events: Any = threading if context is None else context
        self.stop_requested = events.Event()
        self._running = events.Event()  # cleared while paused
        self._running.set()
        self.ranks = Ranks()
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

    def stop_seen(self) -> bool:
        """This process's view, between two batches: blocks while paused, then says
        whether a stop was asked for. Ranks may see it a batch apart (see should_stop)."""
        if not self._running.is_set():
            paused_at = time.perf_counter()
            self._running.wait()
            self._paused_s += time.perf_counter() - paused_at
        return self.stop_requested.is_set()

    def should_stop(self, time_limit: Optional[float] = None) -> Optional[str]:
        """Called between steps: blocks while paused, then "user" when a stop was asked
        for, "time" once `time_limit` seconds have passed, else None; rank 0's answer on
        every rank."""
        reason = None
        if self.stop_seen():
            reason = "user"
        elif time_limit is not None and self.elapsed() >= time_limit:
            reason = "time"
        return self.ranks.agree(reason)


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
