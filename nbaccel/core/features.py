"""Frozen-feature caching: when only the classifier trains and every image reaches the frozen
backbone unchanged each epoch, run the backbone once and train the classifier on its output.

The cached features are timm's pre-logits (`forward_head(forward_features(x),
pre_logits=True)`: pooled, a few hundred numbers per image), so a cached epoch is one small
matrix product per batch. They live on the device when they fit, else in (pinned) host memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from nbaccel.core.model import set_train_mode
from nbaccel.core.precision import autocast

DEVICE_SHARE = 0.25  # of the free GPU memory, for the cache
HOST_BYTES = 4 * 1024**3  # of host memory, for the cache


def plan_feature_cache(
    requested: Any,
    model: nn.Module,
    frozen_all: bool,
    augment: str,
    images: int,
    input_size: tuple[int, ...],
    device: torch.device,
) -> tuple[bool, str]:
    """(cache the features?, why). Runs one image through the model on the CPU to check
    that the classifier alone follows the cached features and to size the cache."""
    if requested is False:
        return False, "cache=False"
    if not frozen_all:
        return False, (
            "layers before the classifier train, so their output changes each epoch "
            "(freeze='all' trains the head alone on cached features)"
        )
    if augment != "none":
        return False, (
            f"augment={augment!r} changes each image every epoch before the frozen layers "
            "(augment='none' lets their output be cached)"
        )
    random_layers = [
        name
        for name, module in model.named_modules()
        if _drops(module) and not name.startswith(_classifier_prefix(model))
    ]
    if random_layers or float(getattr(model, "drop_rate", 0.0) or 0.0) > 0:
        return (
            False,
            f"dropout before the classifier ({', '.join(random_layers[:2]) or 'drop_rate'})",
        )
    width = _feature_width(model, input_size)
    if width is None:
        return (
            False,
            "this backbone's classifier does not act on its pooled features alone",
        )
    needed = images * width * 4
    budget = _budget(device)
    if needed > budget:
        return False, f"features need {_mib(needed)}, over the {_mib(budget)} budget"
    return True, f"{images} x {width} features, {_mib(needed)}: the backbone runs once"


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


class FeatureCache:
    """The frozen backbone's output for every train and val image, and loaders over it."""

    def __init__(
        self, train: tuple, val: tuple, batch_size: int, generator: torch.Generator
    ):
        self.train, self.val = train, val  # (features, labels) each
        self.batch_size, self.generator = batch_size, generator

    @classmethod
    def fill(
        cls,
        model: nn.Module,
        job: Any,
        stop_requested: Callable[[], bool],
    ) -> Optional[FeatureCache]:
        """Runs the frozen model over the train set (in its training mode: frozen BatchNorm
        in eval) and the val set (eval mode). None if a stop came first."""
        parts = []
        for loader, training in ((job.train_loader, True), (job.val_loader, False)):
            set_train_mode(model) if training else model.eval()
            ordered = (
                loader  # the val loader is already in order
                if not training
                else DataLoader(
                    loader.dataset,
                    batch_size=loader.batch_size,
                    num_workers=loader.num_workers,
                    pin_memory=loader.pin_memory,
                    multiprocessing_context=loader.multiprocessing_context,
                )
            )
            features, labels = [], []
            for inputs, targets in ordered:
                if stop_requested():
                    return None
                features.append(pre_logits(model, inputs, job))
                labels.append(targets)
            parts.append((_keep(torch.cat(features), job.device), torch.cat(labels)))
        return cls(
            parts[0], parts[1], job.train_loader.batch_size, job.train_loader.generator
        )

    def train_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled like the image loader it replaces: the same generator, the same draws."""
        features, labels = self.train
        sampler = BatchSampler(
            RandomSampler(range(len(labels)), generator=self.generator),
            self.batch_size,
            drop_last=len(labels) > self.batch_size,
        )
        loader = DataLoader(
            _Indexed(features, labels),
            sampler=sampler,
            batch_size=None,
            generator=self.generator,
        )
        return iter(loader)

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        features, labels = self.val
        for start in range(0, len(labels), self.batch_size * 2):
            end = start + self.batch_size * 2
            yield features[start:end], labels[start:end]


@torch.no_grad()
def pre_logits(model: nn.Module, inputs: torch.Tensor, job: Any) -> torch.Tensor:
    """The model's pooled features for a batch, in the run's precision."""
    inputs = inputs.to(job.device, non_blocking=True, memory_format=job.memory_format)
    with autocast(job.device, job.precision):
        return model.forward_head(model.forward_features(inputs), pre_logits=True)


def _keep(features: torch.Tensor, device: torch.device) -> torch.Tensor:
    """On the device when the budget allows (checked in the plan), else pinned host memory."""
    if device.type == "cuda" and features.numel() * features.element_size() > _budget(
        device
    ):
        return features.cpu().pin_memory()
    return features


class _Indexed(torch.utils.data.Dataset):
    """Whole batches by a list of indices: one gather per step, no per-item collate."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices)
        return self.features[index.to(self.features.device)], self.labels[index]
