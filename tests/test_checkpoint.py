"""Checkpoints and resume (#14): a run killed by SIGKILL goes on to the weights of a run
never interrupted; a damaged or hostile checkpoint is never loaded; a full disk costs a
checkpoint, not the run; a saved run can be looked at after its process has gone."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from IPython.testing import globalipapp
from torch.utils.tensorboard import SummaryWriter

import nbaccel
from nbaccel.core import checkpoint
from nbaccel.core.checkpoint import read_checkpoint, write_atomic
from nbaccel.ui import Panel
from tests.test_history_log import assert_is_the_history

ROOT = Path(__file__).resolve().parents[1]
# 3 classes, 40 training and 10 validation images each: 3 steps an epoch, a second or so.
# On a CPU: a resumed run ends with the weights of an uninterrupted one exactly there; a
# GPU's kernels are not deterministic by default (on the H100 two runs of one seed differed
# from the 4th decimal).
TINY = dict(
    backbone="test_resnet",
    pretrained=False,
    image_size=32,
    precision="fp32",
    device="cpu",
)
EPOCHS = 4

KILLED_AFTER_EPOCH_2 = (
    textwrap.dedent(
        """
    import os, signal, sys
    import nbaccel
    from nbaccel.core import checkpoint

    save = checkpoint.Checkpointer.save

    def save_then_die(self, epoch, *args):
        save(self, epoch, *args)
        if epoch == 2:  # the kernel dies right after the second checkpoint
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.Checkpointer.save = save_then_die
    nbaccel.fasttrain(
        sys.argv[1], checkpoint_dir=sys.argv[2], epochs=EPOCHS, stop="none",
        background=False, **TINY
    )
    """
    )
    .replace("EPOCHS", str(EPOCHS))
    .replace("TINY", repr(TINY))
)


@pytest.fixture(scope="module")
def tiny_folder(digits_high: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-digits")
    for split, count in (("train", 40), ("val", 10)):
        for label in ("5", "6", "7"):
            (root / split / label).mkdir(parents=True)
            for source in sorted((digits_high / split / label).iterdir())[:count]:
                shutil.copy(source, root / split / label / source.name)
    return root


@pytest.fixture(scope="module")
def killed_run(tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of a run whose process was SIGKILLed after epoch 2's checkpoint."""
    root = tmp_path_factory.mktemp("killed")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_EPOCH_2, str(tiny_folder), str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    (directory,) = [p for p in root.iterdir() if p.is_dir()]
    return directory


@pytest.fixture
def saved(killed_run: Path, tmp_path: Path) -> Path:
    """A copy of the killed run's directory, for a test to resume or damage."""
    return Path(shutil.copytree(killed_run, tmp_path / killed_run.name))


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(
    saved, killed_run, tiny_folder
):
    """(#14) SIGKILL after epoch 2's checkpoint; `%fasttrain --resume` goes on at epoch
    3 with the same history and ends with the weights of a run never interrupted."""
    whole = nbaccel.fasttrain(
        tiny_folder,
        epochs=EPOCHS,
        stop="none",
        checkpoint=False,
        background=False,
        **TINY,
    )
    # (#13) The killed session's history: a CSV and TensorBoard file with an epoch
    # published before its checkpoint was committed (as if killed while writing it).
    (saved / "history.csv").write_text("epoch,val_acc\n1,0.5\n2,0.5\n3,0.5\n")
    with SummaryWriter(str(saved)) as writer:
        for epoch in (1, 2, 3):
            writer.add_scalar("val_acc", -1.0, epoch)
    shell = globalipapp.get_ipython()
    shell.run_line_magic("load_ext", "nbaccel")
    try:  # only the data and --resume: every other choice comes from the checkpoint
        resumed = shell.run_line_magic(
            "fasttrain", f"{tiny_folder} --resume {saved} --wait --charts off"
        )
    finally:
        shell.run_line_magic("unload_ext", "nbaccel")
    assert resumed.status == "finished" and resumed.reason == "epochs"
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3, 4]
    for mine, theirs in zip(resumed.history, whole.history):
        for key in ("train_loss", "val_loss", "val_acc"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), key
    # epochs 1-2 are the killed process's, published again; the clock went on from them
    assert resumed.history[:2] == read_checkpoint(killed_run).meta["history"]
    assert resumed.history[2]["elapsed_s"] > resumed.history[1]["elapsed_s"]
    notes = [e.note for e in resumed.events if getattr(e, "note", None)]
    assert any(n.startswith("resumed after epoch 2") for n in notes)
    expected = whole.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-5)
    assert resumed.config.backbone == "test_resnet" and resumed.savings.final
    assert read_checkpoint(saved).epoch == EPOCHS  # it went on in the same directory
    # (#13) its history on disk: each epoch once, in the CSV and in TensorBoard
    assert resumed.log_dir == saved
    assert_is_the_history(saved, resumed.history)
    assert len(list(saved.glob("state-*.pt"))) <= 2  # the last and the one before


