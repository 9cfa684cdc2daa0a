"""Class imbalance (#13): balance="auto" weights the training loss by class past a
measured ratio, says so, and raises the minority classes' recall on real scans."""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest

import nbaccel
from nbaccel.core.balance import IMBALANCE_RATIO, decide_balance
from nbaccel.core.config import list_options
from nbaccel.core.events import EpochEnded, RunStarted
from nbaccel.core.resume import saved_option
from nbaccel.ui import panel_for
from tests.conftest import SMALL

NAMES = ("5", "6", "7")


def test_weights_give_each_class_the_same_total_and_keep_the_loss_scale():
    labels = np.repeat([0, 1, 2], [100, 10, 30])
    decision, weights = decide_balance("auto", labels, NAMES)
    assert decision.value == "class-weighted loss"
    assert "'5' has 100 training images, '6' 10: 10.0x" in decision.why
    counts = np.bincount(labels)
    totals = counts * np.array(weights)
    assert np.allclose(totals, totals[0])  # every class weighs the same in all
    assert np.isclose(totals.sum(), len(labels))  # an image's mean weight is 1
    assert decide_balance("off", labels, NAMES) == (
        decide_balance("off", labels, NAMES)[0],
        None,
    )


@pytest.mark.parametrize(
    "requested, ratio, weighted",
    [
        ("auto", IMBALANCE_RATIO, False),  # at the ratio: left alone
        ("auto", IMBALANCE_RATIO + 1, True),
        ("weights", 1.0, True),  # asked for: weighted even when balanced
        ("off", 10.0, False),
    ],
)
def test_when_the_loss_is_weighted(requested, ratio, weighted):
    labels = np.repeat([0, 1, 2], [int(20 * ratio), 20, 20])
    decision, weights = decide_balance(requested, labels, NAMES)
    assert (weights is not None) is weighted
    assert bool(decision.value) is weighted
    assert f"{ratio:.1f}x" in decision.why


def test_a_class_without_training_images_gets_no_weight():
    decision, weights = decide_balance("weights", np.repeat([0, 2], [30, 10]), NAMES)
    assert weights[1] == 0.0 and weights[0] > 0 and weights[2] > weights[0]


def test_a_bad_choice_is_refused(digits_high):
    with pytest.raises(ValueError, match="balance must be one of auto, weights, off"):
        nbaccel.fasttrain(digits_high, balance="yes", **SMALL)


@pytest.fixture(scope="module")
def imbalanced(digits_high: Path, tmp_path_factory) -> Path:
    """Digits 5-9 with class 5's training images all kept and each other class's cut to a
    tenth (146 against 13 or 14 each); validation whole (36 per class)."""
    root = tmp_path_factory.mktemp("imbalanced")
    shutil.copytree(digits_high / "val", root / "val")
    for folder in sorted((digits_high / "train").iterdir()):
        files = sorted(folder.iterdir())
        keep = files if folder.name == "5" else files[: len(files) // 10]
        (root / "train" / folder.name).mkdir(parents=True)
        for file in keep:
            shutil.copy(file, root / "train" / folder.name / file.name)
    return root


def minority_recall(run: nbaccel.Run) -> float:
    """The best epoch's recall, averaged over the four cut classes."""
    best = next(
        e
        for e in run.events
        if isinstance(e, EpochEnded) and e.epoch == run.best["epoch"]
    )
    recall = dict(zip(run.class_names, best.class_recall))
    return statistics.mean(v for k, v in recall.items() if k != "5")


def test_auto_weights_a_10x_imbalance_and_lifts_the_minority_recall(
    imbalanced, source_weights
):
    runs = {
        balance: nbaccel.fasttrain(
            imbalanced,
            pretrained=source_weights,
            balance=balance,
            epochs=6,
            stop="none",
            baseline="off",
            checkpoint=False,
            background=False,
            **SMALL,
        )
        for balance in ("auto", "off")
    }
    started = next(e for e in runs["auto"].events if isinstance(e, RunStarted))
    assert started.balance.startswith("balance: class-weighted loss (")
    assert "'5' has 146 training images" in started.balance, started.balance
    off = next(e for e in runs["off"].events if isinstance(e, RunStarted))
    assert off.balance.startswith("balance: off (balance='off'")
    weighted, plain = (minority_recall(runs[b]) for b in ("auto", "off"))
    assert weighted >= plain + 0.05, (weighted, plain)
    # The panel says so, with the best epoch's lowest recall.
    status = panel_for(runs["auto"], charts="off").status.value
    assert "balance: class-weighted loss" in status and "lowest recall" in status


def test_a_run_saved_before_balance_existed_goes_on_unweighted():
    """Resuming (or reading back) a checkpoint from before the option: its run weighted
    nothing, so "auto" must not start weighting its loss mid-run."""
    (spec,) = [s for s in list_options() if s.name == "balance"]
    assert saved_option({}, spec) == "off"
    assert saved_option({"balance": "weights"}, spec) == "weights"
    (epochs,) = [s for s in list_options() if s.name == "epochs"]
    assert saved_option({}, epochs) == epochs.default
