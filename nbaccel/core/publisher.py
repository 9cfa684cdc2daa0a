"""The publisher: the one thread that drains a run's queue, keeps what the run reported (its
events, history, best epoch and savings) and calls the subscribers, never on the training
thread. It derives the SavingsUpdated events from the stream (savings.py)."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable, Optional

from nbaccel.core.events import (
    EpochEnded,
    Event,
    Measured,
    RunEnded,
    Savings,
    SavingsUpdated,
)
from nbaccel.core.savings import SavingsTracker

logger = logging.getLogger(__name__)


class Publisher(threading.Thread):
    """Drains `queue` until RunEnded. Reads of its state take no lock: it is the only
    writer, and it only appends to lists and rebinds attributes, which a reader copies
    whole; the lock orders publishing against subscribing (a replay sees each event
    exactly once)."""

    def __init__(self) -> None:
        super().__init__(name="nbaccel-publish", daemon=True)
        self.queue: queue.Queue[Any] = queue.Queue()
        self.lock = threading.RLock()
        self.events: list[Event] = []
        self.history: list[dict] = []
        self.best: Optional[dict] = None
        self.savings: Optional[Savings] = None
        self.ended: Optional[RunEnded] = None
        self.done = threading.Event()  # RunEnded has been published
        self._subscribers: list[Callable[[Event], Any]] = []
        self._tracker = SavingsTracker()

    def subscribe(
        self, fn: Callable[[Event], Any], replay: bool = True
    ) -> Callable[[], None]:
        """Calls `fn(event)` for each event from now on; with `replay`, first for each
        event so far, on the calling thread. Returns a function that unsubscribes."""
        with self.lock:
            if replay:
                for event in self.events:
                    fn(event)
            self._subscribers.append(fn)

        def unsubscribe() -> None:
            with self.lock:
                if fn in self._subscribers:
                    self._subscribers.remove(fn)

        return unsubscribe

    def replay(self, items: list) -> None:
        """Publishes a saved run's events (and Measured records) before this thread
        starts, as they were published then: the same history, best epoch and savings.
        A RunEnded among them ends the run (nbaccel.load_run)."""
        for item in items:
            if isinstance(item, RunEnded):
                self._publish(self._derived(self._tracker.before_end, item))
                self._publish(item)
                self.done.set()
                return
            self._publish(item)
            self._publish(self._derived(self._tracker.after, item))

    def run(self) -> None:
        try:
            while True:
                item = self.queue.get()
                if isinstance(item, RunEnded):
                    self._publish(self._derived(self._tracker.before_end, item))
                    self._publish(item)
                    return
                self._publish(item)
                self._publish(self._derived(self._tracker.after, item))
        finally:
            self.done.set()  # whatever happened, wait() returns

    def _derived(self, derive: Callable[[Any], Any], item: Any) -> Optional[Any]:
        """The savings update for `item`, or None (logged) if deriving it failed: a bug
        in the accounting must not stop the run's events."""
        try:
            return derive(item)
        except Exception:  # noqa: BLE001
            logger.exception("nbaccel could not derive the savings after %s", item)
            return None

    def _record_test(self, ended: RunEnded) -> None:
        """The test score goes into the row of the epoch whose weights it scored."""
        test = ended.test
        if test is None or test.error is not None:
            return
        for row in self.history:
            if row["epoch"] == test.epoch:
                row.update(test_loss=test.test_loss, test_acc=test.test_acc)

    def _publish(self, event: Optional[Any]) -> None:
        if event is None or isinstance(event, Measured):  # Measured: for us alone
            return
        with self.lock:
            self.events.append(event)
            if isinstance(event, EpochEnded):
                self.history.append(event.as_row())
                if event.is_best:
                    self.best = self.history[-1]
            elif isinstance(event, SavingsUpdated):
                self.savings = event.savings
            elif isinstance(event, RunEnded):
                self.ended = event
                self._record_test(event)
            for fn in list(self._subscribers):
                try:
                    fn(event)
                except Exception:  # a broken subscriber must not stop the others
                    logger.exception(
                        "nbaccel subscriber %r failed on %s", fn, type(event).__name__
                    )
