"""Run: one training thread, one publisher thread, and the handle the user holds.

The training thread puts events on one queue; the publisher drains it, keeps the history and
calls subscribers. Control goes back only through the loop's `Control` flags.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from typing import Any, Callable, Optional

import torch
from torch import nn

from nbaccel.core.config import TrainConfig
from nbaccel.core.control import Control, interrupt_stops
from nbaccel.core.events import EpochEnded, Event, RunEnded, SavingsUpdated
from nbaccel.core.export import UsingTheResult
from nbaccel.core.job import TrainingJob
from nbaccel.core.loop import run_training
from nbaccel.core.memory import release
from nbaccel.core.savings import Savings

logger = logging.getLogger(__name__)

# The one registry: the latest run started in this process.
_current_run: Optional[Run] = None


class TrainingFailed(RuntimeError):
    """Raised by Run.wait() when training failed; `.traceback` holds the thread's traceback."""

    def __init__(self, reason: str, traceback_text: str) -> None:
        super().__init__(f"training failed: {reason}\n\n{traceback_text}")
        self.reason = reason
        self.traceback = traceback_text


def current_run() -> Optional[Run]:
    """The latest run started in this process (running or not), or None."""
    return _current_run


class Run(UsingTheResult):  # predict(), save(), export(): see export.UsingTheResult
    """A training run in a background thread. Start it with `nbaccel.fasttrain()`."""

    def __init__(self, job: TrainingJob) -> None:
        self.config: TrainConfig = job.config
        self.class_names: tuple[str, ...] = job.class_names
        self.data_config: dict = job.data_config
        self.precision: str = job.precision
        self._job: Optional[TrainingJob] = job
        self._model: Optional[nn.Module] = job.model
        self._device = job.device
        self._control = Control()
        self._queue: queue.Queue[Event] = queue.Queue()
        # Orders publishing against subscribing (a replay sees each event exactly once).
        # Reads take no lock, so a subscriber may read the run from anywhere without a
        # lock-order deadlock: the publisher is the only writer, and it only appends to
        # lists and rebinds attributes, which a reader copies whole.
        self._lock = threading.RLock()
        self._events: list[Event] = []
        self._history: list[dict] = []
        self._best: Optional[dict] = None
        self._savings: Optional[Savings] = None
        self._subscribers: list[Callable[[Event], Any]] = []
        self._ended: Optional[RunEnded] = None
        self._done = threading.Event()
        self._started = False
        self._trainer = threading.Thread(
            target=self._train, name="nbaccel-train", daemon=True
        )
        self._publisher = threading.Thread(
            target=self._publish, name="nbaccel-publish", daemon=True
        )
        # The threads that must not wait for the run to end (they are what ends it).
        self._own_threads = [self._trainer, self._publisher]

    # --- control -------------------------------------------------------------------------

    def start(self, background: bool = True) -> Run:
        """Starts the run (once; later calls do nothing).

        background=False trains on the calling thread and returns once the run has ended
        (scripts: on a CPU, a second thread's OpenMP pool competes with the first for the
        cores, which cost 20% of the speed on 2 cores). There, Ctrl-C stops the run at the
        next step, the best weights restored, then raises KeyboardInterrupt.
        """
        global _current_run
        with self._lock:
            if self._started:
                return self
            self._started = True
            _current_run = self
            self._publisher.start()
            if background:
                self._trainer.start()
        if not background:
            self._train_here()
        return self

    def stop(self, timeout: float = 30.0) -> Run:
        """Asks the run to stop at the next step boundary and waits up to `timeout` s for it
        to end (its status then says so). Idempotent."""
        self._control.stop()
        if self._started and threading.current_thread() not in self._own_threads:
            self._done.wait(timeout)
        return self

    def pause(self) -> Run:
        """Pauses at the next step boundary (paused time is not counted). Idempotent."""
        if self._ended is None:
            self._control.pause()
        return self

    def resume(self) -> Run:
        """Resumes a paused run. Idempotent."""
        self._control.resume()
        return self

    def wait(self, timeout: Optional[float] = None) -> Run:
        """Blocks until the run has ended, every event was published and both threads are gone.

        Raises:
            TrainingFailed: the run failed; it carries the training thread's traceback.
            TimeoutError: `timeout` seconds passed first (the run goes on).
        """
        if not self._done.wait(timeout):
            raise TimeoutError(
                f"the run is still {self.status} after {timeout} s; call run.stop() to end it"
            )
        for thread in (self._trainer, self._publisher):  # both end right after RunEnded
            if thread.ident is not None and thread is not threading.current_thread():
                thread.join()
        ended = self._ended
        assert ended is not None
        if ended.status == "failed":
            raise TrainingFailed(ended.reason, ended.traceback or "")
        return self

    # --- state ---------------------------------------------------------------------------

    @property
    def status(self) -> str:
        """ "running" | "paused" | "finished" | "stopped" | "failed", or "pending" before
        start() (a compare() run waiting for its turn)."""
        if self._ended is not None:
            return self._ended.status
        if not self._started:
            return "pending"
        return "paused" if self._control.paused else "running"

    @property
    def reason(self) -> Optional[str]:
        """Why the run ended ("patience", "target", "time", "epochs", "user", "nan", or the
        error), or None while it runs."""
        return None if self._ended is None else self._ended.reason

    @property
    def history(self) -> list[dict]:
        """One dict per finished epoch: epoch, train_loss, val_loss, val_acc, images_per_s,
        epoch_s, elapsed_s."""
        return [dict(row) for row in list(self._history)]

    @property
    def best(self) -> Optional[dict]:
        """The best epoch's row (by the stopping rule's monitored metric, val_loss by default)."""
        best = self._best
        return None if best is None else dict(best)

    @property
    def savings(self) -> Optional[Savings]:
        """Time saved against the baseline (every layer trained, fp32, no early stop):
        projected while the run goes, measured once it has ended. None with baseline="off"
        or before the calibration."""
        return self._savings

    @property
    def model(self) -> Optional[nn.Module]:
        """The model: training while the run goes on, the best epoch's weights once it has
        ended; None after a failure."""
        return self._model

    @property
    def events(self) -> list[Event]:
        """Every event published so far, in order."""
        return list(self._events)

    def subscribe(
        self, fn: Callable[[Event], Any], replay: bool = True
    ) -> Callable[[], None]:
        """Calls `fn(event)` for each event, on the publisher thread (never the training
        thread). With `replay`, the events so far are passed first, on the calling thread.

        Returns:
            A function that unsubscribes `fn`.
        """
        with self._lock:
            if replay:
                for event in self._events:
                    fn(event)
            self._subscribers.append(fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._subscribers:
                    self._subscribers.remove(fn)

        return unsubscribe

    # --- using the result ----------------------------------------------------------------

    def _ended_model(self, what: str) -> nn.Module:
        if self._ended is None:
            raise RuntimeError(
                f"run.{what}() needs an ended run (the model is still training): call "
                "run.wait() or run.stop() first"
            )
        if self._model is None:
            raise RuntimeError(f"run.{what}(): the run failed, so it has no model")
        return self._model

    def __repr__(self) -> str:
        last = self._history[-1] if self._history else None
        epochs = (
            f"epoch {last['epoch']}/{self.config.epochs}, val_acc {last['val_acc']:.3f}"
            if last
            else "no epoch yet"
        )
        ended = f", reason={self.reason!r}" if self._ended else ""
        return f"<nbaccel.Run {self.config.backbone} {self.status}{ended}: {epochs}>"

    # --- the two threads -----------------------------------------------------------------

    def _train_here(self) -> None:
        """The training thread's work, on the calling thread; Ctrl-C asks for a stop."""
        self._own_threads.append(threading.current_thread())
        try:
            with interrupt_stops(self._control) as interrupted:
                self._train()
        finally:
            self._own_threads.pop()
        self._done.wait()  # every event published
        if interrupted:
            raise KeyboardInterrupt

    def _train(self) -> None:
        job = self._job
        assert job is not None
        try:
            with torch.enable_grad():
                status, reason, best_epoch = run_training(
                    job, self._queue.put, self._control
                )
            # The run's clock: from the first step's set-up, paused time left out.
            ended = RunEnded(status, reason, best_epoch, self._control.elapsed())
        except BaseException as error:  # noqa: BLE001 - everything becomes a failed run
            ended = RunEnded(
                "failed",
                f"{type(error).__name__}: {error}",
                None,
                self._control.elapsed(),
                traceback.format_exc(),
            )
            self._model = None
        finally:
            self._job = None  # drops the loaders and the job's model reference
        if ended.status == "stopped" and self._model is not None:
            self._model.to("cpu")  # a stopped run gives its GPU memory back
        release(self._device)
        self._queue.put(ended)

    def _publish(self) -> None:
        while True:
            event = self._queue.get()
            with self._lock:
                self._events.append(event)
                if isinstance(event, EpochEnded):
                    self._history.append(event.as_row())
                    if event.is_best:
                        self._best = self._history[-1]
                elif isinstance(event, SavingsUpdated):
                    self._savings = event.savings
                elif isinstance(event, RunEnded):
                    self._ended = event
                for fn in list(self._subscribers):
                    try:
                        fn(event)
                    except Exception:  # a broken subscriber must not stop the others
                        logger.exception(
                            "nbaccel subscriber %r failed on %s",
                            fn,
                            type(event).__name__,
                        )
            if isinstance(event, RunEnded):
                self._done.set()
                return
