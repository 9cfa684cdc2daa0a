"""The GPU paths (#17), pinned on the CPU by simulating the GPU's conditions: a patched
compute capability, an injected `torch.cuda.OutOfMemoryError`, a patched `torch.cuda` call.
Each test names the item of #17 it pins. The `gpu`-marked tests at the end run the same
paths for real where there is a GPU."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import weakref
from pathlib import Path

import pytest
import timm
import torch
from torch.utils.data import DataLoader

import nbaccel
import nbaccel.core.loop as loop
import nbaccel.core.memory as memory
import nbaccel.core.run as run_module
from nbaccel.core.compiling import check_compile, decide_compile
from nbaccel.core.config import TrainConfig
from nbaccel.core.events import Progress
from nbaccel.core.features import FeatureCache
from nbaccel.core.layout import decide_channels_last
from nbaccel.core.memory import MicroBatches
from nbaccel.core.start import prepare_run
from tests.conftest import SMALL, wait_for
from tests.test_speed import a_gpu, speedups

CUDA, CPU = torch.device("cuda", 0), torch.device("cpu")
ONE_EPOCH = dict(pretrained=False, epochs=1, stop="none", **SMALL)
# For the simulations that a real GPU would take down its own path (a probed batch, a
# model left on it): on a CUDA machine "auto" picks the GPU.
ON_CPU = dict(ONE_EPOCH, device="cpu")


def out_of_memory(message: str = "CUDA out of memory (simulated)") -> Exception:
    return torch.cuda.OutOfMemoryError(message)


def test_a_baseline_too_big_for_the_probed_batch_is_timed_smaller_and_scaled(
    digits_high,
):
    """#17.1: the run's own step (head only) fits its batch of 32; the baseline (every
    layer trained, fp32) fits only 8. The savings stay, timed at 8 and scaled x4."""
    run = prepare_run(TrainConfig(digits_high, freeze="all", **ON_CPU))

    def baseline_fits_eight(module, args):
        if args[0].shape[0] > 8 and next(module.parameters()).requires_grad:
            raise out_of_memory()

    run._plan.model.register_forward_pre_hook(baseline_fits_eight)
    run.start(background=False)
    assert run.status == "finished" and run.savings is not None
    how = run.savings.baseline_how
    assert "baseline: 32 images did not fit in GPU memory, so it was timed at 8 " in how
    assert "scaled x4" in how
    assert run.savings.breakdown["frozen layers"] > 0


@pytest.mark.parametrize("fused", [False, True])
def test_out_of_memory_in_the_optimizer_step_is_not_retried(
    digits_high, monkeypatch, fused
):
    """#17.2: only forward and backward are repeated in smaller pieces. An error in the
    optimizer step (fused AdamW's lazy state, fp16's unscaled gradients) ends the run."""
    calls = []
    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise out_of_memory()
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    run = nbaccel.fasttrain(digits_high, fused=fused, baseline="off", **ON_CPU)
    with pytest.raises(nbaccel.TrainingFailed, match="OutOfMemoryError"):
        run.wait(timeout=60)
    assert calls == [1]  # the step was not tried again
    assert run.model is None and not run._trainer.is_alive()


def test_micro_batches_repeat_only_the_gradients_and_reset_them_first():
    """#17.2: the retry repeats forward and backward in pieces; gradients of the failed
    attempt are dropped first, so the step sees the whole batch's gradients once."""
    model = torch.nn.Linear(4, 3)
    inputs, targets = torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    reference = torch.nn.Linear(4, 3)
    reference.load_state_dict(model.state_dict())
    torch.nn.functional.cross_entropy(reference(inputs), targets).backward()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # fp16's scaling, on a CPU
    attempts = []

    def gradients(count: int) -> torch.Tensor:
        attempts.append(count)
        loss = nbaccel.core.steps.forward_backward(
            model, scaler, inputs, targets, CPU, "fp32", count
        )
        if count == 1:  # the whole batch "ran out of memory" after its backward
            raise out_of_memory()
        return loss

    micro = MicroBatches(8, CPU)
    micro.run(gradients, lambda text: None, lambda: model.zero_grad(set_to_none=True))
    assert attempts == [1, 2]
    assert torch.allclose(model.weight.grad / 1024.0, reference.weight.grad, atol=1e-6)


def test_compile_auto_skips_what_triton_cannot_compile(monkeypatch):
    """#17.3: Kaggle's P100 (compute capability 6.0), and a torch without Triton."""
    a_gpu(monkeypatch, capability=(6, 0))
    decision = decide_compile("auto", CUDA, 5000, False)
    assert decision.value is False and "compute capability 6.0" in decision.why
    with pytest.raises(ValueError, match="compile=True, but Tesla P100 has compute"):
        check_compile(True, CUDA)
    a_gpu(monkeypatch, capability=(7, 5), triton=False)
    decision = decide_compile("auto", CUDA, 5000, False)
    assert decision.value is False and "Triton" in decision.why
    with pytest.raises(ValueError, match="Triton .* is not installed"):
        check_compile(True, CUDA)


