"""Loaders: timm's transforms for the backbone, the decoded-image cache, the batch size, the
worker processes, and the DataLoaders; each of the two speed-ups here (the image cache and
the workers) is decided and applied in this module.

Transforms come from timm's own data config for the model, so the pixels a model sees match
what its weights were trained on.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import torch
from timm.data import create_transform, resolve_model_data_config
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from torchvision import transforms as T

from nbaccel.core.data import ImageSource
from nbaccel.core.decision import Decision
from nbaccel.core.openmp import cores

IMAGE_CACHE_BYTES = 2 * 1024**3  # decoded images kept in memory, train and val together
WORKER_START_S = 2.0  # about what starting worker processes costs (each imports torch)
MAX_WORKERS = 8


class TransformedImages(Dataset):
    """An ImageSource with a transform: yields (tensor C x H x W, label).

    With `cache=True`, each image is decoded once and kept after the transform's leading
    deterministic steps (resize, centre crop: a small uint8 image), so later epochs run only
    the random and tensor steps. The cache fills as images are first read.
    """

    def __init__(
        self, source: ImageSource, transform: Any, cache: bool = False
    ) -> None:
        self.source, self.transform = source, transform
        self.prefix, self.rest = split_transform(transform)
        self.cache: Optional[list] = [None] * len(source) if cache else None

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.rest(self.decoded(index)), int(self.source.labels[index])

    def decoded(self, index: int) -> Any:
        """The image after the transform's deterministic steps, from the cache if it has it."""
        if self.cache is None:
            return self.prefix(self.source.load(index))
        image = self.cache[index]
        if image is None:
            image = self.cache[index] = self.prefix(self.source.load(index))
        return image


def split_transform(transform: Any) -> tuple[Any, Any]:
    """(leading deterministic PIL steps, the rest) of a torchvision Compose."""
    steps = list(getattr(transform, "transforms", [transform]))
    cut = 0
    while cut < len(steps) and isinstance(steps[cut], (T.Resize, T.CenterCrop)):
        cut += 1
    return T.Compose(steps[:cut]), T.Compose(steps[cut:])


def decide_image_cache(
    requested: Any, datasets: tuple[TransformedImages, ...], feature_cache: Decision
) -> Decision:
    """Keep decoded images in memory when they fit IMAGE_CACHE_BYTES (estimated from each
    dataset's first image as it would be kept), unless the features are cached instead.

    Raises:
        ValueError: cache=True, but neither the features nor the images can be cached.
    """
    name = "image cache"
    if feature_cache.value:
        return Decision(name, False, "the features are cached instead")
    if requested is False:
        return Decision(name, False, "cache=False")
    needed = 0
    for dataset in datasets:
        first = dataset.prefix(dataset.source.load(0))
        needed += len(dataset) * first.width * first.height * 3
    if needed > IMAGE_CACHE_BYTES:
        why = (
            f"the decoded images need ~{needed / 1024**3:.1f} GiB, over the "
            f"{IMAGE_CACHE_BYTES / 1024**3:.0f} GiB budget: read from the source each epoch"
        )
        if requested is True:
            raise ValueError(f"cache=True, but nothing can be cached: {why}")
        return Decision(name, False, why)
    return Decision(
        name, True, f"decoded once, ~{needed / 1024**2:.0f} MiB kept in memory"
    )


SHORT_BUDGET = 10  # epochs: "auto" augments only longer fine-tunes


def resolve_augment(requested: str, frozen_all: bool, epochs: int) -> str:
    """What augment="auto" becomes: "none" for a head-only run (its frozen features can
    then be cached) and for a short fine-tune (at most 10 epochs), which converged sooner
    without random crops and reached the same best accuracy (docs/design.md); "light"
    random crops for longer ones, against overfitting. Flips are never automatic: they
    change the meaning of digits, text and some scans."""
    if requested != "auto":
        return requested
    return "none" if frozen_all or epochs <= SHORT_BUDGET else "light"


def create_transforms(
    model: torch.nn.Module, image_size: Optional[int], augment: str
) -> tuple[Any, Any, dict]:
    """timm's train and eval transforms for `model`, at `image_size` when given.

    Returns:
        (train transform, eval transform, the resolved data config).
    """
    config = resolve_model_data_config(model)
    if image_size is not None:
        config["input_size"] = (3, image_size, image_size)
    return (*transforms_for(config, augment), config)


def transforms_for(config: dict, augment: str) -> tuple[Any, Any]:
    """(train transform, eval transform) for a resolved data config and augmentation."""
    common = dict(
        input_size=config["input_size"],
        interpolation=config["interpolation"],
        mean=config["mean"],
        std=config["std"],
    )
    eval_transform = create_transform(
        **common, crop_pct=config["crop_pct"], is_training=False
    )
    if augment == "none":
        return eval_transform, eval_transform
    train_transform = create_transform(
        **common,
        is_training=True,
        scale=(0.8, 1.0),
        hflip=0.5 if augment == "flip" else 0.0,
        color_jitter=None,
    )
    return train_transform, eval_transform


