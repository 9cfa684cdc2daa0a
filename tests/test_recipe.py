"""The fine-tuning recipe (#16): what "auto" becomes for the head, the learning rate and the
precision on a CPU, and a background thread that trains as fast as the main thread (it
shares the cores with no second OpenMP pool)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import timm
import torch

import nbaccel
import nbaccel.core.auto_precision as auto_precision
from nbaccel.core.config import TrainConfig
from nbaccel.core.host_memory import _glibc
from nbaccel.core.model import create_backbone, init_head
from nbaccel.core.optimizer import resolve_learning_rates
from nbaccel.core.prepare import prepare_plan
from tests.conftest import SMALL

AUTO = {**SMALL, "precision": "auto", "device": "cpu"}  # the CPU's precision, timed


def test_a_new_head_on_pretrained_weights_starts_at_zero(source_weights):
    """BiT's init: every logit starts at 0, so the first loss is ln(classes) and a random
    head does not drive the backbone's first updates."""
    model = create_backbone("test_resnet", source_weights, num_classes=5)
    assert init_head(model, "auto", True, 5) == "zeros"
    assert torch.count_nonzero(model.get_classifier().weight) == 0
    logits = model.eval()(torch.rand(3, 3, 32, 32))
    assert torch.equal(logits, torch.zeros(3, 5))
    timm_init = create_backbone("test_resnet", source_weights, num_classes=5)
    assert init_head(timm_init, "timm", True, 5) == "timm's initialisation"
    assert torch.count_nonzero(timm_init.get_classifier().weight) > 0
    scratch = timm.create_model("test_resnet", num_classes=5)
    assert init_head(scratch, "auto", False, 5) == "timm's initialisation"


def test_the_run_reports_its_head_and_learning_rates(digits_high, source_weights):
    plan = prepare_plan(TrainConfig(digits_high, pretrained=source_weights, **SMALL))
    assert plan.head_init == "zeros" and plan.head_lr == plan.backbone_lr == 1e-3
    head_only = prepare_plan(
        TrainConfig(digits_high, pretrained=source_weights, freeze="all", **SMALL)
    )
    assert head_only.head_lr == 3e-3  # only new weights train
    assert resolve_learning_rates("auto", False, True) == (3e-3, 3e-3)  # random init
    assert resolve_learning_rates(0.02, True, True) == (0.02, 0.02)


@pytest.mark.parametrize("bf16_faster", [True, False])
def test_cpu_precision_auto_takes_bf16_only_when_a_timed_step_is_faster(
    digits_high, monkeypatch, bf16_faster
):
    """On a CPU with bf16 instructions "auto" times a training step in each precision on
    the run's own batch and keeps bf16 only when it is faster and its loss agrees."""
    monkeypatch.setattr(auto_precision, "native_bf16", lambda: True)
    real = auto_precision.time_steps

    seconds = {"fp32": 0.2, "bf16": 0.1 if bf16_faster else 0.3}
    calls = []

    def fake_time_steps(step, batches, device, share_s=1.0, warmup=3):
        real(
            step, batches, device, share_s, warmup=0
        )  # runs the steps (losses recorded)
        precision = ("fp32", "bf16")[len(calls)]
        calls.append(precision)
        return seconds[precision], 3

    monkeypatch.setattr(auto_precision, "time_steps", fake_time_steps)
    run = nbaccel.fasttrain(
        digits_high,
        pretrained=False,
        epochs=1,
        stop="none",
        background=False,
        **AUTO,
    )
    started = run.events[0]
    line = next(s for s in started.speedups if s.startswith("precision:"))
    assert calls == ["fp32", "bf16"]
    if bf16_faster:
        assert started.precision == "bf16" == run.precision
        assert line.startswith(
            "precision: bf16 (auto: a bf16 step took 100 ms against 200 ms"
        )
    else:
        assert started.precision == "fp32"
        assert line.endswith("no faster)")
    assert run.status == "finished" and run.history[0]["val_acc"] > 0.3