def test_load_run_after_the_training_process_has_exited(saved, tiny_folder, tmp_path):
    """(#14) nbaccel.runs() lists the killed run; load_run gives its history, panel,
    predictions and saved model, without training."""
    (listed,) = nbaccel.runs(saved.parent)
    assert (listed.path, listed.epochs, listed.status) == (
        str(saved),
        2,
        "interrupted",
    )
    assert listed.backbone == "test_resnet" and listed.data == str(tiny_folder)
    run = nbaccel.load_run(saved)
    assert (run.status, run.reason) == ("stopped", "interrupted")
    assert run.log_dir == saved  # its history.csv (#13)
    assert [row["epoch"] for row in run.history] == [1, 2]
    assert run.best["val_acc"] == listed.best_val_acc
    assert run.savings is not None and run.savings.final
    labels, probabilities = run.predict(tiny_folder / "val" / "6")
    assert set(labels) <= {"5", "6", "7"} and probabilities.shape == (10, 3)
    loaded = nbaccel.load(run.save(tmp_path / "model.pth"))
    assert loaded.class_names == ("5", "6", "7")
    panel = Panel(run, charts="off")
    assert "interrupted" in panel.status.value and "best epoch" in panel.status.value


def test_a_damaged_checkpoint_is_never_loaded(saved):
    """(#14) A temporary file left by a write cut short is ignored; a committed file cut
    short falls back to the checkpoint before it; with both cut, a clear error."""
    (saved / ".state-e0003.pt.999.tmp").write_bytes(b"half a checkpoint")
    assert read_checkpoint(saved).epoch == 2
    newest = read_checkpoint(saved).meta["files"]["state"]["name"]
    path = saved / newest
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert read_checkpoint(saved).epoch == 1  # checkpoint.prev.json
    older = json.loads((saved / "checkpoint.prev.json").read_text())["files"]["state"]
    (saved / older["name"]).write_bytes(b"")
    with pytest.raises(
        ValueError, match="no intact checkpoint .* incomplete or damaged"
    ):
        read_checkpoint(saved)


