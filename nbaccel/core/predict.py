"""Predictions from a trained model: labels and class probabilities for image files, a
folder, PIL images, arrays or tensors, through timm's eval transform.

labels, probabilities = run.predict(["a.png", "b.png"])
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import create_transform
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nbaccel.core.data import IMAGE_EXTENSIONS, to_pil
from nbaccel.core.events import TestScore
from nbaccel.core.steps import eval_step

PREDICT_BATCH = 64


class Predictions(NamedTuple):
    """One label and one row of class probabilities per image, in input order."""

    labels: list[str]
    probabilities: np.ndarray  # N x classes, rows sum to 1


def predict(
    model: nn.Module,
    images: Any,
    class_names: tuple[str, ...],
    data_config: dict,
    precision: str = "fp32",
) -> Predictions:
    """Classifies `images` with the eval transform of `data_config`.

    Args:
        images: a path (an image, or a folder of images), a list of paths or PIL images,
            an N x H x W x C uint8 array, an N x C x H x W tensor in [0, 1], or one image.
    """
    pictures = _as_pictures(images)
    transform = create_transform(**data_config, is_training=False)
    device = next(model.parameters()).device
    model.eval()
    chunks = []
    for start in range(0, len(pictures), PREDICT_BATCH):
        batch = torch.stack(
            [transform(p) for p in pictures[start : start + PREDICT_BATCH]]
        )
        logits = eval_step(model, batch, device, precision)
        chunks.append(logits.float().softmax(dim=1).cpu())
    probabilities = torch.cat(chunks).numpy()
    labels = [class_names[i] for i in probabilities.argmax(axis=1)]
    return Predictions(labels, probabilities)


@torch.no_grad()
def score(
    model: nn.Module, images: Dataset, precision: str = "fp32"
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on labelled, transformed `images`."""
    device = next(model.parameters()).device
    model.eval()
    loss, correct = 0.0, 0
    for inputs, targets in DataLoader(images, batch_size=PREDICT_BATCH):
        logits = eval_step(model, inputs, device, precision).float().cpu()
        loss += F.cross_entropy(logits, targets, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == targets).sum())
    return loss / len(images), correct / len(images)  # type: ignore[arg-type]


def _as_pictures(images: Any) -> list[Image.Image]:
    """A list of RGB PIL images from any of predict()'s inputs."""
    if isinstance(images, (str, os.PathLike)):
        path = Path(images).expanduser()
        return (
            [to_pil(p) for p in _image_files(path)] if path.is_dir() else [to_pil(path)]
        )
    if isinstance(images, (np.ndarray, torch.Tensor)):
        one = images.ndim == 2 or (
            images.ndim == 3
            and (images.shape[-1] in (1, 3, 4) or images.shape[0] in (1, 3, 4))
        )
        return [to_pil(images)] if one else [to_pil(image) for image in images]
    if isinstance(images, (list, tuple)):
        return [to_pil(image) for image in images]
    return [to_pil(images)]


def _image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(
            f"no images in {str(folder)!r}: predict() takes image files, a folder of "
            "them, arrays or tensors"
        )
    return files


def score_test(
    model: nn.Module, test: Dataset, precision: str, best_epoch: int
) -> TestScore:
    """The test split scored with the best weights (`model` holds them by now). A file
    that cannot be read is reported in the score, not as a failed run: the trained model
    is the result, and it is kept."""
    images = len(test)  # type: ignore[arg-type]
    try:
        loss, accuracy = score(model, test, precision)
    except Exception as error:  # noqa: BLE001 - the run's weights are kept regardless
        logging.getLogger(__name__).warning(
            "the test split could not be scored: %s", error
        )
        return TestScore(best_epoch, images, math.nan, math.nan, str(error))
    return TestScore(best_epoch, images, loss, accuracy)
