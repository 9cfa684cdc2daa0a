"""compare() (#4): the baseline and the accelerated run trained for real, one after the
other; the projection checked against the measurement; the comparison view."""

from __future__ import annotations

import pytest

import nbaccel
from nbaccel.ui import ComparisonPanel
from tests.conftest import SMALL, wait_for


def test_a_head_only_run_below_the_baselines_accuracy_saves_nothing(digits_high):
    """(#16) Savings count only at equal accuracy: the target is the baseline's best
    val_acc; a head-only run on random features never reaches it, so its speedup is None
    and the comparison says why, however much sooner it ended."""
    cmp = nbaccel.compare(
        digits_high,
        backbone="resnet18",
        pretrained=False,
        freeze="all",
        image_size=32,
        epochs=3,
        stop="none",
    )
    panel = ComparisonPanel(cmp, charts="widget")  # follows both runs live
    assert cmp.status == "running" and cmp.baseline.status == "pending"
    cmp.wait(timeout=300)
    assert cmp.status == "finished"
    base, fast = cmp.baseline, cmp.accelerated
    assert base.config.freeze == 0 and base.config.precision == "fp32"
    assert base.config.head_init == "timm"  # a hand-written loop keeps timm's head,
    assert base.config.bn_stats is False  # and BatchNorm's running averages
    assert base.config.ema is False  # and the weights as they trained
    assert base.config.stop == "none" and base.savings is None  # no calibration
    assert fast.config.freeze == "all" and len(base.history) == len(fast.history) == 3
    # The projection the accelerated run made before training, against the real thing.
    assert cmp.projected_baseline_s == fast.savings.baseline_s
    assert cmp.measured_baseline_s == base.events[-1].elapsed_s
    assert 0.75 <= cmp.projection_error <= 1.33, cmp.summary()
    assert cmp.accelerated_s < cmp.measured_baseline_s  # sooner, but not as good:
    highest = {
        n: max(r["val_acc"] for r in run.history) for n, run in cmp.runs().items()
    }
    assert (
        cmp.best == highest
        and cmp.target == highest["baseline"] > highest["accelerated"]
    )
    assert cmp.time_to_target["accelerated"] is None
    assert 0 < cmp.time_to_target["baseline"] <= cmp.measured_baseline_s
    assert cmp.speedup is None
    assert cmp.verdict.startswith(
        f"the accelerated run never reached val_acc {cmp.target:.3f}"
    )
    assert "saved no time at equal accuracy" in cmp.verdict

    traces = {t.name: t for t in panel.chart.widget.data}
    assert list(traces["baseline"].y) == [row["val_acc"] for row in base.history]
    assert list(traces["accelerated"].x) == [row["elapsed_s"] for row in fast.history]
    assert list(traces["target"].y) == [cmp.target, cmp.target]
    summary = panel.summary.value
    assert "not reached" in summary and "never reached" in summary
    assert f"{highest['accelerated']:.3f}" in summary and f"{cmp.target:.3f}" in summary


def test_speedup_is_the_ratio_of_the_times_to_the_same_accuracy(digits_high):
    cmp = nbaccel.compare(
        digits_high,
        target=0.5,
        epochs=2,
        batch_size=32,  # CUDA's probed 64 halves the baseline's steps: 0.42 in 2 epochs
        stop="none",
        background=False,
        **SMALL,
        pretrained=False,
    )
    reached = cmp.time_to_target
    assert reached["baseline"] and reached["accelerated"], cmp.summary()
    assert cmp.speedup == pytest.approx(reached["baseline"] / reached["accelerated"])
    pace = (  # a slowdown is said as one
        f"{cmp.speedup:.2f}x sooner"
        if cmp.speedup >= 1
        else f"{1 / cmp.speedup:.2f}x later: no time saved"
    )
    assert cmp.verdict.endswith(pace)
    for name, run in cmp.runs().items():  # the first epoch at or above the target
        first = next(r for r in run.history if r["val_acc"] >= 0.5)
        assert reached[name] == first["elapsed_s"]


def test_a_given_target_and_one_never_reached(digits_high):
    cmp = nbaccel.compare(
        digits_high, target=1.01, epochs=1, background=False, **SMALL, pretrained=False
    )
    assert cmp.target == 1.01
    assert cmp.time_to_target == {"baseline": None, "accelerated": None}


def test_stopping_a_comparison_never_starts_the_baseline(digits_high):
    cmp = nbaccel.compare(  # compile: on CUDA "auto" compiles a 500-epoch budget first
        digits_high, epochs=500, stop="none", compile=False, **SMALL, pretrained=False
    )
    wait_for(lambda: len(cmp.accelerated.history) >= 1)
    cmp.stop()
    cmp.wait(timeout=60)
    assert cmp.status == "stopped" and cmp.accelerated.status == "stopped"
    assert cmp.baseline.status == "pending" and cmp.speedup is None


def test_bad_choices_are_refused_before_anything_trains(digits_high):
    with pytest.raises(ValueError, match="precision must be one of"):
        nbaccel.compare(digits_high, **{**SMALL, "precision": "fp8"})
