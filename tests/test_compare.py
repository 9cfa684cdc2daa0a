"""compare() (#4): the baseline and the accelerated run trained for real, one after the
other; the projection checked against the measurement; the comparison view."""

from __future__ import annotations

import pytest

import nbaccel
from nbaccel.ui import ComparisonPanel
from tests.conftest import SMALL, wait_for


def test_compare_measures_the_baseline_and_checks_the_projection(digits_high):
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
    assert base.config.stop == "none" and base.savings is None  # no calibration
    assert fast.config.freeze == "all" and len(base.history) == len(fast.history) == 3
    # The projection the accelerated run made before training, against the real thing.
    assert cmp.projected_baseline_s == fast.savings.baseline_s
    assert cmp.measured_baseline_s == base.events[-1].elapsed_s
    assert 0.75 <= cmp.projection_error <= 1.33, cmp.summary()
    assert cmp.speedup == pytest.approx(cmp.measured_baseline_s / cmp.accelerated_s)
    assert cmp.speedup > 1, cmp.summary()
    assert cmp.target == min(base.best["val_acc"], fast.best["val_acc"])
    reached = cmp.time_to_target
    assert 0 < reached["baseline"] <= cmp.measured_baseline_s
    assert 0 < reached["accelerated"] <= cmp.accelerated_s

    traces = {t.name: t for t in panel.chart.widget.data}
    assert list(traces["baseline"].y) == [row["val_acc"] for row in base.history]
    assert list(traces["accelerated"].x) == [row["elapsed_s"] for row in fast.history]
    assert list(traces["target"].y) == [cmp.target, cmp.target]
    assert "projection error" in panel.summary.value
    assert f"{cmp.speedup:.2f}x" in panel.summary.value


def test_a_given_target_and_one_never_reached(digits_high):
    cmp = nbaccel.compare(
        digits_high, target=1.01, epochs=1, background=False, **SMALL, pretrained=False
    )
    assert cmp.target == 1.01
    assert cmp.time_to_target == {"baseline": None, "accelerated": None}


def test_stopping_a_comparison_never_starts_the_baseline(digits_high):
    cmp = nbaccel.compare(
        digits_high, epochs=500, stop="none", **SMALL, pretrained=False
    )
    wait_for(lambda: len(cmp.accelerated.history) >= 1)
    cmp.stop()
    cmp.wait(timeout=60)
    assert cmp.status == "stopped" and cmp.accelerated.status == "stopped"
    assert cmp.baseline.status == "pending" and cmp.speedup is None


def test_bad_choices_are_refused_before_anything_trains(digits_high):
    with pytest.raises(ValueError, match="precision must be one of"):
        nbaccel.compare(digits_high, precision="fp8", **SMALL)
