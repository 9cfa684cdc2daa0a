"""Run: one training thread, one publisher thread, and the handle the user holds.

The training thread puts events on one queue; the publisher drains it, keeps the history and
calls subscribers. Control goes back only through the loop's `Control` flags.
"""

from __future__ import annotations

import gc
import logging
import os
import queue
import threading
import traceback
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from nbaccel.core.config import TrainConfig
from nbaccel.core.events import EpochEnded, Event, RunEnded, SavingsUpdated
from nbaccel.core.export import Predictions, export, predict, save
from nbaccel.core.job import TrainingJob
from nbaccel.core.loop import Control, run_training
from nbaccel.core.savings import Savings

logger = logging.getLogger(__name__)

_current_run: Optional[Run] = (
    None  # the one registry: the latest run started in this process
)


class TrainingFailed(RuntimeError):
    """Raised by Run.wait() when training failed; `.traceback` holds the thread's traceback."""

    def __init__(self, reason: str, traceback_text: str) -> None:
        super().__init__(f"training failed: {reason}\n\n{traceback_text}")
        self.reason = reason
        self.traceback = traceback_text


def current_run() -> Optional[Run]:
    """The latest run started in this process (running or not), or None."""
    return _current_run


class Run:
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
        self._trainer = threading.Thread(
            target=self._train, name="nbaccel-train", daemon=True
        )
        self._publisher = threading.Thread(
            target=self._publish, name="nbaccel-publish", daemon=True
        )

    # --- control -------------------------------------------------------------------------

    def start(self) -> Run:
        """Starts the threads (once; later calls do nothing)."""
        global _current_run
        with self._lock:
            if self._trainer.ident is None:
                _current_run = self
                self._publisher.start()
                self._trainer.start()
        return self

    def stop(self, timeout: float = 30.0) -> Run:
        """Asks the run to stop at the next step boundary and waits up to `timeout` s for the
        training thread to end. Idempotent."""
        self._control.stop()
        if self._trainer.is_alive() and threading.current_thread() is not self._trainer:
            self._trainer.join(timeout)
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
            if thread is not threading.current_thread():
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
        if self._trainer.ident is None:
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

    def predict(self, images: Any) -> Predictions:
        """Labels and class probabilities for images: paths (a file or a folder), PIL
        images, an N x H x W x C uint8 array or an N x C x H x W tensor in [0, 1].

        Raises:
            RuntimeError: the run is still training, or failed (it has no model).
        """
        return predict(
            self._ended_model("predict"),
            images,
            self.class_names,
            self.data_config,
            self.precision,
        )

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Writes the best weights with the class names and data config; `nbaccel.load(path)`
        reads it back, and `fasttrain(pretrained=path)` fine-tunes from it."""
        model = self._ended_model("save")
        return save(
            model, path, self.config.backbone, self.class_names, self.data_config
        )

    def export(self, path: Union[str, os.PathLike]) -> Path:
        """Exports the best model to ONNX ("x.onnx"), TorchScript ("x.pt") or torch.export
        ("x.pt2"), then loads the export back and checks its outputs against the model's."""
        return export(self._ended_model("export"), path, self.data_config)

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

    def _train(self) -> None:
        job = self._job
        assert job is not None
        try:
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
        _release_memory(self._device)
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


def _release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