def decide_workers(
    requested: Any, dataset: TransformedImages, device: torch.device
) -> Decision:
    """The DataLoader worker processes for loading `dataset`.

    Workers start with forkserver (spawn off Linux), never fork: forking a kernel that runs
    threads can copy a held lock and deadlock. Those methods pickle the dataset, so a
    dataset class defined in the notebook cannot be loaded by workers.

    Raises:
        ValueError: workers asked for, but the dataset's class lives in the notebook, or
            the main script lacks the `if __name__ == "__main__":` guard.
    """
    user_dataset = dataset.source.dataset
    in_notebook = (
        user_dataset is not None and type(user_dataset).__module__ == "__main__"
    )
    unguarded = unguarded_script()
    if requested != "auto":
        if requested and in_notebook:
            raise ValueError(
                f"workers={requested}: the dataset class {type(user_dataset).__name__} is "
                "defined in the notebook, and worker processes cannot import it; move it "
                "into a .py file next to the notebook and import it, or use workers=0"
            )
        if requested and unguarded:
            raise ValueError(
                f"workers={requested}: worker processes re-import the script {unguarded}, "
                "which would train again; put its code under "
                "`if __name__ == '__main__':`, or use workers=0"
            )
        return Decision("workers", int(requested), f"workers={requested} as asked")
    if unguarded:
        why = (
            f"{unguarded} has no `if __name__ == '__main__':` guard, which workers need"
        )
        return Decision("workers", 0, why)
    if dataset.cache is not None:
        why = "decoded images are cached in memory: faster than starting workers"
        return Decision("workers", 0, why)
    if device.type == "cpu":
        why = "training on the CPU uses every core: workers would compete with it"
        return Decision("workers", 0, why)
    if in_notebook:
        why = (
            f"{type(user_dataset).__name__} is defined in the notebook, so worker "
            "processes cannot import it (move it to a .py file to load in parallel)"
        )
        return Decision("workers", 0, why)
    started = time.perf_counter()
    sample = min(4, len(dataset))
    for index in range(sample):
        dataset[index]
    epoch_s = (time.perf_counter() - started) / sample * len(dataset)
    if epoch_s < WORKER_START_S:
        why = (
            f"reading an epoch takes ~{epoch_s:.1f} s here: less than starting workers"
        )
        return Decision("workers", 0, why)
    count = max(0, min(MAX_WORKERS, cores() - 1))
    why = f"{count} workers (one core left for the training thread)"
    return Decision("workers", count, why)


def unguarded_script() -> Optional[str]:
    """The main script's name when it lacks the `if __name__ == "__main__":` guard that
    spawned workers need (they import it); None in a notebook or an interactive session."""
    import __main__

    path = getattr(__main__, "__file__", None)
    if not path or "ipykernel" in path or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as script:
        source = script.read()
    return None if "__main__" in source else os.path.basename(path)


def read_batch(dataset: Dataset, indices: Sequence[int]) -> Any:
    """The dataset's items at `indices`, collated as a loader would: read by index, so a
    loader's shuffle is left alone (the calibration, the compile warm-up and the BatchNorm
    sample read their batches this way)."""
    return default_collate([dataset[i] for i in indices])


def worker_context() -> Any:
    """forkserver where there is one (Linux, macOS), else spawn; never fork (see above)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context(
        "forkserver" if "forkserver" in methods else "spawn"
    )


class ShardSampler(Sampler[int]):
    """Rank `rank`'s share of a shuffled epoch: every rank draws the same permutation from
    its own copy of one seeded generator, pads it to a multiple of `count` with its first
    indices (as DistributedSampler does), and takes every `count`-th index. So the ranks
    see disjoint shards of equal length, together the whole epoch, and the shuffle lives
    in the generator the checkpoints already keep."""

    def __init__(
        self, size: int, rank: int, count: int, generator: torch.Generator
    ) -> None:
        self.size, self.rank, self.count = size, rank, count
        self.generator = generator

    def __len__(self) -> int:
        return math.ceil(self.size / self.count)

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.size, generator=self.generator).tolist()
        order += order[: len(self) * self.count - self.size]
        return iter(order[self.rank :: self.count])


def shard_indices(size: int, rank: int, count: int) -> Optional[list[int]]:
    """The validation images rank `rank` of `count` scores (every `count`-th, no
    padding: the sums are totalled over the ranks), or None for all of them on one."""
    if count == 1:
        return None
    return list(range(rank, size, count))


def create_loaders(
    train: TransformedImages,
    val: TransformedImages,
    batch_size: int,
    device: torch.device,
    workers: int,
    generator: torch.Generator,
    rank: int = 0,
    ranks: int = 1,
) -> tuple[DataLoader, DataLoader]:
    """Shuffled train and ordered val loaders: pinned memory on CUDA (the steps copy with
    non_blocking=True), `workers` persistent worker processes (started once per run).
    With devices=N, rank `rank` of `ranks`'s shard of each (ShardSampler)."""
    common: dict[str, Any] = dict(pin_memory=device.type == "cuda", num_workers=workers)
    if workers:
        common.update(persistent_workers=True, multiprocessing_context=worker_context())
    shard = ShardSampler(len(train), rank, ranks, generator)
    train_loader = DataLoader(
        train,
        batch_size=batch_size,
        sampler=shard if ranks > 1 else None,
        shuffle=None if ranks > 1 else True,
        generator=generator,
        # No batch of one: BatchNorm cannot train on it.
        drop_last=len(shard) > batch_size,
        **common,
    )
    val_loader = DataLoader(
        val,
        batch_size=batch_size * 2,
        sampler=shard_indices(len(val), rank, ranks),  # None: all, in order
        **common,
    )
    return train_loader, val_loader
