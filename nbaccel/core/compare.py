"""compare(): train the baseline and the accelerated run for real, one after the other, and
check the projected saving against the measured one.

    cmp = nbaccel.compare(data, backbone="resnet18", freeze="all", epochs=4)
    cmp.wait().speedup       # baseline's time to its best val_acc / the accelerated run's
    cmp.verdict, cmp.time_to_target, cmp.projection_error
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Optional

from nbaccel.core.config import TrainConfig, check_option_names, signature_with_options
from nbaccel.core.host_memory import keep_freed_memory
from nbaccel.core.openmp import release_thread_pool
from nbaccel.core.prepare import prepare_plan
from nbaccel.core.run import Run, TrainingFailed

# The baseline's learning rate when the user gives none: what a hand-written fine-tune of
# every layer with AdamW commonly uses (and the rate of the hand-written loop).
HAND_LR = 1e-3


class Comparison:
    """The baseline and the accelerated Run, trained in turn on a background thread.

    The accelerated run goes first, so one-time start-up costs (kernel selection, file
    caches) fall on it rather than on the baseline.
    """

    def __init__(
        self, accelerated: Run, baseline: Run, target: Optional[float] = None
    ) -> None:
        self.accelerated = accelerated
        self.baseline = baseline
        self._target = target
        self._stopped = threading.Event()
        self._error: Optional[BaseException] = None  # what ended the turn-taking early
        self._thread = threading.Thread(
            target=self._run_both, name="nbaccel-compare", daemon=True
        )

    def start(self) -> Comparison:
        """Starts the runs in turn (once)."""
        if self._thread.ident is None:
            if self.accelerated.device == "cpu":  # one OpenMP pool: see openmp.py
                release_thread_pool()
                keep_freed_memory()  # one malloc arena: see host_memory.py
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> Comparison:
        """Stops the run in progress (waiting up to `timeout` s for it to end); a run not
        yet started never starts. Idempotent."""
        self._stopped.set()
        for run in (self.accelerated, self.baseline):
            if run.status == "pending":  # about to start: it stops at its first step
                run.stop(timeout=0)
            elif run.status in ("running", "paused"):
                run.stop(timeout)
        return self

    def wait(self, timeout: Optional[float] = None) -> Comparison:
        """Blocks until both runs have ended.

        Raises:
            TrainingFailed: either run failed.
            TimeoutError: `timeout` seconds passed first.
        """
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(
                f"the comparison is still running after {timeout} s; "
                "call .stop() to end it"
            )
        for run in (self.accelerated, self.baseline):
            if run.status != "pending":
                run.wait()  # raises TrainingFailed for a failed run
        if self._error is not None:
            raise RuntimeError(
                f"the comparison stopped before the baseline: {self._error}"
            ) from self._error
        return self

    def runs(self) -> dict[str, Run]:
        """{"accelerated": run, "baseline": run}, in the order they train."""
        return {"accelerated": self.accelerated, "baseline": self.baseline}

    @property
    def status(self) -> str:
        """ "running" until both runs have ended, then "finished"; "stopped" or "failed"
        as soon as either run is."""
        statuses = [self.accelerated.status, self.baseline.status]
        if "failed" in statuses:
            return "failed"
        if "stopped" in statuses or (self._stopped.is_set() and "pending" in statuses):
            return "stopped"
        return "finished" if statuses == ["finished", "finished"] else "running"

    @property
    def projected_baseline_s(self) -> Optional[float]:
        """The accelerated run's projection of the baseline's wall time."""
        savings = self.accelerated.savings
        return None if savings is None else savings.baseline_s

    @property
    def measured_baseline_s(self) -> Optional[float]:
        """The baseline's wall time, measured (None until it has finished)."""
        return _wall_time(self.baseline)

    @property
    def accelerated_s(self) -> Optional[float]:
        return _wall_time(self.accelerated)

    @property
    def projection_error(self) -> Optional[float]:
        """projected / measured baseline time: 1.0 is a perfect projection."""
        projected, measured = self.projected_baseline_s, self.measured_baseline_s
        return None if projected is None or not measured else projected / measured

    @property
    def target(self) -> Optional[float]:
        """The val_acc both runs are timed to: as given, else the baseline's highest (what
        the user would have got by hand). None until the baseline has finished."""
        if self._target is not None:
            return self._target
        return self.best["baseline"] if self.baseline.status == "finished" else None

    @property
    def time_to_target(self) -> dict[str, Optional[float]]:
        """Seconds (each run's own clock) until each run first reached `target` val_acc;
        None for a run that never did."""
        target = self.target
        return {
            name: _first_reaching(run, target)
            for name, run in (
                ("baseline", self.baseline),
                ("accelerated", self.accelerated),
            )
        }

    @property
    def speedup(self) -> Optional[float]:
        """The time saved at equal accuracy: the baseline's time to `target` over the
        accelerated run's. None when the accelerated run never reached it (then nothing
        was saved at equal accuracy), or while the comparison runs."""
        reached = self.time_to_target
        baseline, accelerated = reached["baseline"], reached["accelerated"]
        return None if baseline is None or not accelerated else baseline / accelerated

    @property
    def verdict(self) -> str:
        """The comparison in one sentence, saying plainly when the target was not reached."""
        target, reached = self.target, self.time_to_target
        if self.status != "finished" or target is None:
            return f"the comparison is {self.status}"
        best = self.best
        if reached["accelerated"] is None:
            return (
                f"the accelerated run never reached val_acc {target:.3f} (its best: "
                f"{best['accelerated']:.3f}; the baseline's: {best['baseline']:.3f}), so "
                "it saved no time at equal accuracy"
            )
        if reached["baseline"] is None:
            return (
                f"the baseline never reached val_acc {target:.3f} (its best: "
                f"{best['baseline']:.3f}); the accelerated run did in "
                f"{reached['accelerated']:.1f} s"
            )
        pace = (  # a speedup below 1 is a slowdown: say so, not "0.17x sooner"
            f"{self.speedup:.2f}x sooner"
            if self.speedup >= 1
            else f"{1 / self.speedup:.2f}x later: no time saved"
        )
        return (
            f"val_acc {target:.3f} in {reached['accelerated']:.1f} s against the "
            f"baseline's {reached['baseline']:.1f} s: {pace}"
        )

    @property
    def best(self) -> dict[str, Optional[float]]:
        """Each run's highest val_acc over its epochs (None before its first epoch)."""
        return {
            name: max((row["val_acc"] for row in run.history), default=None)
            for name, run in self.runs().items()
        }

    def summary(self) -> dict[str, Any]:
        """Every figure of the comparison, for printing or logging."""
        return dict(
            status=self.status,
            target=self.target,
            best=self.best,
            time_to_target=self.time_to_target,
            speedup=self.speedup,
            verdict=self.verdict,
            projected_baseline_s=self.projected_baseline_s,
            measured_baseline_s=self.measured_baseline_s,
            accelerated_s=self.accelerated_s,
            projection_error=self.projection_error,
        )

    def __repr__(self) -> str:
        figures = ", ".join(
            f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value!r}"
            for name, value in self.summary().items()
            if name not in ("time_to_target", "best", "verdict")
        )
        return f"<nbaccel.Comparison {figures}>"

    def _run_both(self) -> None:
        try:
            for run in (self.accelerated, self.baseline):
                if self._stopped.is_set():
                    return
                if run is self.baseline:
                    # The baseline trains at the batch the accelerated run used (and its
                    # projection assumed), on a device the accelerated model has left.
                    self.baseline._use_batch_size(self.accelerated.events[0].batch_size)
                    self.accelerated._offload()
                run.start()
                try:
                    run.wait()
                except TrainingFailed:
                    return  # the failure is on the run; wait() raises it for the user
                if run.status == "stopped":
                    return
        except Exception as error:  # noqa: BLE001 - kept for wait() to raise
            self._error = error


