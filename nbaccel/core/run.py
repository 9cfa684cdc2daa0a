"""Run: the handle the user holds, and its training thread.

The training thread puts events on one queue; the publisher (publisher.py) drains it, keeps
the history and calls subscribers. Control goes back only through the loop's `Control`
flags.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import multiprocessing
import os
import threading
import traceback
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from nbaccel.core.auditing import Audit, audit_sources
from nbaccel.core.checkpoint import Checkpointer, open_checkpointer
from nbaccel.core.config import TrainConfig
from nbaccel.core.control import Control, interrupt_stops
from nbaccel.core.decision import Decision
from nbaccel.core.events import (
    Event,
    RunEnded,
    RunStarted,
    Savings,
    TestScore,
    failed_run,
)
from nbaccel.core.history_log import HistoryLog
from nbaccel.core.host_memory import give_back_freed_memory, keep_freed_memory
from nbaccel.core.interpret import Interpretation, interpret
from nbaccel.core.launch import (
    RanksEnded,
    check_can_start,
    start_method,
    train_on_ranks,
)
from nbaccel.core.loaders import TransformedImages, transforms_for
from nbaccel.core.loop import run_training
from nbaccel.core.openmp import release_thread_pool
from nbaccel.core.plan import Plan
from nbaccel.core.predict import Predictions, predict, score_test
from nbaccel.core.preview import BatchPreview, preview_batch
from nbaccel.core.publisher import Publisher
from nbaccel.core.quantize import ExportReport, check_quantize_request, export_int8
from nbaccel.core.saving import export, save
from nbaccel.core.splits import Sources, resolve_sources
from nbaccel.core.timing import release

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


class Run:
    """A training run in a background thread. Start it with `nbaccel.fasttrain()`."""

    def __init__(self, config: TrainConfig, plan: Plan) -> None:
        self._set_up(
            config, plan.model, plan.class_names, plan.data_config, plan.device
        )
        self._plan: Optional[Plan] = plan
        # What show_batch() reads: the training images and transform, without the cache.
        self._training = TransformedImages(plan.train.source, plan.train.transform)
        self._augment = plan.augment
        self._precision = plan.precision
        self._log_dir = plan.log_dir
        if plan.devices.value > 1:  # flags the processes share (launch.py says how)
            self._start_method = start_method()
            check_can_start(plan, self._start_method)
            self._control = Control(multiprocessing.get_context(self._start_method))
        if plan.resumed is not None:  # the epochs so far, as they were published
            self._publisher.replay(list(plan.resumed.items))

    @classmethod
    def _saved(
        cls,
        config: TrainConfig,
        model: nn.Module,
        class_names: tuple[str, ...],
        data_config: dict,
        device: str,
        items: list,
        log_dir: Optional[Path] = None,
    ) -> Run:
        """An ended run read back from its checkpoint (nbaccel.load_run)."""
        run = cls.__new__(cls)
        run._set_up(config, model, class_names, data_config, torch.device(device))
        run._plan, run._started = None, True
        run._training, run._augment = None, None  # rebuilt by show_batch() if asked
        run._loaded = True
        run._log_dir = log_dir
        run._precision = "fp32"
        run._publisher.replay(items)
        return run

    def _set_up(
        self,
        config: TrainConfig,
        model: Optional[nn.Module],
        class_names: tuple[str, ...],
        data_config: dict,
        device: torch.device,
    ) -> None:
        self.config = config
        self.class_names = class_names
        self.data_config = data_config
        self._model = model
        self._device = device
        self._loaded = False  # read back from a checkpoint (load_run)
        self._start_method = "thread"  # devices=N: "fork" or "spawn" (launch.py)
        self._first_batch: Optional[BatchPreview] = None  # show_batch() while training
        self._control = Control()
        self._publisher = Publisher()
        self._lock = threading.Lock()  # start() once
        self._started = False
        # The caller's context, taken again by start(): torch.compile's settings are
        # context variables, and a new thread would otherwise start without the user's.
        self._context = contextvars.copy_context()
        self._trainer = threading.Thread(
            target=lambda: self._context.run(self._train),
            name="nbaccel-train",
            daemon=True,
        )
        # The threads that must not wait for the run to end (they are what ends it).
        self._own_threads = [self._trainer, self._publisher]

    # --- control -------------------------------------------------------------------------

    def start(self, background: bool = True) -> Run:
        """Starts the run (once; later calls do nothing).

        background=False trains on the calling thread and returns once the run has ended
        (scripts, `%fasttrain --wait`). There, Ctrl-C stops the run at the next step, the
        best weights restored, then raises KeyboardInterrupt. On a CPU, starting in the
        background first frees the calling thread's OpenMP pool (see openmp.py), so the
        training thread runs at the calling thread's speed.
        """
        global _current_run
        with self._lock:
            if self._started:
                return self
            self._started = True
            _current_run = self
            self._context = contextvars.copy_context()  # as it is now
            if self._device.type == "cpu":  # before the threads start: host_memory.py
                keep_freed_memory()
            if self._log_dir is not None:  # a resumed run's epochs first (replayed)
                log = HistoryLog(self._log_dir, lambda: self.history)
                self._publisher.subscribe(log)
                logger.info("nbaccel writes the run's history to %s", self._log_dir)
            self._publisher.start()
            if background:
                if self._start_method == "thread":  # before training takes the RNGs
                    self._keep_first_batch()
                if self._device.type == "cpu":  # one OpenMP pool: openmp.py says why
                    release_thread_pool()
                self._trainer.start()
        if not background:
            self._train_here()
        return self

    def _keep_first_batch(self) -> None:
        """show_batch()'s default batch, made now, before the training thread shares
        Python's and torch's random numbers. One that cannot be made (the data's own
        error) is left to training to report."""
        try:
            self._first_batch = self._preview(16, 0)
        except Exception:  # noqa: BLE001 - the run itself will say what is wrong
            logger.debug("no batch preview for this run", exc_info=True)

    def stop(self, timeout: float = 30.0) -> Run:
        """Asks the run to stop at the next step boundary and waits up to `timeout` s for it
        to end (its status then says so). Idempotent."""
        self._control.stop()
        if self._started and threading.current_thread() not in self._own_threads:
            self._publisher.done.wait(timeout)
        return self

    def pause(self) -> Run:
        """Pauses at the next step boundary (paused time is not counted). Idempotent."""
        if self._publisher.ended is None:
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
        if not self._publisher.done.wait(timeout):
            raise TimeoutError(
                f"the run is still {self.status} after {timeout} s; call run.stop() to end it"
            )
        for thread in (self._trainer, self._publisher):  # both end right after RunEnded
            if thread.ident is not None and thread is not threading.current_thread():
                thread.join()
        ended = self._publisher.ended
        assert ended is not None
        if ended.status == "failed":
            raise TrainingFailed(ended.reason, ended.traceback or "")
        return self

    # --- state ---------------------------------------------------------------------------

    @property
    def status(self) -> str:
        """ "running" | "paused" | "finished" | "stopped" | "failed", or "pending" before
        start() (a compare() run waiting for its turn)."""
        ended = self._publisher.ended
        if ended is not None:
            return ended.status
        if not self._started:
            return "pending"
        return "paused" if self._control.paused else "running"

    @property
    def reason(self) -> Optional[str]:
        """Why the run ended ("patience", "target", "time", "epochs", "user", "nan", or the
        error), or None while it runs."""
        ended = self._publisher.ended
        return None if ended is None else ended.reason

    @property
    def history(self) -> list[dict]:
        """One dict per finished epoch: epoch, train_loss, val_loss, val_acc, images_per_s,
        epoch_s, elapsed_s; the best epoch's also test_loss and test_acc once the run has
        scored a test split."""
        return [dict(row) for row in list(self._publisher.history)]

    @property
    def log_dir(self) -> Optional[Path]:
        """The folder the history is written to: `history.csv` after each epoch (read it
        with pandas.read_csv) and, with tensorboard installed, TensorBoard's event file
        (`tensorboard --logdir` it): the log_dir option, else the run directory; None
        with checkpoint=False and no log_dir (and for a loaded run without the file)."""
        return self._log_dir

    @property
    def best(self) -> Optional[dict]:
        """The best epoch's row (by the stopping rule's monitored metric, val_loss by default)."""
        best = self._publisher.best
        return None if best is None else dict(best)

    @property
    def test(self) -> Optional[TestScore]:
        """The test split's score (a data folder's test/, a table's test rows), taken once
        with the best weights when the run ends (finished or stopped after an epoch);
        None without a test split, or before the end. Its figures are also in run.best's row as test_loss, test_acc."""
        ended = self._publisher.ended
        return None if ended is None else ended.test

    @property
    def savings(self) -> Optional[Savings]:
        """Time saved against the baseline (every layer trained, fp32, no early stop):
        projected while the run goes, measured once it has ended. None with baseline="off"
        or before the calibration."""
        return self._publisher.savings

    @property
    def device(self) -> str:
        """Where the run trains: "cpu", "cuda:0", "mps"."""
        return str(self._device)

    @property
    def precision(self) -> str:
        """The run's precision: as planned, or as the training thread settled "auto"."""
        started = next((e for e in self.events if isinstance(e, RunStarted)), None)
        return self._precision if started is None else started.precision

    @property
    def model(self) -> Optional[nn.Module]:
        """The model: training while the run goes on, the best epoch's weights once it has
        ended; None after a failure."""
        return self._model

    @property
    def events(self) -> list[Event]:
        """Every event published so far, in order."""
        return list(self._publisher.events)

    def subscribe(
        self, fn: Callable[[Event], Any], replay: bool = True
    ) -> Callable[[], None]:
        """Calls `fn(event)` for each event, on the publisher thread (never the training
        thread). With `replay`, the events so far are passed first, on the calling thread.

        Returns:
            A function that unsubscribes `fn`.
        """
        return self._publisher.subscribe(fn, replay)

    # --- using the result ----------------------------------------------------------------

    def predict(self, images: Any) -> Predictions:
        """Labels and class probabilities for images: paths (a file or a folder), PIL
        images, an N x H x W x C uint8 array or an N x C x H x W tensor in [0, 1].

        Raises:
            RuntimeError: the run is still training, or failed (it has no model).
        """
        model = self._ended_model("predict")
        precision = self._precision_for(model)
        return predict(model, images, self.class_names, self.data_config, precision)

    def interpret(self) -> Interpretation:
        """Where the model is wrong, on the validation images with the best weights:
        `.confusion_matrix` (rows = true classes), `.per_class` (precision, recall, F1,
        support), `.top_k_accuracy(k)`, `.top_losses(k)` and `.cell(true, predicted)`.
        In a notebook it shows as a heatmap, a table and the top losses' images.

        Raises:
            RuntimeError: the run is still training, or failed (it has no model).
        """
        model = self._ended_model("interpret")
        sources = self._sources("interpret")
        transform = transforms_for(self.data_config, "none")[1]
        precision = self._precision_for(model)
        return interpret(model, sources.val, transform, self.class_names, precision)

    def show_batch(self, count: int = 16, seed: int = 0) -> BatchPreview:
        """`count` training images exactly as the model sees them: through the run's
        training transform, augmentation included, then de-normalised; with their labels.
        `seed` picks other images and crops. While the run trains in this process's
        thread, the batch is the one kept when it started (16 images, seed 0): the
        augmentation draws from the random numbers training draws from. In a notebook it
        shows as a grid.

        Raises:
            ValueError: `count` is not a whole number >= 1.
            RuntimeError: another batch asked for while the run trains in this process.
        """
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"count must be a whole number >= 1, got {count!r}")
        if (count, seed) == (16, 0) and self._first_batch is not None:
            return self._first_batch
        live = self._started and self._publisher.ended is None
        if live and self._start_method == "thread":
            raise RuntimeError(
                f"run.show_batch(count={count}, seed={seed}) while the run trains would "
                "take the random numbers its training draws: run.show_batch() shows the "
                "16 images kept when it started; other batches once it has ended "
                "(run.wait() or run.stop())"
            )
        return self._preview(count, seed)

    def _preview(self, count: int, seed: int) -> BatchPreview:
        if self._training is None:  # a run read back from its checkpoint
            started = next(e for e in self.events if isinstance(e, RunStarted))
            sources = self._sources("show_batch")
            transform = transforms_for(self.data_config, started.augment)[0]
            self._training = TransformedImages(sources.train, transform)
            self._augment = started.augment
        return preview_batch(
            self._training,
            self.data_config["mean"],
            self.data_config["std"],
            str(self._augment),
            count,
            seed,
        )

    def audit(self, near_duplicate: Optional[float] = None) -> Audit:
        """The data audit (nbaccel.audit) of the run's data with the trained model: its
        pooled features place the images, and its predictions add a vote on each label
        (another label at 0.9 or more flags an image). Train, val and test images alike;
        the model is only read (left in eval mode, where an ended run's model is). Near
        copies are found by their pixels: a model tuned to these classes packs each
        class together, so its features put distinct images of a class at a cosine near
        1; give `near_duplicate` (a cosine) to count feature neighbours as copies too.

        Raises:
            RuntimeError: the run is still training, or failed (it has no model).
        """
        model = self._ended_model("audit")
        sources = self._sources("audit")
        transform = transforms_for(self.data_config, "none")[1]
        return audit_sources(
            model, sources, transform, self.config.backbone, True, near_duplicate
        )

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Writes the best weights with the class names and data config; `nbaccel.load(path)`
        reads it back, and `fasttrain(pretrained=path)` fine-tunes from it."""
        model = self._ended_model("save")
        return save(
            model, path, self.config.backbone, self.class_names, self.data_config
        )

    def export(
        self,
        path: Union[str, os.PathLike],
        quantize: Optional[str] = None,
        max_accuracy_drop: float = 0.01,
    ) -> Union[Path, ExportReport]:
        """Exports the best model to ONNX ("x.onnx"), TorchScript ("x.pt") or torch.export
        ("x.pt2"), then loads the export back and checks its outputs against the model's.
        The model's weights are not changed.

        Args:
            path: the file; its extension picks the format.
            quantize: None (float32), or "int8": an ONNX model with int8 weights and
                activations (onnxruntime's static quantization, calibrated on up to 256
                training images), about 4x smaller.
            max_accuracy_drop: with quantize="int8", the largest drop in validation
                accuracy accepted against the float32 export (0.01: one point).

        Returns:
            The path; with quantize="int8" an ExportReport (path-like): the file size, CPU
            latency per image and validation accuracy of the int8 and fp32 models.

        Raises:
            ValueError: an unknown extension, outputs that differ from the model's, or
                with quantize="int8": a name not ending in .onnx, a bound outside [0, 1],
                or an accuracy drop over the bound (then nothing is written at `path`).
            ImportError: ONNX without its packages (pip install 'nbaccel[export]').
        """
        model = self._ended_model("export")
        if quantize is None:
            return export(model, path, self.data_config)
        path = check_quantize_request(path, quantize, max_accuracy_drop)
        sources = self._sources("export")
        return export_int8(
            model,
            path,
            self.data_config,
            sources.train,
            sources.val,
            max_accuracy_drop,
            seed=self.config.seed,
        )

    def _sources(self, what: str) -> Sources:
        """The run's splits, read again from its data as the run read them.

        Raises:
            ValueError: a run read back from disk whose data was not a folder or file (a
                checkpoint keeps a description of arrays, tables and Datasets, not them).
        """
        data = self.config.data
        if self._loaded and not (
            isinstance(data, (str, os.PathLike)) and Path(data).expanduser().exists()
        ):
            raise ValueError(
                f"run.{what}() reads the run's images again, but this run was read back "
                f"from disk and trained on {data}, which its checkpoint describes but does "
                "not hold (or a folder that is gone). Train a run on the data in this "
                "session to use it, or move the folder back"
            )
        return resolve_sources(data, self.config.val, self.config.seed)

    def _precision_for(self, model: nn.Module) -> str:
        """The run's precision where it trained; fp32 once the model has moved (a stopped
        run's model goes to the CPU, where fp16 autocast is slow and gains nothing)."""
        here = next(model.parameters()).device
        return self.precision if here == self._device else "fp32"

    def _ended_model(self, what: str) -> nn.Module:
        if self._publisher.ended is None:
            raise RuntimeError(
                f"run.{what}() needs an ended run (the model is still training): call "
                "run.wait() or run.stop() first"
            )
        if self._model is None:
            raise RuntimeError(f"run.{what}(): the run failed, so it has no model")
        if self._publisher.ended.best_epoch is None:
            raise RuntimeError(
                f"run.{what}(): the run was stopped before its first epoch ended, so its "
                "model holds no trained weights; train at least one epoch"
            )
        return self._model

    def _use_batch_size(self, size: int) -> None:
        """compare(): a pending baseline trains at the accelerated run's batch size."""
        if self._plan is not None and not self._started:
            why = "the accelerated run's, which its projection assumed (compare)"
            self._plan = dataclasses.replace(
                self._plan,
                batch_size=Decision("batch size", size, why),
                probe_batch=False,
            )
            self.config = dataclasses.replace(self.config, batch_size=size)

    def _offload(self) -> None:
        """Moves an ended run's model to the CPU, giving its GPU memory back."""
        if self._model is not None:
            self._model.to("cpu")
        release(self._device)

    def __repr__(self) -> str:
        history = self._publisher.history
        last = history[-1] if history else None
        epochs = (
            f"epoch {last['epoch']}/{self.config.epochs}, val_acc {last['val_acc']:.3f}"
            if last
            else "no epoch yet"
        )
        ended = f", reason={self.reason!r}" if self._publisher.ended else ""
        return f"<nbaccel.Run {self.config.backbone} {self.status}{ended}: {epochs}>"

    # --- the training thread -------------------------------------------------------------

    def _train_here(self) -> None:
        """The training thread's work, on the calling thread; Ctrl-C asks for a stop."""
        self._own_threads.append(threading.current_thread())
        try:
            with interrupt_stops(self._control) as interrupted:
                self._train()
        finally:
            self._own_threads.pop()
        self._publisher.done.wait()  # every event published
        if interrupted:
            raise KeyboardInterrupt

    def _train(self) -> None:
        plan, self._plan = self._plan, None  # the thread holds the only reference
        assert plan is not None
        checkpoints = None
        if plan.devices.value > 1:  # the processes write the checkpoints (rank 0)
            ended = self._train_on_ranks(plan)
        else:
            checkpoints = open_checkpointer(plan)
            ended = self._train_in_thread(plan, checkpoints)
        del plan  # the loaders and the plan's model reference go with it
        try:  # after the except block: its traceback held the failed step's tensors
            if ended.status == "stopped":
                self._offload()  # a stopped run gives its GPU memory back
            else:
                release(self._device)
            if self._device.type == "cpu":  # this thread's OpenMP workers, the heap
                release_thread_pool()
                give_back_freed_memory()
        except Exception:  # noqa: BLE001 - a sticky CUDA error; the run must still end
            logger.exception("nbaccel could not give the memory back after the run")
        finally:
            if checkpoints is not None:  # how it ended, for load_run() and runs()
                checkpoints.end(ended)
            self._publisher.queue.put(ended)

    def _train_in_thread(
        self, plan: Plan, checkpoints: Optional[Checkpointer]
    ) -> RunEnded:
        """Trains here, on this thread; every failure becomes a failed RunEnded."""
        try:
            with torch.enable_grad():
                status, reason, best_epoch = run_training(
                    plan, self._publisher.queue.put, self._control, checkpoints
                )
            # The run's clock: from the first step's set-up, paused time left out; the
            # test split's scoring after it, as a baseline run would score it too.
            elapsed = self._control.elapsed()
            test = None
            if plan.test is not None and best_epoch:  # finished, or stopped
                test = score_test(plan.model, plan.test, plan.precision, best_epoch)
            return RunEnded(status, reason, best_epoch, elapsed, test=test)
        except BaseException as error:  # noqa: BLE001 - everything becomes a failed run
            self._model = None
            return failed_run(error, self._control.elapsed(), traceback.format_exc())

    def _train_on_ranks(self, plan: Plan) -> RunEnded:
        """devices=N: trains in N processes (launch.py), their events forwarded to the
        publisher; the best weights come back into this process's model."""
        try:
            result = train_on_ranks(
                plan,
                run_training,
                self._publisher.queue.put,
                self._control,
                self._start_method,
            )
        except BaseException as error:  # noqa: BLE001 - a process that could not start
            elapsed = self._control.elapsed()
            result = RanksEnded(
                failed_run(error, elapsed, traceback.format_exc()), None
            )
        if result.best_weights is None:
            self._model = None
        elif self._model is not None:
            self._model.load_state_dict(result.best_weights)
            self._model.eval()
        return result.ended
