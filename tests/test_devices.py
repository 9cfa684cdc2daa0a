"""devices=N (#15): data-parallel processes on torch.distributed (gloo on this CPU), started
from the notebook's process, their events shown as a one-device run's are, none of them left
behind."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

import nbaccel
from nbaccel.core import ranks
from nbaccel.core.events import EpochEnded, Progress, RunEnded, RunStarted
from nbaccel.ui import panel_for
from tests.conftest import SMALL, wait_for
from tests.test_history_log import assert_is_the_history

# Two processes sharing the CPU's cores: on a CUDA machine "auto" would pick its GPU(s).
TWO = dict(SMALL, pretrained=False, devices=2, checkpoint=False, device="cpu")


# multiprocessing's own helpers, one per process for its whole life (spawn's semaphore
# tracker, DataLoader workers' fork server): not a run's processes.
HELPERS = (b"resource_tracker", b"forkserver")


def children() -> set[int]:
    """This process's child processes, by PID (zombies included: not yet reaped)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            helper = any(name in command for name in HELPERS)
            if int(fields[1]) == os.getpid() and not helper:
                found.add(int(entry.name))
    return found


@pytest.fixture
def no_process_left():
    """Fails a test that leaves a child process behind (ranks, queue feeders)."""
    before = children()
    yield
    wait_for(lambda: children() <= before, timeout=10)


@pytest.fixture(scope="module")
def two_classes(cache: Path) -> Path:
    return nbaccel.datasets.digits(range(2), root=cache)


