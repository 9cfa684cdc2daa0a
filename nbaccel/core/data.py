"""Data sources: a folder of class subfolders, an (images, labels) pair or a torch Dataset.

Every input becomes an `ImageSource` (something that yields PIL images and integer labels);
`splits.py` decides which images train, validate and test, `tables.py` reads a CSV or a
DataFrame of paths and labels, and `loaders.py` turns sources into batches.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# The names (any case) of split folders and of a table's split values, and their split.
# Split folders are never classes. "Training"/"Testing" are Kaggle's spelling.
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "train_set": "train",  # Kaggle's cats-vs-dogs: training_set/ + test_set/
    "training_set": "train",
    "seg_train": "train",  # Intel's image classification: seg_train/ + seg_test/
    "val": "val",
    "valid": "val",
    "validation": "val",
    "val_set": "val",
    "validation_set": "val",
    "test": "test",
    "testing": "test",
    "test_set": "test",
    "testing_set": "test",
    "seg_test": "test",
}


@dataclass(frozen=True, eq=False)
class ImageSource:
    """Labelled images from one place. `items` are file paths, arrays, or indices into
    `dataset`; `labels` are indices into `class_names`."""

    items: Sequence[Any]
    labels: np.ndarray
    class_names: tuple[str, ...]
    dataset: Optional[Dataset] = None

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> Image.Image:
        item = self.items[index]
        if self.dataset is not None:
            item = self.dataset[item][0]
        return to_pil(item)

    def subset(self, indices: Sequence[int]) -> ImageSource:
        return ImageSource(
            [self.items[i] for i in indices],
            self.labels[np.asarray(indices, dtype=np.int64)],
            self.class_names,
            self.dataset,
        )


def to_pil(image: Any) -> Image.Image:
    """An RGB PIL image from an image file's path, a PIL image, an array or a tensor.

    Arrays may be H x W, H x W x C or C x H x W (C in 1, 3, 4); uint8 in 0-255, or float in 0-1.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise ValueError(f"no image file at {str(path)!r}")
        try:
            with Image.open(path) as opened:
                return opened.convert("RGB")
        except OSError as error:  # not an image, cut short, or a format PIL lacks
            raise ValueError(
                f"{str(path)!r} could not be read as an image ({error}): delete or "
                "replace it; nbaccel.audit(data) lists every unreadable file"
            ) from error
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if (
        array.ndim == 3
        and array.shape[0] in (1, 3, 4)
        and array.shape[-1] not in (1, 3, 4)
    ):
        array = np.moveaxis(array, 0, -1)  # C x H x W -> H x W x C
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(
            f"an image must be H x W, H x W x C or C x H x W with C in 1, 3 or 4; got shape {array.shape}"
        )
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.max(initial=0) <= 1.0:
            array = array * 255.0
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


# --- reading sources -----------------------------------------------------------------------


