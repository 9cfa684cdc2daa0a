"""The speed-ups (#5): feature and image caches, workers, micro-batches after out-of-memory,
the batch size probe, compile and channels-last. They must change how fast a run goes, never
what it learns; timings themselves live in benchmarks/, not here."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

import numpy as np
import pytest
import timm
import torch
from torch.utils.data import DataLoader, Dataset

import nbaccel
from nbaccel.core.compiling import decide_compile
from nbaccel.core.config import TrainConfig
from nbaccel.core.data import read_object
from nbaccel.core.events import Progress, RunStarted
from nbaccel.core.features import decide_feature_cache
from nbaccel.core.layout import decide_channels_last
from nbaccel.core.loaders import TransformedImages, create_transforms, decide_workers
from nbaccel.core.memory import batch_size_limit, probe_batch_size
from nbaccel.core.prepare import prepare_plan
from nbaccel.core.start import prepare_run
from tests.conftest import SMALL

HEAD_ONLY = dict(freeze="all", epochs=3, stop="none", background=False, **SMALL)


def speedups(run: nbaccel.Run) -> dict[str, str]:
    started = next(e for e in run.events if isinstance(e, RunStarted))
    return dict(line.split(": ", 1) for line in started.speedups)


def test_cached_features_train_the_head_exactly_as_the_images_do(
    digits_high, source_weights
):
    cached = nbaccel.fasttrain(digits_high, pretrained=source_weights, **HEAD_ONLY)
    uncached = nbaccel.fasttrain(
        digits_high, pretrained=source_weights, cache=False, **HEAD_ONLY
    )
    assert speedups(cached)["feature cache"].startswith("on (")
    assert speedups(uncached)["feature cache"] == "off (cache=False)"
    assert cached.events[0].augment == uncached.events[0].augment == "none"
    for metric in ("train_loss", "val_loss", "val_acc"):
        np.testing.assert_allclose(
            [row[metric] for row in cached.history],
            [row[metric] for row in uncached.history],
            rtol=1e-4,
        )
    assert cached.history[-1]["val_acc"] > 0.6  # the transfer learned something
    assert cached.savings.breakdown["caching"] > 0
    assert uncached.savings.breakdown["caching"] == 0
    assert sum(cached.savings.breakdown.values()) == pytest.approx(
        cached.savings.saved_s
    )
    # The cached run's model is the whole model: it predicts from images.
    predictions = cached.predict(digits_high / "val" / "7")
    assert np.mean(np.array(predictions.labels) == "7") > 0.6


@pytest.mark.parametrize(
    "choices, why",
    [
        (dict(freeze="all", augment="light"), "augment='light' changes each image"),
        (dict(freeze=0), "layers before the classifier train"),
        (dict(freeze="all", cache=False), "cache=False"),
    ],
)
def test_the_run_says_why_features_are_not_cached(digits_high, choices, why):
    plan = prepare_plan(TrainConfig(digits_high, pretrained=False, **SMALL, **choices))
    assert plan.feature_cache.value is False and why in plan.feature_cache.why


def test_cache_true_refuses_what_cannot_be_cached(digits_high):
    with pytest.raises(ValueError, match="cache=True, but the features cannot be"):
        prepare_plan(
            TrainConfig(
                digits_high, pretrained=False, freeze="all", augment="flip", cache=True
            )
        )


def test_dropout_before_the_classifier_rules_out_the_cache():
    model = timm.create_model("test_vit", num_classes=3, drop_path_rate=0.1)
    decision = decide_feature_cache(
        "auto", model, True, "none", 100, (3, 32, 32), torch.device("cpu")
    )
    assert not decision.value and "dropout" in decision.why


class CountingDigits(Dataset):
    """Real digits that count how often each image is read."""

    def __init__(self) -> None:
        self.images, self.labels = nbaccel.datasets.digits(as_arrays=True)
        self.reads = np.zeros(len(self.labels), dtype=int)
        self.targets = self.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        self.reads[index] += 1
        return self.images[index], self.labels[index]


@pytest.mark.parametrize("augment", ["none", "light"])
def test_the_image_cache_decodes_each_image_once(augment):
    data = CountingDigits()
    model = timm.create_model("test_resnet", num_classes=10)
    train_tf, _, _ = create_transforms(model, 32, augment)
    source = read_object(data)
    cached = TransformedImages(source, train_tf, cache=True)
    plain = TransformedImages(source, train_tf)
    for _ in range(2):  # two epochs
        for _ in DataLoader(cached, batch_size=64):
            pass
    assert (data.reads == 1).all()
    if augment == "none":  # deterministic: the cached pixels are the source's
        for index in (0, 17, len(data) - 1):
            assert torch.equal(cached[index][0], plain[index][0])


def test_worker_processes_load_data_for_a_background_run(digits_high):
    run = nbaccel.fasttrain(
        digits_high,
        pretrained=False,
        workers=2,
        cache=False,
        epochs=2,
        stop="none",
        background=False,
        **SMALL,
    )
    assert speedups(run)["workers"] == "2 (workers=2 as asked)"
    assert run.status == "finished" and run.history[-1]["val_acc"] > 0.5
    assert multiprocessing.active_children() == []  # the workers ended with the run


def test_a_dataset_class_from_the_notebook_gets_no_workers():
    notebook_class = type(
        "NotebookDigits", (CountingDigits,), {"__module__": "__main__"}
    )
    model = timm.create_model("test_resnet", num_classes=10)
    transform, _, _ = create_transforms(model, 32, "none")
    images = TransformedImages(read_object(notebook_class()), transform)
    workers = decide_workers("auto", images, torch.device("cuda"))
    assert (
        workers.value == 0
        and "NotebookDigits is defined in the notebook" in workers.why
    )
    with pytest.raises(ValueError, match="move it into a .py file"):
        decide_workers(2, images, torch.device("cuda"))


def test_out_of_memory_splits_the_batch_and_the_run_goes_on(digits_high):
    run = prepare_run(
        TrainConfig(
            digits_high,
            pretrained=False,
            epochs=1,
            stop="none",
            baseline="off",
            device="cpu",  # a CUDA run would probe the batch first
            **SMALL,
        )
    )

    def small_memory(module, args):  # as a GPU that fits 8 images at a time
        if args[0].shape[0] > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    run._plan.model.register_forward_pre_hook(small_memory)
    run.start().wait()
    notes = [e.note for e in run.events if isinstance(e, Progress) and e.note]
    assert notes[:2] == [
        "out of GPU memory with 32 images per step: now 2 micro-batches of 16, "
        "gradients accumulated (batch still 32)",
        "out of GPU memory with 16 images per step: now 4 micro-batches of 8, "
        "gradients accumulated (batch still 32)",
    ]
    assert run.status == "finished" and run.history[0]["val_acc"] > 0.3


def test_the_batch_size_probe_finds_the_largest_that_fits():
    tried = []

    def fits(size: int) -> bool:
        tried.append(size)
        return size <= 100

    assert probe_batch_size(fits, 32, 256)[0] == 64 and tried == [32, 64, 128]
    assert probe_batch_size(lambda n: n <= 20, 32, 256)[0] == 16
    assert probe_batch_size(lambda n: True, 32, 64)[0] == 64
    with pytest.raises(MemoryError, match="not even one image"):
        probe_batch_size(lambda n: False, 4, 64)
    assert batch_size_limit(720) == 64 and batch_size_limit(100_000) == 256


def a_gpu(monkeypatch, capability=(8, 0), triton=True):
    """Makes torch.cuda describe a GPU of `capability` (the checks that read it run here)."""
    import torch.utils._triton

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla P100")
    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: triton)


def test_auto_compiles_only_long_cuda_runs(monkeypatch):
    a_gpu(monkeypatch)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert decide_compile("auto", cuda, 5000, False).value is True
    assert decide_compile("auto", cuda, 200, False).why == (
        "auto: 200 steps in the epoch budget, under the 1000 that repay compiling "
        "(compile=True forces it)"
    )
    assert decide_compile("auto", cuda, 200, False).value is False
    assert decide_compile("auto", cpu, 5000, False).value is False
    assert decide_compile(True, cuda, 5000, True).value is False  # only the head runs
    assert decide_compile(False, cuda, 5000, False).why == "compile=False"


def test_channels_last_for_convnets_on_cuda_only(monkeypatch):
    a_gpu(monkeypatch)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    convnet, vit = timm.create_model("test_resnet"), timm.create_model("test_vit")
    assert decide_channels_last("auto", convnet, cuda, "bf16").value is True
    assert decide_channels_last("auto", vit, cuda, "bf16").value is False
    assert decide_channels_last("auto", convnet, cpu, "fp32").value is False
    assert decide_channels_last(True, vit, cpu, "fp32").value is True


@pytest.mark.slow
def test_compile_runs_in_the_thread_and_its_time_is_counted(digits_high):
    images, labels = nbaccel.datasets.digits(range(5, 10), as_arrays=True)
    choices = dict(pretrained=False, epochs=1, stop="none", background=False, **SMALL)
    data = (images[:300], labels[:300])
    run = nbaccel.fasttrain(data, compile=True, **choices)
    eager = nbaccel.fasttrain(data, compile=False, **choices)
    assert speedups(run)["compile"] == "on (compile=True)"
    compile_cause = dict((c, how) for c, _, how in run.savings.by_cause)["compile"]
    assert compile_cause.startswith("compiling took")
    assert run.savings.breakdown["compile"] < 0  # on a CPU it costs more than it saves
    assert run.events[-1].elapsed_s > -run.savings.breakdown["compile"]
    for metric in ("train_loss", "val_loss"):  # the same training, compiled
        assert run.history[0][metric] == pytest.approx(
            eager.history[0][metric], rel=1e-2
        )
    # The model handed back is the plain module, in the default layout.
    assert not isinstance(run.model, torch._dynamo.eval_frame.OptimizedModule)
    assert all(p.is_contiguous() for p in run.model.parameters())


def test_a_foreground_run_trains_on_the_calling_thread_and_ctrl_c_stops_it(
    digits_high,
):
    threads = []

    def interrupt_after_first_epoch(event):
        if isinstance(event, Progress) and not threads:
            threads.append(threading.current_thread())
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C in a terminal

    run = prepare_run(
        TrainConfig(digits_high, pretrained=False, epochs=50, stop="none", **SMALL)
    )
    run.subscribe(interrupt_after_first_epoch)
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        run.start(background=False)
    assert run.status == "stopped" and run.reason == "user"
    assert len(run.history) < 50 and run.model is not None
    assert signal.getsignal(signal.SIGINT) is previous  # the handler is put back
    assert threads[0] is not threading.main_thread()  # subscribers: publisher thread
    assert [t.name for t in threading.enumerate() if t.name.startswith("nbaccel")] == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_batch_is_probed_and_features_stay_on_the_device(
    digits_high, source_weights
):
    # Pretrained: a head on random test_resnet features stays at chance (0.20) for two
    # epochs on the GPU and on a CPU alike.
    run = nbaccel.fasttrain(
        digits_high,
        pretrained=source_weights,
        freeze="all",
        epochs=2,
        stop="none",
        **SMALL,
    )
    run.wait()
    lines = speedups(run)
    assert "probed" in lines["batch size"] and int(lines["batch size"].split()[0]) >= 32
    assert lines["feature cache"].startswith("on (")
    assert lines["channels_last"].startswith("on (")
    assert run.status == "finished" and run.history[-1]["val_acc"] > 0.3


def test_a_script_without_a_main_guard_gets_no_workers(tmp_path, monkeypatch):
    import __main__

    script = tmp_path / "train.py"
    script.write_text("import nbaccel\nnbaccel.fasttrain('photos', workers=2)\n")
    monkeypatch.setattr(__main__, "__file__", str(script), raising=False)
    model = timm.create_model("test_resnet", num_classes=10)
    transform, _, _ = create_transforms(model, 32, "none")
    images = TransformedImages(read_object(CountingDigits()), transform)
    workers = decide_workers("auto", images, torch.device("cuda"))
    assert workers.value == 0
    assert "train.py has no `if __name__ == '__main__':` guard" in workers.why
    with pytest.raises(ValueError, match="re-import the script train.py"):
        decide_workers(2, images, torch.device("cuda"))
    script.write_text("if __name__ == '__main__':\n    pass\n")  # guarded: allowed
    assert decide_workers(2, images, torch.device("cuda")).value == 2
