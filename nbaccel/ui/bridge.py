"""The bridge from runs' events to a view: events arrive on the runs' publisher threads,
are buffered, and reach the view in one batch at most a few times a second (`Throttle`).

The view (the panel, the comparison view) renders its own state; widgets are only created
and displayed on the main thread, by the view, and their values change in its update.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable, Optional

from nbaccel.core import Event, Run, RunEnded


class Throttle:
    """Calls `fn` at most once per `interval` seconds. A call that comes too soon is deferred
    to the end of the interval (on a timer thread), never dropped; `now=True` calls at once."""

    def __init__(
        self,
        fn: Callable[[], None],
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fn = fn
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last = -math.inf
        self._timer: Optional[threading.Timer] = None

    def __call__(self, now: bool = False) -> None:
        with self._lock:
            wait = self._last + self._interval - self._clock()
            if not now and wait > 0:
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._fire)
                    self._timer.daemon = True
                    self._timer.name = "nbaccel-redraw"
                    self._timer.start()
                return
            timer, self._timer = self._timer, None
            self._last = self._clock()
        _end(timer)
        self._fn()

    def cancel(self) -> None:
        """Drops a deferred call; its timer thread has ended when this returns."""
        with self._lock:
            timer, self._timer = self._timer, None
        _end(timer)

    def _fire(self) -> None:
        with self._lock:
            if self._timer is None:  # cancelled, or overtaken by a call with now=True
                return
            self._timer = None
            self._last = self._clock()
        self._fn()


def _end(timer: Optional[threading.Timer]) -> None:
    """Cancels `timer` and waits for its thread, outside the throttle's lock (a timer that
    has just fired waits for that lock, then finds itself cancelled and returns)."""
    if timer is not None:
        timer.cancel()
        if timer is not threading.current_thread():
            timer.join()


Update = Callable[[list[tuple[str, Event]], bool], None]  # (events by run, redraw)


class Bridge:
    """Buffers the events of one or more runs (arriving on their publisher threads) and
    hands them to `update(events, redraw)` in one batch, throttled; `RunEnded` goes at
    once. A view renders its own state in `update`; the bridge knows no widget."""

    def __init__(
        self, runs: dict[str, Run], update: Update, updates_per_second: float
    ) -> None:
        self._update = update
        self._pending: list[tuple[str, Event]] = []
        self._lock = threading.Lock()  # guards _pending
        self._draw_lock = threading.Lock()  # one update at a time
        self._throttle = Throttle(self.flush, 1.0 / updates_per_second)
        self._replaying = True
        self._unsubscribe = [
            run.subscribe(lambda event, name=name: self._on_event(name, event))
            for name, run in runs.items()
        ]
        self._replaying = False
        self.flush(draw=True)

    def close(self) -> None:
        """Stops following (the view moved on, or was closed); the runs go on."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._throttle.cancel()

    def _on_event(self, name: str, event: Event) -> None:
        with self._lock:
            self._pending.append((name, event))
        if not self._replaying:  # a replay is flushed once, by __init__
            self._throttle(now=isinstance(event, RunEnded))

    def flush(self, draw: bool = False) -> None:
        """Hands over the buffered events in one update (asking for a redraw when there
        were events, or when `draw` says so)."""
        with self._draw_lock:
            with self._lock:
                events, self._pending = self._pending, []
            self._update(events, bool(events) or draw)