def read_folder(
    root: Path,
    class_names: Optional[tuple[str, ...]] = None,
    skip: Collection[str] = (),
) -> ImageSource:
    """Images in class subfolders of `root`, but those named in `skip` (the split folders)
    and hidden ones (.ipynb_checkpoints, __MACOSX)."""
    if not root.exists():
        raise ValueError(
            f"data folder {str(root)!r} does not exist; check the path (relative paths start at {os.getcwd()!r})"
        )
    if not root.is_dir():
        raise ValueError(
            f"data path {str(root)!r} is a file; give a folder with one subfolder of images per "
            "class, or a .csv file of image paths and labels"
        )
    folders = sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and not is_hidden(p.name) and p.name not in skip
    )
    files: dict[str, list[Path]] = {}
    for folder in folders:
        images = sorted(find_images(folder))
        if images:
            files[folder.name] = images
        else:
            logger.warning("skipping %s: it holds no images", folder)
    if not files:
        loose = [p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
        hint = (
            " (images lie directly in it: move them into one subfolder per class)"
            if loose
            else ""
        )
        raise ValueError(
            f"no images found in class subfolders of {str(root)!r}{hint}; expected "
            f"{root}/<class name>/<image>{{{','.join(IMAGE_EXTENSIONS)}}}"
        )
    names = tuple(files) if class_names is None else class_names
    unknown = sorted(set(files) - set(names))
    if unknown:
        raise ValueError(
            f"{str(root)!r} has classes {unknown} that the training data does not have"
        )
    paths = [path for name in files for path in files[name]]
    labels = np.array(
        [names.index(name) for name in files for _ in files[name]], dtype=np.int64
    )
    return checked(ImageSource(paths, labels, names), str(root), class_names is None)


def find_images(folder: Path) -> Iterator[Path]:
    """The image files anywhere under `folder`, hidden folders left out."""
    return (
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(is_hidden(part) for part in p.relative_to(folder).parts)
    )


def is_hidden(name: str) -> bool:
    """Folders no one means as data: .ipynb_checkpoints, .git, a zip's __MACOSX."""
    return name.startswith(".") or name.startswith("__")


def read_object(
    data: Any, class_names: Optional[tuple[str, ...]] = None
) -> ImageSource:
    """An (images, labels) pair or a torch Dataset as an ImageSource."""
    if isinstance(data, Dataset):
        return _read_dataset(data, class_names)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        images, labels = data
        if len(images) != len(labels):
            raise ValueError(
                f"got {len(images)} images but {len(labels)} labels; they must match one to one"
            )
        raw = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        names, indices = index_labels(raw, class_names)
        return checked(
            ImageSource(images, indices, names), "the arrays", class_names is None
        )
    raise ValueError(
        f"cannot read data of type {type(data).__name__}: give a folder path, an (images, labels) "
        "pair of arrays or tensors, or a torch Dataset yielding (image, label)"
    )


def _read_dataset(
    dataset: Dataset, class_names: Optional[tuple[str, ...]]
) -> ImageSource:
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = [
            int(dataset[i][1]) for i in range(len(dataset))
        ]  # reads every item once
    raw = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets)
    own_names = getattr(dataset, "classes", None)
    if own_names is not None and np.issubdtype(raw.dtype, np.integer):
        raw = np.array(
            [str(own_names[i]) for i in raw]
        )  # torchvision style: indices into .classes
    names, indices = index_labels(raw, class_names)
    source = ImageSource(list(range(len(dataset))), indices, names, dataset)
    return checked(source, "the dataset", class_names is None)


def index_labels(
    raw: np.ndarray, class_names: Optional[tuple[str, ...]]
) -> tuple[tuple[str, ...], np.ndarray]:
    """Class names (sorted unique labels as text) and each label's index into them."""
    if raw.ndim != 1:
        raise ValueError(
            f"labels must be one label per image (a 1-D sequence), got shape {raw.shape}"
        )
    values = np.unique(raw)
    names = tuple(str(v) for v in values) if class_names is None else class_names
    lookup = {str(v): i for i, v in enumerate(names)}
    missing = sorted({str(v) for v in values} - set(lookup))
    if missing:
        raise ValueError(
            f"labels {missing} of the validation or test data do not occur in the "
            "training data"
        )
    return names, np.array([lookup[str(v)] for v in raw], dtype=np.int64)


def checked(source: ImageSource, where: str, is_training_data: bool) -> ImageSource:
    if len(source) == 0:
        raise ValueError(f"{where} holds no images")
    if is_training_data and len(source.class_names) < 2:
        raise ValueError(
            f"{where} has a single class ({source.class_names[0]!r}); a classifier needs at least two. "
            "Add a folder (or labels) for each class."
        )
    return source


def stratified_split(
    source: ImageSource, fraction: float, seed: int
) -> tuple[ImageSource, ImageSource]:
    """Holds out `fraction` of each class (at least one image of any class with two or more)."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for label in range(len(source.class_names)):
        members = rng.permutation(np.flatnonzero(source.labels == label))
        n_val = (
            0
            if len(members) < 2
            else min(len(members) - 1, max(1, round(fraction * len(members))))
        )
        val_idx.extend(members[:n_val].tolist())
        train_idx.extend(members[n_val:].tolist())
    if not val_idx:
        raise ValueError(
            "too few images to hold out a validation set: give at least two images per class, or pass val=<data>"
        )
    return source.subset(sorted(train_idx)), source.subset(sorted(val_idx))