def test_cpu_precision_auto_is_fp32_without_bf16_instructions(digits_high, monkeypatch):
    monkeypatch.setattr(auto_precision, "native_bf16", lambda: False)
    plan = prepare_plan(TrainConfig(digits_high, pretrained=False, **AUTO))
    assert plan.precision == "fp32" and not plan.probe_precision
    assert plan.precision_choice.why == "auto: no bf16 on this CPU"


def test_a_diverging_bf16_loss_keeps_fp32(digits_high, monkeypatch):
    monkeypatch.setattr(auto_precision, "native_bf16", lambda: True)
    monkeypatch.setattr(
        auto_precision, "LOSS_TOLERANCE", -1.0
    )  # any difference is too much
    run = nbaccel.fasttrain(
        digits_high, pretrained=False, epochs=1, stop="none", background=False, **AUTO
    )
    assert run.events[0].precision == "fp32"
    assert "but its loss differed by" in next(
        s for s in run.events[0].speedups if s.startswith("precision:")
    )


OPENMP_THREADS = """
import os, threading, torch
from nbaccel.core.openmp import release_thread_pool
def threads():
    return len(os.listdir("/proc/self/task"))
before = threads()
torch.randn(512, 512) @ torch.randn(512, 512)  # a parallel op: this thread's pool
with_pool = threads()
print(before, with_pool, release_thread_pool(), threads(), torch.get_num_threads())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_starting_a_background_run_frees_the_main_threads_openmp_pool():
    """The main thread's OpenMP workers are freed (then made again only if it runs a
    parallel op): with one pool the training thread runs at the main thread's speed
    (benchmarks/run.py's background_ratio measures it)."""
    result = subprocess.run(
        [sys.executable, "-c", OPENMP_THREADS],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    before, with_pool, released, after, workers = result.stdout.split()
    if int(workers) < 2:
        pytest.skip("one OpenMP thread: no pool to free")
    assert int(with_pool) == int(before) + int(workers) - 1  # the pool's workers
    assert released == "True" and int(after) == int(before)


ARENAS = """
import ctypes, sys, threading
import torch
from nbaccel.core.host_memory import keep_freed_memory
if sys.argv[1] == "shared":
    assert keep_freed_memory()
def train():  # allocations of a training step's size, and a parallel op
    x = torch.randn(256, 256)
    for _ in range(5):
        x = torch.tanh(x @ x)
thread = threading.Thread(target=train)
thread.start()
thread.join()
ctypes.CDLL("libc.so.6").malloc_stats()  # to stderr: a block per arena
"""


@pytest.mark.skipif(_glibc() is None, reason="glibc's malloc")
def test_threads_started_for_a_cpu_run_share_one_malloc_arena():
    """A training thread's own arena starts cold: its first epoch faulted its pages in
    again (host_memory.py). After keep_freed_memory() a new thread uses the main one."""
    arenas = {}
    started = {  # side by side: each process counts only its own arenas
        mode: subprocess.Popen(
            [sys.executable, "-c", ARENAS, mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mode in ("own", "shared")
    }
    for mode, process in started.items():
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        arenas[mode] = stderr.count("Arena ")
    assert arenas["own"] >= 2 and arenas["shared"] == 1, arenas


def test_batch_norm_statistics_are_re_estimated_for_the_layers_that_train():
    """Before each evaluation the training BatchNorm layers get statistics of the current
    weights (a cumulative average over a sample); frozen layers keep the pretrained ones."""
    from nbaccel.core.model import (
        apply_freeze,
        list_layer_groups,
        recompute_batch_norm,
    )

    model = timm.create_model("test_resnet", num_classes=3)
    groups = list_layer_groups(model)
    apply_freeze(model, groups, 1)  # the stem frozen
    frozen_bn = model.conv1[1]  # the stem's first BatchNorm
    trained_bn = model.layer4[0].bn1
    before = frozen_bn.running_mean.clone(), trained_bn.running_mean.clone()
    batches = [torch.randn(8, 3, 32, 32) + 2.0, torch.randn(8, 3, 32, 32) + 2.0]
    refreshed = recompute_batch_norm(model, batches, lambda m, x: m(x))
    assert refreshed > 0
    assert torch.equal(frozen_bn.running_mean, before[0])  # pretrained, untouched
    assert not torch.equal(trained_bn.running_mean, before[1])
    assert trained_bn.momentum == 0.1  # put back after the cumulative average
    # The statistics are those of these batches through the current weights: a second
    # pass over the same batches gives the same running mean.
    again = trained_bn.running_mean.clone()
    recompute_batch_norm(model, batches, lambda m, x: m(x))
    assert torch.allclose(trained_bn.running_mean, again)


def test_only_the_last_layer_of_a_deeper_head_starts_at_zero():
    """timm's MlpHead (fc1, act, norm, fc2): zeroing it all would stop every gradient but
    fc2's bias; only fc2 starts at zero, and a step then moves fc1 too."""
    model = timm.create_model("caformer_s18", num_classes=3)
    head = model.get_classifier()
    fc1 = head.fc1.weight.detach().clone()
    assert init_head(model, "zero", True, 3) == "zeros"
    assert torch.count_nonzero(head.fc2.weight) == 0
    assert torch.equal(head.fc1.weight, fc1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):  # the first step moves fc2; the second reaches fc1 through it
        loss = torch.nn.functional.cross_entropy(
            model(torch.rand(2, 3, 64, 64)), torch.tensor([0, 2])
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.equal(head.fc1.weight, fc1)


def test_the_weight_average_follows_its_decay_and_swaps_with_the_trained_weights():
    from nbaccel.core.averaging import WeightAverage, ema_decay

    assert ema_decay(20, 1000) == pytest.approx(0.5 ** (1 / 10))  # half an epoch
    assert ema_decay(20, 30) == pytest.approx(0.5 ** (1 / 3))  # a tenth of a short run
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[0].requires_grad_(False)  # frozen: not the optimizer's, never averaged
    frozen = model[0].weight.detach().clone()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.5)
    average = WeightAverage(optimizer, decay=0.9)
    expected = [p.detach().clone() for p in trainable]
    for update in range(1, 31):
        model(torch.randn(8, 4)).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        average.update()
        decay = min(0.9, (1 + update) / (10 + update))
        expected = [decay * e + (1 - decay) * p for e, p in zip(expected, trainable)]
    trained = [p.detach().clone() for p in trainable]
    assert not torch.allclose(expected[0], trained[0])
    average.swap()  # the average in the model
    for p, e in zip(trainable, expected):
        assert torch.allclose(p, e)
    assert torch.equal(model[0].weight, frozen)
    average.swap()  # and the trained weights back, exactly
    for p, t in zip(trainable, trained):
        assert torch.equal(p, t)


def test_ema_scores_and_keeps_the_average_without_changing_the_training(
    digits_high, source_weights
):
    """The same seed with and without ema: the same training steps (the same losses),
    different scores; the kept model is the average at the best epoch."""
    runs = {
        ema: nbaccel.fasttrain(
            digits_high,
            pretrained=source_weights,
            epochs=3,
            stop="none",
            ema=ema,
            device="cpu",  # equal losses: a GPU's kernels are not deterministic by default
            background=False,
            **SMALL,
        )
        for ema in (True, False)
    }
    losses = {
        ema: [row["train_loss"] for row in run.history] for ema, run in runs.items()
    }
    assert losses[True] == losses[False]
    scores = {
        ema: [row["val_loss"] for row in run.history] for ema, run in runs.items()
    }
    assert scores[True] != scores[False]
    # Both keep epoch 3 (the lowest val_loss): trained alike, the kept weights differ
    # only because one run kept the average.
    assert [run.best["epoch"] for run in runs.values()] == [3, 3]
    kept = {ema: run.model.get_classifier().weight for ema, run in runs.items()}
    assert not torch.equal(kept[True], kept[False])
    assert runs[True].config.ema is True and runs[True].best["val_acc"] >= 0.9
    # Its BatchNorm layers train: their re-estimation, timed in epoch 1, is charged.
    charged = runs[True].savings.breakdown
    assert charged["batchnorm statistics"] < 0 and charged["weight average"] < 0