def compare(
    data: Any,
    target: Optional[float] = None,
    *,
    background: bool = True,
    **options: Any,
) -> Comparison:
    """Trains the baseline and the accelerated run for real, one after the other.

    The baseline (DESIGN.md) has the same data, backbone, weights, seed and epoch budget,
    every layer trained, fp32, no early stop; the accelerated run is `fasttrain(data,
    **options)` and projects the baseline's time from its calibration, which the
    baseline's real run then checks.

    Args:
        data: as for fasttrain().
        target: the val_acc to time both runs to; by default the baseline's best.
        background: False blocks until both runs have ended.
        **options: fasttrain()'s options, for the accelerated run.

    Raises:
        ValueError: a bad choice, before anything trains.
    """
    comparison = prepare_comparison(data, target, **options).start()
    if not background:
        try:
            comparison.wait()
        except KeyboardInterrupt:
            comparison.stop()
            raise
    return comparison


def prepare_comparison(
    data: Any, target: Optional[float] = None, **options: Any
) -> Comparison:
    """compare()'s Comparison, checked and prepared but not started (the magic shows its
    panel first, then starts it)."""
    check_option_names(options)
    if options.pop("baseline", "measure") != "measure":
        raise ValueError(
            "compare() checks the accelerated run's projection of the baseline, so it "
            "always measures it: leave baseline= out"
        )
    if options.get("resume") not in (None, False):
        raise ValueError(
            "compare() trains both runs from the start: leave resume= out (resume the "
            "accelerated run with fasttrain(data, resume=...))"
        )
    config = TrainConfig(data=data, **options)
    accelerated = prepare_plan(config)
    baseline = dataclasses.replace(
        config,
        lr=config.lr if config.lr != "auto" else HAND_LR,
        freeze=0,
        precision="fp32",
        stop="none",
        baseline="off",
        # What a hand-written loop does: the same pixels (the augmentation "auto" chose for
        # the accelerated run), nothing cached or compiled, the default layout, the
        # default AdamW, timm's own initialisation of the new head, BatchNorm's
        # running averages as they trained, and the weights as they trained.
        augment=accelerated.augment,
        head_init="timm",
        bn_stats=False,
        ema=False,
        cache=False,
        compile=False,
        channels_last=False,
        fused=False,
        checkpoint=False,  # a yardstick, not a run to go on with
        log_dir=None,  # nor a history to keep (log_dir is the accelerated run's)
        devices=1,  # the baseline is one device (DESIGN.md), whatever devices= says
    )
    return Comparison(
        Run(config, accelerated), Run(baseline, prepare_plan(baseline)), target
    )


compare.__signature__ = signature_with_options(  # type: ignore[attr-defined]
    compare, before=("data", "target")
)


def _wall_time(run: Run) -> Optional[float]:
    ended = run.events[-1] if run.events else None
    return getattr(ended, "elapsed_s", None) if run.status == "finished" else None


def _first_reaching(run: Run, target: Optional[float]) -> Optional[float]:
    if target is None:
        return None
    for row in run.history:
        if row["val_acc"] >= target:
            return row["elapsed_s"]
    return None
