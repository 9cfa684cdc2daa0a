"""The run's history on disk (#13): history.csv and TensorBoard scalars, next to the
checkpoints or in the log_dir given, equal to run.history, with nothing left open."""

from __future__ import annotations

import csv
import logging
import os
import shutil
import threading
from pathlib import Path

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import nbaccel
from nbaccel.core import checkpoint, events, history_log
from nbaccel.core.history_log import STEP_TAG, HistoryLog

TINY = dict(
    backbone="test_resnet",
    pretrained=False,
    image_size=32,
    precision="fp32",
    baseline="off",
    stop="none",
    epochs=2,
    background=False,
)
CONFIG = {k: v for k, v in TINY.items() if k != "background"}
NUMBERS = ("train_loss", "val_loss", "val_acc", "images_per_s", "epoch_s", "elapsed_s")


@pytest.fixture(scope="module")
def tiny_split(digits_high: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes: 40 training, 10 validation and 10 test images each (a second or so)."""
    root = tmp_path_factory.mktemp("tiny-split")
    for label in ("5", "6", "7"):
        train = sorted((digits_high / "train" / label).iterdir())[:40]
        val = sorted((digits_high / "val" / label).iterdir())[:20]
        for split, files in (("train", train), ("val", val[:10]), ("test", val[10:])):
            (root / split / label).mkdir(parents=True)
            for source in files:
                shutil.copy(source, root / split / label / source.name)
    return root


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard shows for `folder`: tag -> [(step, value)]."""
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def open_files_under(folder: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


def assert_is_the_history(folder: Path, history: list[dict]) -> None:
    """history.csv and the TensorBoard scalars in `folder` hold run.history, once."""
    table = pd.read_csv(folder / "history.csv")
    assert list(table["epoch"]) == [row["epoch"] for row in history]
    for name in NUMBERS:
        assert list(table[name]) == pytest.approx([row[name] for row in history])
    with open(folder / "history.csv", newline="") as file:  # exactly, as written
        rows = list(csv.DictReader(file))
    assert [float(r["val_loss"]) for r in rows] == [r["val_loss"] for r in history]
    scalars = read_scalars(folder)
    for name in NUMBERS:  # float32 in the event file
        steps = [row["epoch"] for row in history]
        assert [step for step, _ in scalars[name]] == steps, name
        expected = [row[name] for row in history]
        assert [v for _, v in scalars[name]] == pytest.approx(expected, rel=1e-6)


def test_the_history_goes_next_to_the_checkpoints_as_csv_and_tensorboard(
    tiny_split, tmp_path
):
    """(#13) Default: history.csv and TensorBoard's scalars in the run directory, equal
    to run.history, the test score in the best epoch's row; afterwards no thread is
    left and no file open; nbaccel.runs() and load_run() read the directory as before."""
    threads = set(threading.enumerate())
    run = nbaccel.fasttrain(tiny_split, checkpoint_dir=tmp_path, **TINY)
    assert run.log_dir is not None and run.log_dir.parent == tmp_path
    assert (run.log_dir / "checkpoint.json").is_file()  # the run directory
    assert_is_the_history(run.log_dir, run.history)
    table = pd.read_csv(run.log_dir / "history.csv")
    best = run.best["epoch"]
    assert list(table.columns)[-2:] == ["test_loss", "test_acc"]
    tested = table[table["epoch"] == best].iloc[0]
    assert tested["test_acc"] == pytest.approx(run.test.test_acc)
    assert table[table["epoch"] != best]["test_acc"].isna().all()
    scalars = read_scalars(run.log_dir)
    assert scalars["test_acc"] == [(best, pytest.approx(run.test.test_acc))]
    steps = [step for step, _ in scalars[STEP_TAG]]  # the running loss, by global step
    assert steps == sorted(steps) and len(steps) >= 2
    assert set(threading.enumerate()) == threads  # the event writer's thread joined
    assert open_files_under(run.log_dir) == []
    (listed,) = nbaccel.runs(tmp_path)
    assert listed.epochs == 2 and listed.status == "finished"
    loaded = nbaccel.load_run(listed.path)
    assert loaded.log_dir == run.log_dir and loaded.history == run.history


def test_a_chosen_log_dir_takes_the_history_and_a_failed_run_closes_it(
    tiny_split, tmp_path, monkeypatch
):
    """(#13) log_dir= is where the history goes, with or without checkpoints (with
    neither, nowhere). A run that fails after an epoch keeps that epoch there, its
    writer closed: its thread gone, no file left open. A folder that cannot be written
    is refused before training."""

    def fail(self, epoch, *args):
        raise ValueError("injected after the epoch's events")

    monkeypatch.setattr(checkpoint.Checkpointer, "save", fail)
    folder = tmp_path / "logs" / "first"
    threads = set(threading.enumerate())
    options = dict(TINY, background=True)
    run = nbaccel.fasttrain(
        tiny_split, checkpoint_dir=tmp_path / "runs", log_dir=str(folder), **options
    )
    with pytest.raises(nbaccel.TrainingFailed, match="injected"):
        run.wait(timeout=120)
    assert run.log_dir == folder and len(run.history) == 1
    assert_is_the_history(folder, run.history)
    assert not list((tmp_path / "runs").rglob("history.csv"))  # not the run directory
    assert set(threading.enumerate()) == threads
    assert open_files_under(folder) == []

    def planned(**options):
        config = nbaccel.TrainConfig(tiny_split, checkpoint=False, **CONFIG, **options)
        return nbaccel.core.prepare_run(config).log_dir

    assert planned(log_dir=str(folder)) == folder and planned() is None
    (tmp_path / "a file").write_text("not a folder")
    with pytest.raises(ValueError, match="cannot write the run's history"):
        planned(log_dir=str(tmp_path / "a file"))
    with pytest.raises(ValueError, match="log_dir must be None"):
        nbaccel.TrainConfig(tiny_split, log_dir=3)


def row(epoch: int, val_loss: float) -> events.EpochEnded:
    return events.EpochEnded(epoch, 1.0, val_loss, 0.5, 100.0, 1.0, epoch * 1.0, True)


def test_replayed_epochs_are_written_once_and_a_failed_write_is_logged_once(
    tmp_path, caplog, monkeypatch
):
    """(#13) A resumed run's replayed epochs rewrite the CSV, never add to it; without
    tensorboard only the CSV is written; a write that fails is logged once and the
    events go on."""
    history: list[dict] = []
    log = HistoryLog(tmp_path, lambda: [dict(r) for r in history])
    (tmp_path / "history.csv").write_text("epoch\n1\n2\n3\n")  # a dead session's
    (tmp_path / ".history.csv.1.tmp").write_text("cut")  # and its killed write
    for epoch in (1, 2):  # replayed: the history already holds both
        history.append(row(epoch, 0.5).as_row())
    for epoch in (1, 2):
        log(row(epoch, 0.5))
    history.append(row(3, 0.25).as_row())
    log(events.Progress(3, 1, 3, 0.3, 100.0, 3.0))
    log(row(3, 0.25))
    log(
        events.RunEnded(
            "finished", "epochs", 3, 3.0, test=events.TestScore(3, 30, 0.2, 0.9)
        )
    )
    assert list(pd.read_csv(tmp_path / "history.csv")["epoch"]) == [1, 2, 3]
    assert not list(tmp_path.glob(".history.csv.*.tmp"))
    assert read_scalars(tmp_path)["val_loss"] == [(1, 0.5), (2, 0.5), (3, 0.25)]

    bare = tmp_path / "bare"
    log = HistoryLog(bare, lambda: [dict(r) for r in history])
    caplog.set_level(logging.WARNING, logger="nbaccel.core.history_log")
    with monkeypatch.context() as patch:
        patch.setattr(history_log, "tensorboard_available", lambda: False)
        log(row(3, 0.25))
    assert sorted(p.name for p in bare.iterdir()) == ["history.csv"]
    assert not caplog.records

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder should be")
    log = HistoryLog(blocked, lambda: [dict(r) for r in history])
    for epoch in (1, 2):
        log(row(epoch, 0.5))
    log(events.RunEnded("finished", "epochs", 2, 2.0))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages  # one each, not one per event
    assert "(csv)" in messages[0] and "(tensorboard)" in messages[1]
