"""The one bridge from a run's events to a panel: the only place state meets widgets.

Events arrive on the run's publisher thread and are buffered; `Bridge.flush` applies them in
one batch, at most a few times a second (`Throttle`). Widgets are only created and displayed on
the main thread (by the panel); here their values change.
"""

from __future__ import annotations

import html
import math
import threading
import time
from typing import TYPE_CHECKING, Callable, Optional

from nbaccel.core import (
    Comparison,
    EpochEnded,
    Event,
    Progress,
    Run,
    RunEnded,
    RunStarted,
    Savings,
    SavingsUpdated,
)
from nbaccel.ui._format import (
    comparison_status_html,
    comparison_summary_html,
    format_seconds,
    savings_html,
    status_html,
)
from nbaccel.ui.charts import ChartData

if TYPE_CHECKING:
    from nbaccel.ui.comparison import ComparisonPanel
    from nbaccel.ui.panel import Panel


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
            self._cancel_timer()
            self._last = self._clock()
        self._fn()

    def cancel(self) -> None:
        """Drops a deferred call."""
        with self._lock:
            self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        with self._lock:
            if self._timer is None:  # cancelled, or overtaken by a call with now=True
                return
            self._timer = None
            self._last = self._clock()
        self._fn()


class _Follower:
    """Buffers the events of one or more runs (arriving on their publisher threads) and
    applies them in one flush, throttled. Subclasses say what an event changes (`_apply`)
    and how that shows (`_render`)."""

    def __init__(self, runs: dict[str, Run], updates_per_second: float) -> None:
        self._pending: list[tuple[str, Event]] = []
        self._lock = threading.Lock()  # guards _pending
        self._draw_lock = threading.Lock()  # one flush at a time
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
        """Applies the buffered events and redraws, in one batch (the chart only when there
        were events, or when `draw` says so)."""
        with self._draw_lock:
            with self._lock:
                events, self._pending = self._pending, []
            for name, event in events:
                self._apply(name, event)
            self._render(redraw=bool(events) or draw)

    def _apply(self, name: str, event: Event) -> None:
        raise NotImplementedError

    def _render(self, redraw: bool) -> None:
        raise NotImplementedError


class Bridge(_Follower):
    """Subscribes a panel to a run (or to nothing: an idle panel) and keeps it up to date."""

    def __init__(
        self, panel: Panel, run: Optional[Run], updates_per_second: float = 2.0
    ) -> None:
        self.panel = panel
        self.run = run
        self.data = ChartData()
        self.started: Optional[RunStarted] = None
        self.progress: Optional[Progress] = None
        self.best: Optional[EpochEnded] = None
        self.ended: Optional[RunEnded] = None
        self.savings: Optional[Savings] = None
        self.stop_requested = False
        self.notes: list[str] = []
        super().__init__({"run": run} if run else {}, updates_per_second)

    def _apply(self, name: str, event: Event) -> None:
        if isinstance(event, Progress) and event.note:
            self.notes.append(
                event.note
            )  # a change of course, not a point on the charts
            return
        self.data.add(event)
        if isinstance(event, RunStarted):
            self.started = event
        elif isinstance(event, Progress):
            self.progress = event
        elif isinstance(event, EpochEnded) and event.is_best:
            self.best = (
                event  # tracked here: reading run.best would take the run's lock
            )
        elif isinstance(event, SavingsUpdated):
            self.savings = event.savings
        elif isinstance(event, RunEnded):
            self.ended = event

    # --- state onto widgets ------------------------------------------------------------

    def _render(self, redraw: bool) -> None:
        panel = self.panel
        status = self.run.status if self.run else "idle"
        live = status in ("pending", "running", "paused")
        panel.start_button.disabled = live
        panel.pause_button.disabled = not live or self.stop_requested
        panel.pause_button.description = "Resume" if status == "paused" else "Pause"
        panel.pause_button.icon = "play" if status == "paused" else "pause"
        panel.stop_button.disabled = not live or self.stop_requested
        panel.controls.set_enabled(not live)
        panel.status.value = (
            status_html(
                status,
                self.started,
                self.ended,
                self.best,
                self.stop_requested,
                self.notes,
            )
            if self.run
            else "Choose data and a backbone, then Start."
        )
        panel.savings.value = savings_html(self.savings, self.progress)
        self._render_progress(status)
        failed = self.ended is not None and self.ended.status == "failed"
        panel.error.value = (
            f"<pre style='white-space:pre-wrap;color:#b00020'>"
            f"{html.escape(self.ended.traceback or self.ended.reason)}</pre>"
            if failed and self.ended
            else ""
        )
        panel.error.layout.display = None if failed else "none"
        if redraw:
            panel.chart.draw(self.data.points)

    def _render_progress(self, status: str) -> None:
        bar, label = self.panel.progress, self.panel.progress_text
        started, progress = self.started, self.progress
        if started is None:
            bar.value, label.value = 0, ""
            return
        total = started.epochs * started.steps_per_epoch
        done = (
            (progress.epoch - 1) * started.steps_per_epoch + progress.step
            if progress
            else 0
        )
        bar.max = total
        bar.value = min(done, total)
        bar.bar_style = {"finished": "success", "failed": "danger"}.get(status, "")
        if progress is None:
            label.value = f"epoch 1/{started.epochs} · starting"
            return
        where = (
            f"epoch {progress.epoch}/{started.epochs} · "
            f"step {progress.step}/{started.steps_per_epoch}"
        )
        if status == "running" and done:
            left = progress.elapsed_s * (total - done) / done
            where += f" · {format_seconds(left)} left at most"
        elif status == "paused":
            where += " · paused"
        label.value = where


class ComparisonBridge(_Follower):
    """Follows both runs of a comparison: the accuracy-against-time overlay, the status
    line, and the summary once both have ended."""

    def __init__(
        self, view: ComparisonPanel, comparison: Comparison, updates_per_second: float
    ) -> None:
        self.view = view
        self.comparison = comparison
        self.series: dict[str, tuple[list[float], list[float]]] = {
            name: ([], []) for name in ("accelerated", "baseline", "target")
        }
        super().__init__(comparison.runs(), updates_per_second)

    def _apply(self, name: str, event: Event) -> None:
        if isinstance(event, EpochEnded):
            xs, ys = self.series[name]
            xs.append(event.elapsed_s)
            ys.append(event.val_acc)

    def _render(self, redraw: bool) -> None:
        comparison, view = self.comparison, self.view
        target = comparison.target
        if target is not None:  # both ended: the line both runs are timed to
            end = max([0.0] + [xs[-1] for xs, _ in self.series.values() if xs])
            self.series["target"] = ([0.0, end], [target, target])
        view.status.value = comparison_status_html(comparison)
        view.summary.value = comparison_summary_html(comparison)
        view.stop_button.disabled = comparison.status != "running"
        if redraw:
            view.chart.draw(lambda trace: self.series[trace])