@pytest.mark.parametrize("when", ["warm-up", "compile"])
@pytest.mark.parametrize("requested", ["auto", True])
def test_a_compile_that_fails_falls_back_to_eager_under_auto(
    digits_high, monkeypatch, requested, when
):
    """#17.3: an error while compiling (GPUTooOldForTriton, TritonMissing, an unsupported
    model) ends a compile=True run, and under "auto" lets the run train eagerly; also
    when torch.compile() itself raises (on the H100, torch 2.11's inductor import did)."""

    def broken(model, **kwargs):
        def fail(*args, **kwargs):
            raise RuntimeError("GPUTooOldForTriton (simulated)")

        if when == "compile":  # torch.compile itself raises, before any graph
            fail()
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(  # "auto" on a CPU would not compile at all
        loop,
        "decide_compile",
        lambda *args: nbaccel.core.decision.Decision("compile", True, "auto: forced"),
    )
    run = nbaccel.fasttrain(digits_high, compile=requested, **ONE_EPOCH)
    if requested is True:
        with pytest.raises(nbaccel.TrainingFailed, match="GPUTooOldForTriton"):
            run.wait(timeout=60)
        return
    run.wait(timeout=60)
    notes = [e.note for e in run.events if isinstance(e, Progress) and e.note]
    assert notes == [
        "compiling failed, so the run trains eagerly (RuntimeError: "
        "GPUTooOldForTriton (simulated))"
    ]
    assert run.status == "finished" and run.history[0]["val_acc"] > 0.3


