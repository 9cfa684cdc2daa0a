"""Time saved against the baseline: projected from the calibration, measured as the run goes.

The baseline (DESIGN.md) is the same data, backbone, weights and epoch budget with every layer
trained, fp32, no caching, no compile and no early stop. Its time is never guessed: it is
its timed steps times the steps of the whole budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from nbaccel.core.calibration import Calibration


@dataclass(frozen=True)
class Acceleration:
    """The speed-ups measured on the training thread before the first epoch."""

    image_cache: bool = False  # decoded images kept after the first epoch
    cache_fill_s: Optional[float] = None  # computing the frozen features, once
    compile_s: float = 0.0  # torch.compile's warm-up
    compile_gain_s: float = 0.0  # seconds a compiled training step saves


@dataclass(frozen=True)
class Savings:
    """How much sooner this run ends than the baseline would, and how each number was got."""

    baseline_s: float  # the baseline's projected wall time for the whole epoch budget
    actual_s: (
        float  # this run's wall time: measured once ended, projected while running
    )
    saved_s: float  # baseline_s - actual_s
    speedup: float  # baseline_s / actual_s
    final: bool  # actual_s is measured (the run has ended), not projected
    baseline_how: str
    actual_how: str
    baseline_epoch_s: float  # the baseline's projected seconds per epoch
    own_epoch_s: (
        float  # this run's seconds per epoch: mean of finished epochs, or calibrated
    )
    steps_timed: int  # timed calibration steps per configuration
    epochs_budget: int
    epochs_run: int
    calibration_s: float  # what timing the steps cost; part of actual_s
    # (cause, seconds saved, how): frozen layers, precision, early stop, caching, compile
    # (its gain less its cost), calibration (a cost), other (the difference between the measured epochs and the calibrated steps).
    by_cause: tuple[tuple[str, float, str], ...]

    @property
    def breakdown(self) -> dict[str, float]:
        """Seconds saved by cause; they add up to saved_s."""
        return {cause: seconds for cause, seconds, _ in self.by_cause}

    def saved_at(self, epochs_done: float, elapsed_s: float) -> float:
        """Seconds saved so far: what the baseline would have taken for `epochs_done`."""
        return epochs_done * self.baseline_epoch_s - elapsed_s


def estimate_savings(
    calibration: Calibration,
    steps_per_epoch: int,
    val_batches: int,
    freeze_depth: int,
    precision: str,
    history: list[dict],
    elapsed_s: float,
    budget: int,
    end_reason: Optional[str] = None,
    acceleration: Acceleration = Acceleration(),
) -> Savings:
    """The savings after `history` and `elapsed_s`; `end_reason` is set once the run ended.

    Before the first epoch, the baseline's epoch is its timed steps plus the timed data
    reading. Once epochs are measured, it is this run's mean measured epoch plus the timed
    compute difference: reading data, Python and logging cost both the same, and the mean
    epoch measures them better than a few batches read at start-up (when a notebook is
    still busy drawing the panel).
    """
    cal, spe, run, acc = calibration, steps_per_epoch, len(history), acceleration
    # The timed step difference is frozen layers and fused AdamW together; the latter is
    # timed on its own.
    optimizer_gain = spe * cal.optimizer_gain_s
    frozen_gain = spe * (cal.baseline_step_s - cal.frozen_fp32_step_s)
    precision_gain = spe * (cal.frozen_fp32_step_s - cal.own_step_s) + val_batches * (
        cal.fp32_eval_s - cal.own_eval_s
    )
    compile_gain = spe * acc.compile_gain_s
    # Caching saves this much on every epoch but the first (which fills the cache).
    if acc.cache_fill_s is not None:
        cache_gain = acc.cache_fill_s
        calibrated = spe * cal.feature_step_s + val_batches * cal.feature_eval_s
    elif acc.image_cache:
        cache_gain = spe * (
            cal.train_data_s - cal.cached_train_data_s
        ) + val_batches * (cal.val_data_s - cal.cached_val_data_s)
        calibrated = (
            spe * (cal.cached_train_data_s + cal.own_step_s)
            + val_batches * (cal.cached_val_data_s + cal.own_eval_s)
            - compile_gain
        )
    else:
        cache_gain = 0.0
        calibrated = (
            spe * (cal.train_data_s + cal.own_step_s)
            + val_batches * (cal.val_data_s + cal.own_eval_s)
            - compile_gain
        )
    epochs = [row["epoch_s"] for row in history]
    if acc.image_cache and run >= 2:
        epochs = epochs[1:]  # the first epoch filled the image cache
    elif acc.image_cache and run == 1:
        epochs = [epochs[0] - cache_gain]
    observed = sum(epochs) / len(epochs) if epochs else None
    own = observed or calibrated
    # seconds per baseline epoch: what this run's epochs would take without each speed-up
    baseline = own + cache_gain + compile_gain + frozen_gain + precision_gain
    final = end_reason is not None
    by_user = end_reason == "user"  # epochs the user chose not to run are not a saving
    projected = run if by_user else budget  # baseline epochs to compare against
    actual = elapsed_s if final else elapsed_s + (budget - run) * own
    counted = run if final else budget  # epochs the per-epoch gains apply to
    baseline_s = projected * baseline
    not_run = f"{budget - run} of {budget} epochs not run"
    causes = [
        (
            "frozen layers",
            counted * (frozen_gain - optimizer_gain),
            f"{freeze_depth} layer groups frozen: {cal.baseline_step_s * 1e3:.0f} -> "
            f"{cal.frozen_fp32_step_s * 1e3:.0f} ms per step (timed, fp32), less the "
            "fused optimizer's share",
        ),
        (
            "fused optimizer",
            counted * optimizer_gain,
            f"AdamW's fused kernel: {cal.optimizer_gain_s * 1e3:.0f} ms less per step "
            "(timed on the same gradients)",
        ),
        (
            "precision",
            counted * precision_gain,
            f"{precision}: {cal.frozen_fp32_step_s * 1e3:.0f} -> "
            f"{cal.own_step_s * 1e3:.0f} ms per step (timed)",
        ),
        (
            "early stop",
            (budget - run) * baseline if final and not by_user else 0.0,
            f"stopped by the user: {not_run}, not counted"
            if by_user
            else f"{not_run} ({end_reason})"
            if final
            else "counted when the run ends",
        ),
        (
            "caching",
            max(0, counted - 1) * cache_gain,
            f"features computed once in {acc.cache_fill_s:.1f} s, not every epoch"
            if acc.cache_fill_s is not None
            else f"decoded images kept: {cache_gain:.1f} s of reading saved per epoch "
            "after the first (timed)"
            if acc.image_cache
            else "nothing cached",
        ),
        (
            "compile",
            counted * compile_gain - acc.compile_s,
            f"compiling took {acc.compile_s:.1f} s; a compiled step saves "
            f"{acc.compile_gain_s * 1e3:.0f} ms (timed)"
            if acc.compile_s
            else "not compiled",
        ),
        ("calibration", -cal.cost_s, "timing the baseline's steps and this run's"),
    ]
    other = baseline_s - actual - sum(seconds for _, seconds, _ in causes)
    causes.append(("other", other, "set-up and the run's epochs against their mean"))
    source = (
        f"this run's measured epochs (mean {observed:.1f} s)"
        if observed
        else f"this run's timed steps ({cal.own_step_s * 1e3:.0f} ms + "
        f"{cal.train_data_s * 1e3:.0f} ms reading data, x {spe})"
    )
    baseline_how = (
        f"{source} + {baseline - own:.1f} s per epoch for what the baseline does in "
        f"full (caching, compile, steps: {cal.baseline_step_s * 1e3:.0f} ms vs "
        f"{cal.own_step_s * 1e3:.0f} ms per step, timed {cal.steps_timed}+ times each "
        f"after a warm-up on this run's batches) = {baseline:.1f} s per epoch x "
        f"{projected} epochs" + (" (the epochs run before the stop)" if by_user else "")
    )
    if final:
        actual_how = (
            f"measured: {elapsed_s:.1f} s for {run} epochs, calibration "
            f"({cal.cost_s:.1f} s) included"
        )
    else:
        pace = "mean of measured epochs" if observed else "from the timed steps"
        actual_how = (
            f"{elapsed_s:.1f} s so far + {budget - run} epochs x {own:.1f} s ({pace}) to "
            f"the {budget}-epoch budget; early stopping can only make it shorter"
        )
    return Savings(
        baseline_s=baseline_s,
        actual_s=actual,
        saved_s=baseline_s - actual,
        speedup=baseline_s / actual if actual > 0 else float("inf"),
        final=final,
        baseline_how=baseline_how,
        actual_how=actual_how,
        baseline_epoch_s=baseline,
        own_epoch_s=own,
        steps_timed=cal.steps_timed,
        epochs_budget=budget,
        epochs_run=run,
        calibration_s=cal.cost_s,
        by_cause=tuple(causes),
    )