def test_two_processes_train_the_whole_data_and_return_the_best_weights(
    digits_high, no_process_left, tmp_path
):
    # bn_stats=False: each rank's BatchNorm statistics are its last batch's until rank 0's
    # are shared before evaluating (ranks.share_buffers).
    run = nbaccel.fasttrain(
        digits_high,
        epochs=2,
        stop="none",
        bn_stats=False,
        log_dir=str(tmp_path),
        background=False,
        **TWO,
    )
    started = run.events[0]
    assert isinstance(started, RunStarted) and started.devices == 2
    assert "devices: 2 (2 processes sharing" in " ".join(started.speedups)
    # Each rank steps through half of every epoch, at batch_size images a step.
    half = -(-started.train_images // 2)
    assert started.steps_per_epoch == half // started.batch_size
    assert [row["epoch"] for row in run.history] == [1, 2]
    assert run.status == "finished" and run.reason == "epochs"
    # The validation figures are totalled over both ranks' halves: the kernel's model
    # (rank 0's best weights) scores the same on every validation image.
    images = sorted((digits_high / "val").rglob("*.png"))
    labels, _ = run.predict(images)
    accuracy = np.mean(
        [label == path.parent.name for label, path in zip(labels, images)]
    )
    assert accuracy == pytest.approx(run.best["val_acc"], abs=1 / len(images))
    # The baseline is one device; what the two processes gain is a cause of its own.
    causes = {name: how for name, _, how in run.savings.by_cause}
    assert "on one device" in causes["devices"]
    # Rank 0's events reach the kernel's publisher, which writes the history (#13).
    assert_is_the_history(tmp_path, run.history)


def test_after_one_step_both_ranks_hold_the_same_weights(two_classes, no_process_left):
    # Two classes at a batch of 64: one step per rank, then the ranks compare weights
    # (launch.check_same_weights), and a run whose ranks differ fails.
    run = nbaccel.fasttrain(
        two_classes, epochs=1, batch_size=128, background=False, **TWO
    )
    assert run.events[0].steps_per_epoch == 1 and run.status == "finished"


def test_ranks_that_drift_apart_fail_the_run(two_classes, monkeypatch, no_process_left):
    # Without DistributedDataParallel (forked processes inherit the patch) each rank
    # trains on its own half: the weights differ after one step, and the run says so.
    monkeypatch.setattr(ranks.ProcessGroupRanks, "wrap", lambda self, model: model)
    with pytest.raises(nbaccel.TrainingFailed, match="ended with different weights"):
        nbaccel.fasttrain(
            two_classes, epochs=1, batch_size=128, background=False, **TWO
        )


def test_a_background_run_feeds_a_panel_and_stops_mid_epoch(
    digits_folder, no_process_left
):
    run = nbaccel.fasttrain(digits_folder, epochs=50, batch_size=8, stop="none", **TWO)
    panel = panel_for(run, charts="off")
    wait_for(lambda: any(isinstance(e, EpochEnded) for e in run.events), timeout=120)
    wait_for(lambda: isinstance(run.events[-1], Progress) and run.events[-1].step > 0)
    assert run.status == "running" and len(children()) >= 2
    run.stop()
    assert run.status == "stopped" and run.reason == "user"
    last = [e for e in run.events if isinstance(e, Progress)][-1]
    assert last.epoch == 2 and 0 < last.step < last.steps_per_epoch  # mid-epoch
    wait_for(lambda: "stopped</b> (user)" in panel.status.value)
    assert "on cpu and 1 more (2 processes)" in panel.status.value
    kinds = [type(e).__name__ for e in run.events]
    assert kinds[0] == "RunStarted" and kinds[-1] == "RunEnded"
    assert {"Progress", "EpochEnded", "SavingsUpdated"} <= set(kinds)
    assert run.model is not None and len(run.history) == 1


class FailsOnRank1(Dataset):
    """Digits that raise on the second process: a bug in a user's dataset on one rank."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.targets = images, labels

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        if dist.is_initialized() and dist.get_rank() == 1:
            raise RuntimeError(f"image {index} is unreadable on rank 1 (injected)")
        return self.images[index], int(self.targets[index])


def test_a_failure_on_rank_1_fails_the_run_with_its_traceback(no_process_left):
    images, labels = nbaccel.datasets.digits(range(3), as_arrays=True)
    run = nbaccel.fasttrain(FailsOnRank1(images, labels), epochs=2, **TWO)
    with pytest.raises(nbaccel.TrainingFailed) as failed:
        run.wait(timeout=120)
    assert run.status == "failed" and run.reason.startswith("rank 1: RuntimeError")
    assert "unreadable on rank 1 (injected)" in failed.value.traceback
    assert "__getitem__" in failed.value.traceback  # rank 1's own frames
    assert isinstance(run.events[-1], RunEnded) and run.model is None


def test_spawned_processes_train_as_forked_ones_do(
    digits_high, monkeypatch, no_process_left
):
    # spawn is what a kernel that already uses CUDA gets: the plan is pickled over.
    monkeypatch.setattr("nbaccel.core.run.start_method", lambda: "spawn")
    run = nbaccel.fasttrain(digits_high, epochs=1, background=False, **TWO)
    assert run.status == "finished" and run.best["val_acc"] > 0.5


class DefinedInTheNotebook(FailsOnRank1):
    pass


def test_spawn_refuses_a_dataset_class_it_cannot_send(monkeypatch, no_process_left):
    DefinedInTheNotebook.__module__ = "__main__"  # as a class from a notebook cell is
    monkeypatch.setattr("nbaccel.core.run.start_method", lambda: "spawn")
    images, labels = nbaccel.datasets.digits(range(3), as_arrays=True)
    with pytest.raises(ValueError, match="Move the Dataset class into a .py file"):
        nbaccel.fasttrain(DefinedInTheNotebook(images, labels), epochs=1, **TWO)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(devices=0), "devices must be a whole number >= 1 or 'all', got 0"),
        (dict(devices=64), "devices=64 on a CPU with"),
        (dict(devices=2, compile=True), "compile=True with devices=2 is not supported"),
        (dict(devices=2, cache=True), "cache=True with devices=2: each process would"),
        (dict(devices=2, device="cuda"), "this machine has no CUDA GPU"),
    ],
)
def test_impossible_device_counts_are_refused_before_anything_starts(
    digits_high, options, message
):
    if options.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match=message):
        nbaccel.fasttrain(digits_high, **dict(TWO, **options))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_all_devices_without_a_gpu_is_the_training_thread(digits_high):
    run = nbaccel.fasttrain(
        digits_high,
        epochs=1,
        background=False,
        **dict(TWO, devices="all", device="auto"),
    )
    assert run.events[0].devices == 1
    assert "devices: 1 (all: no CUDA GPU here, so one cpu)" in run.events[0].speedups


def test_no_rank_outlives_a_kernel_that_dies(digits_high, tmp_path):
    script = f"""
import multiprocessing, os, sys, nbaccel
run = nbaccel.fasttrain({str(digits_high)!r}, backbone="test_resnet", image_size=32,
                        pretrained=False, epochs=100, stop="none", devices=2,
                        checkpoint=False, device="cpu")
while len(multiprocessing.active_children()) < 2 or not run.history:
    import time; time.sleep(0.05)
print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
os._exit(0)  # as a killed kernel goes: no clean-up of any kind
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    pids = [int(pid) for pid in done.stdout.split()]
    assert len(pids) >= 2, done.stderr

    def gone(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        return state == "Z"  # killed, waiting for init to reap it

    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in pids):
        assert time.monotonic() < deadline, f"ranks {pids} outlived their parent"
        time.sleep(0.05)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_all_gpus_train_one_process_each(digits_high, no_process_left):
    run = nbaccel.fasttrain(
        digits_high,
        backbone="resnet18",
        pretrained=False,
        image_size=64,
        epochs=2,
        devices="all",
        background=False,
        checkpoint=False,
    )
    assert run.events[0].devices == torch.cuda.device_count()
    assert run.status == "finished" and run.best["val_acc"] > 0.8
    labels, _ = run.predict(sorted((digits_high / "val").rglob("*.png"))[:50])
    assert len(labels) == 50


def test_the_magic_takes_devices_and_unloading_ends_every_process(
    shell, digits_high, no_process_left
):
    shell.run_line_magic("load_ext", "nbaccel")
    try:
        run = shell.run_line_magic(
            "fasttrain",
            f"{digits_high} --backbone test_resnet --pretrained no --image-size 32 "
            "--epochs 500 --stop none --devices 2 --device cpu --checkpoint no --charts off",
        )
        wait_for(lambda: len(run.history) >= 1, timeout=120)
        assert run.events[0].devices == 2 and len(children()) >= 2
    finally:
        shell.run_line_magic("unload_ext", "nbaccel")
    assert run.status == "stopped" and run.reason == "user"  # the fixture: no process


def test_a_rank_killed_by_the_system_fails_the_run(digits_high, no_process_left):
    run = nbaccel.fasttrain(digits_high, epochs=500, stop="none", **TWO)
    wait_for(lambda: len(run.history) >= 1, timeout=120)
    [rank1] = [p for p in multiprocessing.active_children() if p.name.endswith("-1")]
    os.kill(rank1.pid, signal.SIGKILL)  # as the out-of-memory killer does
    with pytest.raises(nbaccel.TrainingFailed, match="rank 1 exited with code -9"):
        run.wait(timeout=60)
    assert run.model is None


def test_a_comparison_on_two_processes_measures_the_baseline_on_one(
    two_classes, no_process_left
):
    comparison = nbaccel.compare(two_classes, epochs=2, stop="none", **TWO)
    comparison.wait(timeout=120)  # both in the background, one after the other
    fast, baseline = comparison.accelerated, comparison.baseline
    assert fast.events[0].devices == 2 and baseline.events[0].devices == 1
    assert fast.status == "finished" and [r["epoch"] for r in fast.history] == [1, 2]