def test_compile_auto_counts_the_steps_of_the_probed_batch(digits_high, monkeypatch):
    """#17.3: the probe can cut the batch (and multiply the steps) fourfold: "auto" is
    decided on the steps at the batch the probe found."""
    run = prepare_run(TrainConfig(digits_high, baseline="off", **ONE_EPOCH))
    run._plan = dataclasses.replace(run._plan, probe_batch=True)  # as on CUDA
    monkeypatch.setattr(memory, "fits_in_memory", lambda plan, model, size: size <= 8)
    steps = []
    real = loop.decide_compile
    monkeypatch.setattr(
        loop,
        "decide_compile",
        lambda requested, device, total, *rest: (
            steps.append(total) or real(requested, device, total, *rest)
        ),
    )
    run.start(background=False)
    started = run.events[0]
    assert started.batch_size == 8
    assert (
        speedups(run)["batch size"] == "8 (auto: 16 images did not fit in GPU memory)"
    )
    assert steps == [started.steps_per_epoch] == [started.train_images // 8]


def test_a_stopped_runs_model_predicts_in_fp32_off_its_device(digits_high, monkeypatch):
    """#17.4: a stopped fp16 run's model sits on the CPU; it predicts in fp32 there, not
    under CPU fp16 autocast (20x slower for resnet18)."""
    run = nbaccel.fasttrain(digits_high, background=False, **ON_CPU)
    monkeypatch.setattr(type(run), "precision", property(lambda self: "fp16"))
    run._device = CUDA  # as an fp16 CUDA run whose stopped model went to the CPU
    casts = []
    real = torch.autocast
    monkeypatch.setattr(
        torch, "autocast", lambda *a, **k: casts.append(k.get("dtype")) or real(*a, **k)
    )
    run.predict(digits_high / "val" / "7")
    assert torch.float16 not in casts


def test_a_failing_memory_release_still_ends_the_run(digits_high, monkeypatch):
    """#17.5: after a sticky CUDA error even giving memory back raises; the run must still
    publish RunEnded, so wait() returns and no thread is left."""

    def sticky(device):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(run_module, "release", sticky)
    run = nbaccel.fasttrain(digits_high, **ONE_EPOCH)
    run.wait(timeout=60)
    assert run.status == "finished"
    wait_for(lambda: not run._publisher.is_alive() and not run._trainer.is_alive())


def test_compare_trains_the_baseline_at_the_accelerated_runs_batch(digits_high):
    """#17.6: the baseline takes the batch the accelerated run used (and its projection
    assumed) instead of probing again, and the accelerated model leaves the device."""
    cmp = nbaccel.compare(digits_high, batch_size="auto", background=False, **ONE_EPOCH)
    used = cmp.accelerated.events[0].batch_size
    assert cmp.baseline.config.batch_size == used == cmp.baseline.events[0].batch_size
    assert "the accelerated run's" in speedups(cmp.baseline)["batch size"]
    assert next(cmp.accelerated.model.parameters()).device.type == "cpu"


@pytest.fixture
def counting_compiler(monkeypatch):
    """torch.compile with a backend that runs the traced graph as it is (no Triton, no C++
    compiler: seconds on a CPU) and records, for each graph it compiles, whether the
    warm-up had ended and what dynamo's recompile_limit was on that thread."""
    compiles: list[tuple[bool, int]] = []
    warmed: list[bool] = []

    def backend(graph, example_inputs):
        limit = torch._dynamo.config.recompile_limit
        compiles.append((bool(warmed), limit))
        return graph.forward

    real_compile, real_warm_up = torch.compile, loop.compile_model
    monkeypatch.setattr(
        torch, "compile", functools.partial(real_compile, backend=backend)
    )

    def warm_up(*args, **kwargs):
        result = real_warm_up(*args, **kwargs)
        warmed.append(True)
        return result

    monkeypatch.setattr(loop, "compile_model", warm_up)
    yield compiles
    torch._dynamo.reset()


def test_every_batch_shape_compiles_in_the_warm_up_with_the_users_settings(
    digits_high, counting_compiler
):
    """#17.7: the last, smaller validation batch compiled during epoch 1 and went
    uncounted; and dynamo's settings are per thread, so a user's never reached training."""
    with torch._dynamo.config.patch(recompile_limit=5):  # as a user sets it
        run = nbaccel.fasttrain(digits_high, compile=True, **ONE_EPOCH).wait()
    assert run.status == "finished" and speedups(run)["compile"] == "on (compile=True)"
    assert run.events[0].val_images % (2 * run.events[0].batch_size)  # a partial batch
    assert counting_compiler, "nothing was compiled"
    assert [after for after, _ in counting_compiler] == [False] * len(counting_compiler)
    assert {limit for _, limit in counting_compiler} == {5}


def test_a_second_compiling_run_is_refused_while_one_compiles(
    digits_high, counting_compiler
):
    """#17.7: torch.compile does not support two threads compiling at once."""
    first = nbaccel.fasttrain(digits_high, compile=True, **{**ONE_EPOCH, "epochs": 50})
    wait_for(lambda: any(isinstance(e, Progress) for e in first.events))
    try:
        with pytest.raises(
            ValueError, match="another run in this process is compiling"
        ):
            nbaccel.fasttrain(digits_high, compile=True, **ONE_EPOCH)
    finally:
        first.stop()
    second = nbaccel.fasttrain(digits_high, compile=True, background=False, **ONE_EPOCH)
    assert second.status == "finished"  # the slot is free again


def test_cached_features_copy_the_shuffle_to_the_device_once_an_epoch(monkeypatch):
    """#17.8: the index went to the device with a blocking copy at every step."""
    features, labels = torch.randn(100, 16), torch.arange(100) % 3
    cache = FeatureCache(
        (features, labels),
        (features[:30], labels[:30]),
        10,
        torch.Generator().manual_seed(0),
        CPU,
    )
    copies = []
    real_to = torch.Tensor.to
    monkeypatch.setattr(
        torch.Tensor,
        "to",
        lambda self, *a, **k: copies.append(1) or real_to(self, *a, **k),
    )
    batches = list(cache.train_batches())
    assert len(batches) == 10 and len(copies) <= 1
    # The same order as the image loader it replaces (same generator, same draws).
    images = DataLoader(
        range(100),
        batch_size=10,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )
    for (_, batch_labels), indices in zip(batches, images):
        assert torch.equal(batch_labels, labels[indices])


def test_memory_is_given_back_after_the_failed_steps_tensors_are_freed(monkeypatch):
    """#17.9: released inside the `except` block, the traceback still held the failed
    step's activations, so the cache could not give them back."""
    activations = []
    alive_at_release = []

    def attempt(count: int) -> int:
        tensor = torch.empty(1024)
        activations.append(weakref.ref(tensor))
        if count == 1:
            raise out_of_memory()
        return count

    monkeypatch.setattr(
        memory, "release", lambda device: alive_at_release.append(activations[0]())
    )
    assert MicroBatches(32, CPU).run(attempt, lambda text: None) == 2
    assert alive_at_release == [None]


def load_benchmarks():
    """benchmarks/run.py as a module (it is a script, not part of the package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
    spec = importlib.util.spec_from_file_location("nbaccel_benchmarks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_benchmark_uses_the_precision_the_gpu_has(monkeypatch):
    """#17.10: bf16 was hard-coded: a ValueError on a T4, P100 or V100."""
    benchmarks = load_benchmarks()
    a_gpu(monkeypatch, capability=(7, 5))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert benchmarks.gpu_precision() == "fp16"
    a_gpu(monkeypatch, capability=(9, 0))
    assert benchmarks.gpu_precision() == "bf16"


def test_forward_flops_count_the_attention():
    """#17.10: on a CPU the fused attention op has no FLOP formula and counted as 0."""
    from torch.utils.flop_counter import FlopCounterMode

    benchmarks = load_benchmarks()
    model = timm.create_model("test_vit").eval()
    for block in model.blocks:
        block.attn.fused_attn = False  # attention as explicit matrix products
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, *model.pretrained_cfg["input_size"]))
    assert benchmarks.forward_flops("test_vit") == counter.get_total_flops()


