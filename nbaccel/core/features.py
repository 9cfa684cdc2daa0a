"""Frozen-feature caching: when only the classifier trains and every image reaches the frozen
backbone unchanged each epoch, run the backbone once and train the classifier on its output.
Whether it applies (and why not), filling the cache and serving its batches all live here.

The cached features are timm's pre-logits (`forward_head(forward_features(x),
pre_logits=True)`: pooled, a few hundred numbers per image), so a cached epoch is one small
matrix product per batch. They live on the device when they fit, else in host memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from nbaccel.core.decision import Decision
from nbaccel.core.model import set_train_mode
from nbaccel.core.precision import autocast

DEVICE_SHARE = 0.25  # of the free GPU memory, for the cache
HOST_BYTES = 4 * 1024**3  # of host memory, for the cache


def decide_feature_cache(
    requested: Any,
    model: nn.Module,
    frozen_all: bool,
    augment: str,
    images: int,
    input_size: tuple[int, ...],
    device: torch.device,
) -> Decision:
    """Cache the features? Runs one image through the model on the CPU to check that the
    classifier alone follows the cached features, and to size the cache.

    Raises:
        ValueError: cache=True for a head-only run whose features cannot be cached.
    """
    if requested is False:
        return Decision("feature cache", False, "cache=False")
    if not frozen_all:
        return Decision(
            "feature cache",
            False,
            "layers before the classifier train, so their output changes each epoch "
            "(freeze='all' trains the head alone on cached features)",
        )
    why = _why_not(model, augment, images, input_size, device)
    if why is None:
        width = _feature_width(model, input_size)
        size = _mib(images * width * 4)  # type: ignore[operator]
        return Decision(
            "feature cache",
            True,
            f"{images} x {width} features, {size}: the backbone runs once",
        )
    if requested is True:
        raise ValueError(f"cache=True, but the features cannot be cached: {why}")
    return Decision("feature cache", False, why)


def _why_not(
    model: nn.Module,
    augment: str,
    images: int,
    input_size: tuple[int, ...],
    device: torch.device,
) -> Optional[str]:
    """Why a head-only run's features cannot be cached, or None when they can."""
    if augment != "none":
        return (
            f"augment={augment!r} changes each image every epoch before the frozen layers "
            "(augment='none' lets their output be cached)"
        )
    random_layers = [
        name
        for name, module in model.named_modules()
        if _drops(module) and not name.startswith(_classifier_prefix(model))
    ]
    if random_layers or float(getattr(model, "drop_rate", 0.0) or 0.0) > 0:
        where = ", ".join(random_layers[:2]) or "drop_rate"
        return f"dropout before the classifier ({where})"
    width = _feature_width(model, input_size)
    if width is None:
        return "this backbone's classifier does not act on its pooled features alone"
    needed, budget = images * width * 4, _budget(device)
    if needed > budget:
        return f"features need {_mib(needed)}, over the {_mib(budget)} budget"
    return None


def _drops(module: nn.Module) -> bool:
    """A dropout-like layer that is active in training (dropout, timm's DropPath/DropBlock)."""
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p > 0
    if type(module).__name__ in ("DropPath", "DropBlock2d"):
        return float(getattr(module, "drop_prob", 0.0) or 0.0) > 0
    return False


def _classifier_prefix(model: nn.Module) -> str:
    classifier = model.get_classifier()
    return next((n for n, m in model.named_modules() if m is classifier), "\0")


@torch.no_grad()
def _feature_width(model: nn.Module, input_size: tuple[int, ...]) -> Optional[int]:
    """The pre-logits width, or None when classifier(pre-logits) != the model's output."""
    was_training = model.training
    model.eval()
    try:
        x = torch.rand(1, *input_size)
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        same = torch.allclose(model.get_classifier()(features), model(x), atol=1e-5)
        return features.shape[1] if same and features.ndim == 2 else None
    except (AttributeError, TypeError, RuntimeError):
        return None
    finally:
        model.train(was_training)


def _budget(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] * DEVICE_SHARE)
    return HOST_BYTES


def _mib(size: int) -> str:
    return f"{size / 1024**2:.1f} MiB"