def test_an_interrupted_write_leaves_the_file_as_it_was(tmp_path):
    target = tmp_path / "checkpoint.json"
    target.write_text("the good one")

    def half_then_fail(file):
        file.write(b"{half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        write_atomic(target, half_then_fail)
    assert target.read_text() == "the good one"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.json"]


def test_a_malicious_pickle_in_a_checkpoint_is_refused_without_running_it(
    saved, tiny_folder, tmp_path
):
    """(#14) weights_only=True: a file whose hash matches but which holds an object that
    would run code when unpickled is refused, and the code never runs."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    meta = json.loads((saved / "checkpoint.json").read_text())
    state = saved / meta["files"]["state"]["name"]
    torch.save({"model": Payload()}, state)
    meta["files"]["state"] = checkpoint._file_entry(state)  # a consistent, hostile file
    (saved / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="refused to load .* could run code"):
        nbaccel.fasttrain(tiny_folder, resume=saved, **TINY)
    assert not marker.exists()


def test_a_full_disk_keeps_the_last_good_checkpoint_and_notes_it(
    tiny_folder, tmp_path, monkeypatch
):
    """(#14) From epoch 2 every write fails half-way (the disk is full): the run trains
    on, each failure is a note, and epoch 1's checkpoint stays whole and loadable."""
    real = checkpoint._save_tensors

    def disk_full(path, tensors):
        if "e0001" in path.name:
            return real(path, tensors)

        def half(file):
            file.write(b"x" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")

        write_atomic(path, half)

    monkeypatch.setattr(checkpoint, "_save_tensors", disk_full)
    run = nbaccel.fasttrain(
        tiny_folder,
        epochs=3,
        stop="none",
        checkpoint_dir=tmp_path,
        background=False,
        **TINY,
    )
    assert run.status == "finished" and len(run.history) == 3
    notes = [e.note for e in run.events if getattr(e, "note", None)]
    assert len(notes) == 2 and all("No space left on device" in n for n in notes)
    assert "the one after epoch 1 is kept" in notes[0]
    (directory,) = tmp_path.iterdir()
    kept = read_checkpoint(directory)
    assert kept.epoch == 1 and kept.meta["ended"]["status"] == "finished"
    assert kept.load_state()["model"].keys() == run.model.state_dict().keys()
    assert not list(directory.glob(".*.tmp"))


def test_an_unusable_checkpoint_dir_is_refused_before_training(
    tiny_folder, tmp_path, monkeypatch
):
    threads = threading.active_count()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(
        ValueError, match="cannot write checkpoints to .*checkpoint=False"
    ):
        nbaccel.fasttrain(tiny_folder, checkpoint_dir=blocker / "runs", **TINY)
    Usage = type(shutil.disk_usage(tmp_path))
    monkeypatch.setattr(shutil, "disk_usage", lambda _: Usage(10**9, 10**9, 10**5))
    with pytest.raises(ValueError, match="has 0 MiB free; this run's checkpoints need"):
        nbaccel.fasttrain(tiny_folder, checkpoint_dir=tmp_path / "runs", **TINY)
    assert threading.active_count() == threads  # nothing started


def test_resume_refuses_other_choices_and_other_data(saved, tiny_folder, digits_high):
    """(#14) Options that change the result, another backbone or another class list are
    refused, naming the difference; epochs and stop may change."""
    with pytest.raises(
        ValueError,
        match="backbone was 'test_resnet', now 'resnet10t'; lr was 'auto', now 0.5",
    ):
        nbaccel.fasttrain(tiny_folder, resume=saved, lr=0.5, backbone="resnet10t")
    with pytest.raises(
        ValueError, match=r"classes were \['5', '6', '7'\].*new \['8', '9'\]"
    ):
        nbaccel.fasttrain(digits_high, resume=saved, **TINY)
    with pytest.raises(ValueError, match="trained 2 epochs, its whole budget of 2"):
        nbaccel.fasttrain(tiny_folder, resume=saved, epochs=2, **TINY)
    with pytest.raises(ValueError, match="already meets its stopping rule 'epochs:2'"):
        nbaccel.fasttrain(tiny_folder, resume=saved, stop="epochs:2", **TINY)
    config = nbaccel.TrainConfig(
        data=tiny_folder,
        backbone="test_resnet",
        resume=True,
        checkpoint_dir=saved.parent,
    )
    run = nbaccel.core.prepare_run(config)  # resume=True: the latest run, not started
    assert run._plan.resumed.checkpoint.directory == saved
    assert run.history == read_checkpoint(saved).meta["history"]


def test_a_run_on_cached_features_resumes_exactly(tiny_folder, tmp_path):
    """(#14) The frozen-feature cache is refilled from the checkpoint's weights: a head-only
    run stopped after epoch 1 and resumed ends as one never stopped."""
    head_only = dict(TINY, freeze="all", epochs=2)
    whole = nbaccel.fasttrain(
        tiny_folder, stop="none", checkpoint=False, background=False, **head_only
    )
    assert "feature cache: on" in " ".join(whole.events[0].speedups)
    nbaccel.fasttrain(
        tiny_folder,
        stop="epochs:1",
        checkpoint_dir=tmp_path,
        background=False,
        **head_only,
    )
    (path,) = tmp_path.iterdir()
    resumed = nbaccel.fasttrain(
        tiny_folder, resume=path, stop="none", background=False, **TINY
    )
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    assert resumed.history[1]["val_loss"] == pytest.approx(
        whole.history[1]["val_loss"], rel=1e-5
    )
    expected = whole.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-5)


def test_the_cache_keeps_the_newest_runs_and_a_chosen_directory_keeps_all(
    tiny_folder, tmp_path, monkeypatch
):
    def fake_runs(root: Path, count: int) -> list[Path]:
        made = []
        for i in range(count):
            (root / f"old-{i:02d}").mkdir(parents=True)
            (root / f"old-{i:02d}" / "checkpoint.json").write_text("{}")
            os.utime(root / f"old-{i:02d}" / "checkpoint.json", (1e9 + i, 1e9 + i))
            made.append(root / f"old-{i:02d}")
        return made

    monkeypatch.setenv("NBACCEL_CACHE", str(tmp_path / "cache"))
    cache = checkpoint.default_checkpoint_dir()
    old = fake_runs(cache, 12)
    (cache / "notes").mkdir()  # not a run directory: never touched
    run = nbaccel.fasttrain(tiny_folder, epochs=1, background=False, **TINY)
    kept = sorted(p for p in cache.iterdir() if (p / "checkpoint.json").is_file())
    assert len(kept) == checkpoint.KEEP_RUNS
    assert set(old[-(checkpoint.KEEP_RUNS - 1) :]) < set(kept)  # the newest old ones
    assert run.status == "finished" and (cache / "notes").is_dir()
    mine = fake_runs(tmp_path / "mine", 12)
    nbaccel.fasttrain(
        tiny_folder,
        epochs=1,
        background=False,
        checkpoint_dir=tmp_path / "mine",
        **TINY,
    )
    assert all(p.is_dir() for p in mine)


def test_an_option_given_on_resume_counts_even_at_its_default(saved, tiny_folder):
    """(#14) stop="patience:3" is the default; given on resume, it replaces the saved
    run's "none" (fasttrain and the magic pass the names they were given)."""
    from nbaccel.core.start import prepare_run

    config = nbaccel.TrainConfig(data=tiny_folder, resume=saved, stop="patience:3")
    given = prepare_run(config, given={"resume", "stop"})
    assert given.config.stop_rule.text == "patience:3"
    assert given.config.epochs == EPOCHS and given.config.backbone == "test_resnet"
    left_out = prepare_run(nbaccel.TrainConfig(data=tiny_folder, resume=saved))
    assert left_out.config.stop_rule.text == "none"  # as the saved run had it
