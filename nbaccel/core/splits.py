"""Which images train, which validate and which test.

A folder may hold split folders (train, val, valid, validation, test; also Kaggle's
"Training" and "Testing"; any case), which are never classes: train/ trains, val/ validates
(else `val` of train/ is held out), and test/ is scored once at the end. A CSV file or a
DataFrame of paths and labels (tables.py) may name the split in a `split` column.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from nbaccel.core.data import (
    IMAGE_EXTENSIONS,
    SPLIT_NAMES,
    ImageSource,
    find_images,
    is_hidden,
    read_folder,
    read_object,
    stratified_split,
)
from nbaccel.core.tables import is_table, read_table

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sources:
    """The run's images by split. `test` is scored once, with the best weights."""

    train: ImageSource
    val: ImageSource
    test: Optional[ImageSource] = None


def resolve_sources(data: Any, val: Any, seed: int) -> Sources:
    """The train, validation and (when the data has one) test sources.

    Args:
        data: a folder (class subfolders, or split folders holding class subfolders), a
            .csv file or a DataFrame of image paths and labels, an (images, labels) pair,
            or a torch Dataset.
        val: a fraction in (0, 1) of the training images to hold out, stratified and
            seeded, when the data has no validation split of its own; or a second data
            object.
        seed: seeds the stratified split.

    Raises:
        ValueError: the data is missing, empty, has a single class, cannot be read, or
            names its validation split twice (a val/ folder and a `val` data object).
    """
    if is_table(data):
        splits = read_table(data)
    elif isinstance(data, (str, os.PathLike)):
        splits = read_split_folders(Path(os.fspath(data)).expanduser())
    else:
        splits = {"train": read_object(data)}
    train = splits["train"]
    if "val" in splits:
        if not isinstance(val, float):
            raise ValueError(
                "the data has a validation split of its own and val= gives another: "
                "pass one of them (val=0.2, the default, uses the data's own)"
            )
        validation = splits["val"]
    elif isinstance(val, float):
        train, validation = stratified_split(train, val, seed)
    else:
        validation = read_any(val, class_names=train.class_names)
    return Sources(train, validation, splits.get("test"))


def read_any(data: Any, class_names: tuple[str, ...]) -> ImageSource:
    """A second data object (val=...), labelled with the training data's classes."""
    if is_table(data):
        (source,) = read_table(data, class_names).values()
        return source
    if isinstance(data, (str, os.PathLike)):
        return read_folder(Path(os.fspath(data)).expanduser(), class_names)
    return read_object(data, class_names)


def read_split_folders(root: Path) -> dict[str, ImageSource]:
    """The folder's sources by split: {"train": ...} alone for a folder of classes."""
    found = find_split_folders(root)
    if not found:
        return {"train": read_folder(root)}
    if "train" in found:
        train = read_folder(found["train"])
        others = [
            p.name
            for p in root.iterdir()
            if p.is_dir() and not is_hidden(p.name) and p not in found.values()
        ]
        if others:
            logger.warning(
                "%s: ignoring folder(s) %s next to the split folders %s",
                root,
                sorted(others),
                sorted(p.name for p in found.values()),
            )
    else:  # class folders with split folders beside them: photos/cat, photos/test
        split_names = {p.name for p in found.values()}
        train = read_folder(root, skip=split_names)
    splits = {"train": train}
    for split, folder in list(found.items()):
        if split != "train" and not has_images(folder):  # an empty val/ or test/
            logger.warning("%s holds no images: it is left out", folder)
            del found[split]
    if "val" in found:
        splits["val"] = read_folder(found["val"], class_names=train.class_names)
    if "test" in found:
        test = read_labelled_test(found["test"], train.class_names)
        if test is not None:
            splits["test"] = test
    return splits


def has_images(folder: Path) -> bool:
    return next(find_images(folder), None) is not None


def find_split_folders(root: Path) -> dict[str, Path]:
    """The split folders directly in `root`, by split; refuses two of one split."""
    if not root.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(root.iterdir()):
        split = SPLIT_NAMES.get(path.name.lower())
        if split is None or not path.is_dir():
            continue
        if split in found:
            raise ValueError(
                f"{str(root)!r} has two {split} folders, {found[split].name}/ and "
                f"{path.name}/; keep one (or move the other out of the data folder)"
            )
        found[split] = path
    return found


def read_labelled_test(
    folder: Path, class_names: tuple[str, ...]
) -> Optional[ImageSource]:
    """The test split, or None (with a warning) when its images have no class folders,
    as in a Kaggle competition's test/: there is nothing to score them against."""
    has_classes = any(p.is_dir() and not is_hidden(p.name) for p in folder.iterdir())
    if not has_classes:
        loose = sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        logger.warning(
            "%s holds %d images without class folders: they are not scored (use "
            "run.predict(%r) for their labels)",
            folder,
            loose,
            str(folder),
        )
        return None
    return read_folder(folder, class_names=class_names)
