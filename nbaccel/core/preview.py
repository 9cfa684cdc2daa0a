"""A batch of training images exactly as the model sees them: through the run's training
transform (its augmentation included), then de-normalised back to pixels (run.show_batch()).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from nbaccel.core.loaders import TransformedImages


@dataclass(frozen=True, eq=False)
class BatchPreview:
    """`images`: N x H x W x 3 uint8, what the model is fed (the normalisation undone);
    `labels`: each image's class index into `class_names`; `items`: where each came from
    (a path, or its index in the data)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    items: tuple
    augment: str  # the run's augmentation: "light", "flip" or "none"

    @property
    def label_names(self) -> list[str]:
        return [self.class_names[i] for i in self.labels]

    def __repr__(self) -> str:
        height, width = self.images.shape[1:3]
        return (
            f"<nbaccel.BatchPreview {len(self.images)} training images, {width}x{height} "
            f"px, augment={self.augment!r}>"
        )


def preview_batch(
    images: TransformedImages,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    augment: str,
    count: int = 16,
    seed: int = 0,
) -> BatchPreview:
    """`count` training images drawn at random (seeded), each through `images`' transform.
    The draws and the augmentation use their own seeds, and the random state is put back
    after: the caller's is as before. Not while another thread draws from Python's or
    torch's CPU generator (Run.show_batch keeps a batch made before training starts)."""
    chosen = np.random.default_rng(seed).permutation(len(images))[:count]
    state = random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):  # the CPU generator, put back after
            random.seed(seed)
            torch.default_generator.manual_seed(
                seed
            )  # not CUDA's: fork_rng keeps those
            tensors, labels = zip(*(images[int(i)] for i in chosen))
    finally:
        random.setstate(state)
    batch = torch.stack(tensors).float()
    pixels = batch * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(
        1, -1, 1, 1
    )
    as_uint8 = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    items = tuple(  # a file's path, else the image's place in the training split
        str(images.source.items[i])
        if isinstance(images.source.items[i], (str, os.PathLike))
        else int(i)
        for i in chosen
    )
    return BatchPreview(
        as_uint8.permute(0, 2, 3, 1).numpy(),
        np.asarray(labels, dtype=np.int64),
        images.source.class_names,
        items,
        augment,
    )
