"""Time saved against the baseline: projected from the calibration, measured as the run goes,
and derived from the run's events (`SavingsTracker`), outside the training loop.

The baseline (DESIGN.md) is the same data, backbone, weights and epoch budget with every layer
trained, fp32, no caching, no compile and no early stop. Its time is never guessed: it is
its timed steps times the steps of the whole budget.
"""

from __future__ import annotations

from typing import Optional

from nbaccel.core.events import (
    Acceleration,
    Calibration,
    EpochEnded,
    Measured,
    RunEnded,
    RunStarted,
    Savings,
    SavingsUpdated,
)


class SavingsTracker:
    """Derives a run's SavingsUpdated events from what it reported: one after its
    measurements (Measured), one after each epoch (projected), and the measured one just
    before RunEnded (`before_end`). The publisher feeds it every event."""

    def __init__(self) -> None:
        self._started: Optional[RunStarted] = None
        self._measured: Optional[Measured] = None
        self._history: list[dict] = []

    def after(self, event: object) -> Optional[SavingsUpdated]:
        """The update to publish after `event`, if any."""
        if isinstance(event, RunStarted):
            self._started = event
        elif isinstance(event, Measured):
            # A later report (compiling went on during training) only corrects the
            # figures that the final update uses.
            first = self._measured is None
            self._measured = event
            return self._update(event.elapsed_s, None) if first else None
        elif isinstance(event, EpochEnded) and self._measured is not None:
            self._history.append(event.as_row())
            return self._update(event.elapsed_s, None)
        return None

    def before_end(self, ended: RunEnded) -> Optional[SavingsUpdated]:
        """The measured update, just before RunEnded (none for a failed run)."""
        if self._measured is None or ended.status == "failed":
            return None
        return self._update(ended.elapsed_s, ended.reason)

    def _update(self, elapsed_s: float, end_reason: Optional[str]) -> SavingsUpdated:
        started, measured = self._started, self._measured
        assert started is not None and measured is not None
        return SavingsUpdated(
            estimate_savings(
                measured.calibration,
                steps_per_epoch=started.steps_per_epoch,
                val_batches=started.val_batches,
                freeze_depth=started.freeze_depth,
                precision=started.precision,
                history=self._history,
                elapsed_s=elapsed_s,
                budget=started.epochs,
                end_reason=end_reason,
                acceleration=measured.acceleration,
                devices=started.devices,
            )
        )


def estimate_savings(
    calibration: Calibration,
    steps_per_epoch: int,
    val_batches: int,
    freeze_depth: int,
    precision: str,
    history: list[dict],
    elapsed_s: float,
    budget: int,
    acceleration: Acceleration,
    end_reason: Optional[str] = None,
    devices: int = 1,
) -> Savings:
    """The savings after `history` and `elapsed_s`; `end_reason` is set once the run ended.

    Before the first epoch, the baseline's epoch is its timed steps plus the timed data
    reading. Once epochs are measured, it is this run's mean measured epoch plus the timed
    compute difference: reading data, Python and logging cost both the same, and the mean
    epoch measures them better than a few batches read at start-up (when a notebook is
    still busy drawing the panel).

    With `devices` processes the baseline is still one device: its epoch has `devices`
    times the steps (and validation batches) of one process's, and rank 0 timed its steps
    alone. What the processes gain over that one device is the "devices" cause.
    """
    cal, run, acc = calibration, len(history), acceleration
    spe, val_batches = steps_per_epoch * devices, val_batches * devices
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
    # What only this run spends each epoch: re-estimating BatchNorm before evaluating,
    # and averaging its weights.
    extras = cal.bn_stats_s + cal.ema_s
    calibrated += extras
    epochs = [row["epoch_s"] for row in history]
    if acc.image_cache and run >= 2:
        epochs = epochs[1:]  # the first epoch filled the image cache
    elif acc.image_cache and run == 1:
        epochs = [epochs[0] - cache_gain]
    observed = sum(epochs) / len(epochs) if epochs else None
    own = observed or calibrated / devices  # before an epoch: as if perfectly shared
    # this run's epoch on one device (its timed steps) against its epoch on `devices`
    devices_gain = calibrated - own if devices > 1 else 0.0
    # seconds per baseline epoch: what this run's epochs would take without each speed-up
    baseline = (
        own
        + devices_gain
        + cache_gain
        + compile_gain
        + frozen_gain
        + precision_gain
        - extras
    )
    if baseline <= 0:  # a tiny run's small, noisy terms summed to less than nothing:
        # what the calibration timed for the baseline itself, its data reads and steps
        baseline = spe * (cal.train_data_s + cal.baseline_step_s) + val_batches * (
            cal.val_data_s + cal.fp32_eval_s
        )
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
        (
            "batchnorm statistics",
            -counted * cal.bn_stats_s,
            f"re-estimated before each evaluation: {cal.bn_stats_s:.2f} s an epoch "
            "(timed), which the baseline does not spend"
            if cal.bn_stats_s
            else "not re-estimated (or not timed yet: the first evaluation times it)",
        ),
        (
            "weight average",
            -counted * cal.ema_s,
            f"scored and kept instead of the last weights: {cal.ema_s:.2f} s an epoch "
            "(timed), which the baseline does not spend"
            if cal.ema_s
            else "off",
        ),
        ("calibration", -cal.cost_s, "timing the baseline's steps and this run's"),
    ]
    if devices > 1:
        causes.append(
            (
                "devices",
                counted * devices_gain,
                f"{devices} processes: {own:.1f} s an epoch against {calibrated:.1f} s "
                "on one device (its steps timed there); the baseline is one device",
            )
        )
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
    if cal.notes:  # batches that did not fit in memory and were timed smaller
        baseline_how += "; " + "; ".join(cal.notes)
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
        epochs_compared=projected,
        calibration_s=cal.cost_s,
        by_cause=tuple(causes),
    )
