"""nbaccel.datasets.digits (#2): the bundled, offline dataset as a folder and as arrays."""

import numpy as np
import pytest
from PIL import Image

import nbaccel


def test_digits_folder_has_stratified_train_and_val_splits(digits_folder):
    for split in ("train", "val"):
        assert sorted(p.name for p in (digits_folder / split).iterdir()) == [
            str(d) for d in range(10)
        ]
    n_train = sum(1 for _ in (digits_folder / "train").rglob("*.png"))
    n_val = sum(1 for _ in (digits_folder / "val").rglob("*.png"))
    assert n_train + n_val == 1797
    assert 0.18 < n_val / (n_train + n_val) < 0.22
    with Image.open(next((digits_folder / "val" / "3").iterdir())) as image:
        assert image.size == (8, 8) and image.mode == "RGB"


def test_digits_picks_classes(cache):
    path = nbaccel.datasets.digits(range(5, 10), root=cache)
    assert sorted(p.name for p in (path / "train").iterdir()) == [
        "5",
        "6",
        "7",
        "8",
        "9",
    ]
    assert (
        nbaccel.datasets.digits([9, 5, 6, 7, 8], root=cache) == path
    )  # cached, same folder


def test_digits_as_arrays():
    images, labels = nbaccel.datasets.digits(range(2), as_arrays=True)
    assert images.dtype == np.uint8 and images.shape[1:] == (8, 8, 3)
    assert set(labels.tolist()) == {0, 1} and len(images) == len(labels) > 300
    assert images.max() == 255 and images.min() == 0


def test_digits_refuses_non_digits():
    with pytest.raises(ValueError, match="digits 0-9"):
        nbaccel.datasets.digits([3, 12], as_arrays=True)