@pytest.mark.parametrize(
    ("capability", "precision", "expected"),
    [
        ((6, 0), "fp16", False),  # P100: no tensor cores
        ((7, 5), "fp32", False),  # T4 in fp32: its tensor cores are fp16 only
        ((7, 5), "fp16", True),
        ((8, 0), "fp32", True),  # Ampere: TF32 tensor cores for fp32 convolutions
        ((8, 0), "bf16", True),
    ],
)
def test_channels_last_only_where_tensor_cores_use_it(
    monkeypatch, capability, precision, expected
):
    """#17.11"""
    a_gpu(monkeypatch, capability=capability)
    convnet = timm.create_model("test_resnet")
    assert decide_channels_last("auto", convnet, CUDA, precision).value is expected


@pytest.mark.parametrize("setting", [False, True])
def test_a_run_leaves_the_cudnn_autotuner_as_the_user_set_it(
    monkeypatch, digits_high, setting
):
    """#17.11: the autotuner's search cost 19 s of an H100 run's 22 s first epoch and
    saved nothing per epoch, so nbaccel never turns it on (nor off)."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", setting)
    seen = set()
    run = prepare_run(
        TrainConfig(digits_high, pretrained=False, epochs=1, checkpoint=False, **SMALL)
    )
    run.subscribe(lambda event: seen.add(torch.backends.cudnn.benchmark))
    run.start(background=False)
    assert run.status == "finished" and seen == {setting}
    assert torch.backends.cudnn.benchmark is setting


# --- the same paths on a real GPU ----------------------------------------------------------

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"
)


@pytest.mark.gpu
@needs_cuda
def test_gpu_compile_trains_and_counts_its_cost(digits_high):
    run = nbaccel.fasttrain(digits_high, compile=True, background=False, **ONE_EPOCH)
    assert speedups(run)["compile"] == "on (compile=True)"
    assert run.savings.breakdown["compile"] != 0
    assert run.status == "finished" and run.history[0]["val_acc"] > 0.3


@pytest.mark.gpu
@needs_cuda
def test_gpu_real_out_of_memory_in_fp16_splits_the_batch(digits_high):
    """A batch far too large for 5% of the card, at 224 px: real OOM errors, then
    micro-batches; the loss stays finite and the run learns."""
    if torch.cuda.get_device_capability()[0] < 7:
        pytest.skip("fp16 tensor cores need compute capability 7.0")
    torch.cuda.set_per_process_memory_fraction(0.05)
    try:
        run = nbaccel.fasttrain(
            digits_high,
            backbone="resnet50",
            pretrained=False,
            image_size=224,
            precision="fp16",
            batch_size=512,
            epochs=1,
            stop="none",
            baseline="off",
            background=False,
        )
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    notes = [e.note for e in run.events if isinstance(e, Progress) and e.note]
    assert any("micro-batches" in note for note in notes), notes
    assert run.status == "finished" and run.history[0]["train_loss"] < 10


@pytest.mark.gpu
@needs_cuda
def test_gpu_calibration_at_a_probed_batch_keeps_the_savings(digits_high):
    torch.cuda.set_per_process_memory_fraction(0.1)
    try:
        run = nbaccel.fasttrain(
            digits_high,
            backbone="resnet50",
            pretrained=False,
            image_size=224,
            freeze="all",
            augment="light",
            epochs=1,
            stop="none",
            background=False,
        )
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert "probed" in speedups(run)["batch size"]
    assert run.savings is not None and run.status == "finished"


@pytest.mark.gpu
@needs_cuda
def test_gpu_cached_features_and_labels_live_on_the_device(digits_high, monkeypatch):
    seen = []
    real = FeatureCache.train_batches

    def record(self):
        for features, labels in real(self):
            seen.append((features.device.type, labels.device.type))
            yield features, labels

    monkeypatch.setattr(FeatureCache, "train_batches", record)
    run = nbaccel.fasttrain(digits_high, freeze="all", background=False, **ONE_EPOCH)
    assert speedups(run)["feature cache"].startswith("on (")
    assert set(seen) == {("cuda", "cuda")}