@torch.no_grad()
def pre_logits(
    model: nn.Module,
    inputs: torch.Tensor,
    device: torch.device,
    precision: str,
    memory_format: torch.memory_format = torch.preserve_format,
) -> torch.Tensor:
    """The model's pooled features for a batch, in the run's precision."""
    inputs = inputs.to(device, non_blocking=True, memory_format=memory_format)
    with autocast(device, precision):
        return model.forward_head(model.forward_features(inputs), pre_logits=True)


Features = tuple[torch.Tensor, torch.Tensor]  # (N x width features, N labels)


class FeatureCache:
    """The frozen backbone's output for every train and val image, served in batches.

    Labels and (budget allowing) features live on the device, so a step reads them with no
    host-to-device copy; the shuffle order is copied once an epoch. Features too large for
    the device stay in host memory and each batch is gathered into fresh pinned memory
    (torch's caching host allocator reuses it once its copy is done) for an asynchronous
    copy.
    """

    def __init__(
        self,
        train: Features,
        val: Features,
        batch_size: int,
        generator: torch.Generator,
        device: torch.device,
    ) -> None:
        self.train, self.val = train, val
        self.batch_size, self.generator, self.device = batch_size, generator, device

    @classmethod
    def fill(
        cls,
        model: nn.Module,
        train_loader: DataLoader,
        val_loader: DataLoader,
        device: torch.device,
        precision: str,
        stop_requested: Callable[[], bool],
    ) -> Optional[FeatureCache]:
        """Runs the frozen model over the train set (in its training mode: frozen BatchNorm
        in eval) and the val set (eval mode). None if a stop came first."""
        parts = []
        for loader, training in ((train_loader, True), (val_loader, False)):
            set_train_mode(model) if training else model.eval()
            ordered = DataLoader(  # the dataset in order, with the loader's workers
                loader.dataset,
                batch_size=loader.batch_size,
                num_workers=loader.num_workers,
                pin_memory=loader.pin_memory,
                multiprocessing_context=loader.multiprocessing_context,
            )
            features, labels = [], []
            for inputs, targets in ordered:
                if stop_requested():
                    return None
                features.append(pre_logits(model, inputs, device, precision))
                labels.append(targets)
            parts.append(_keep(torch.cat(features), torch.cat(labels), device))
        batch_size = train_loader.batch_size or 1
        return cls(parts[0], parts[1], batch_size, train_loader.generator, device)

    def train_batches(self) -> Iterator[Features]:
        """One epoch, shuffled exactly as the image loader it replaces: the same generator
        makes the same draws (the loader's base seed, then its sampler's permutation)."""
        labels = self.train[1]
        count = len(labels)
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        sampler = BatchSampler(
            RandomSampler(range(count), generator=self.generator),
            self.batch_size,
            drop_last=count > self.batch_size,  # no batch of one: as the image loader
        )
        batches = list(sampler)
        order = torch.tensor([i for batch in batches for i in batch])
        on_device = order.to(labels.device)  # one copy an epoch, not one a step
        start = 0
        for batch in batches:
            end = start + len(batch)
            yield self._gather(order[start:end], on_device[start:end], self.train)
            start = end

    def val_batches(self) -> Iterator[Features]:
        labels = self.val[1]
        order = torch.arange(len(labels))
        on_device = order.to(labels.device)
        for start in range(0, len(labels), self.batch_size * 2):
            end = start + self.batch_size * 2
            yield self._gather(order[start:end], on_device[start:end], self.val)

    @staticmethod
    def _gather(host: torch.Tensor, index: torch.Tensor, part: Features) -> Features:
        """The batch at `index` (the same indices as `host`, on the labels' device)."""
        features, labels = part
        if features.device == index.device:
            return features[index], labels[index]
        # Host features for a CUDA run: gathered straight into fresh pinned memory.
        out = torch.empty(
            (len(host), *features.shape[1:]), dtype=features.dtype, pin_memory=True
        )
        return torch.index_select(features, 0, host, out=out), labels[index]


def _keep(
    features: torch.Tensor, labels: torch.Tensor, device: torch.device
) -> Features:
    """Labels on the device; features there too when the budget allows (checked in the
    plan, and again now that the device is in use), else in host memory."""
    labels = labels.to(device)
    size = features.numel() * features.element_size()
    if device.type == "cuda" and size > _budget(device):
        return features.cpu(), labels
    return features, labels
