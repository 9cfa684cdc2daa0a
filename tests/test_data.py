"""Data sources (#2): folders, arrays, tensors and Datasets, the split, and bad input."""

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from nbaccel.core.data import read_folder, read_object, stratified_split, to_pil
from nbaccel.core.splits import resolve_sources as resolve


def resolve_sources(data, val, seed):
    sources = resolve(data, val, seed)
    assert sources.test is None
    return sources.train, sources.val


def test_folder_with_train_and_val_subfolders_uses_them(digits_folder):
    train, val = resolve_sources(digits_folder, 0.2, seed=0)
    assert train.class_names == tuple(str(d) for d in range(10))
    assert len(train) + len(val) == 1797 and len(val) == sum(
        1 for _ in (digits_folder / "val").rglob("*.png")
    )
    assert train.load(0).size == (8, 8)


def test_folder_of_class_subfolders_is_split_stratified_and_seeded(digits_folder):
    train, val = resolve_sources(digits_folder / "train", 0.25, seed=1)
    counts_val = np.bincount(val.labels)
    counts_all = counts_val + np.bincount(train.labels)
    assert np.allclose(counts_val / counts_all, 0.25, atol=0.02)
    again_train, again_val = resolve_sources(digits_folder / "train", 0.25, seed=1)
    assert list(map(str, again_val.items)) == list(map(str, val.items))
    other_train, other_val = resolve_sources(digits_folder / "train", 0.25, seed=2)
    assert list(map(str, other_val.items)) != list(map(str, val.items))


def test_arrays_with_text_or_number_labels():
    images = np.random.default_rng(0).integers(0, 255, (20, 16, 16, 3), dtype=np.uint8)
    labels = np.array(["cat", "dog"] * 10)
    train, val = resolve_sources((images, labels), 0.2, seed=0)
    assert train.class_names == ("cat", "dog")
    assert (
        len(train) == 16
        and len(val) == 4
        and sorted(val.labels.tolist()) == [0, 0, 1, 1]
    )
    pixels = np.asarray(train.load(0))
    (match,) = [j for j in range(20) if np.array_equal(images[j], pixels)]
    assert labels[match] == train.class_names[train.labels[0]]


def test_channel_first_float_tensors_become_rgb_images():
    tensor = torch.rand(3, 10, 12)
    image = to_pil(tensor)
    assert image.size == (12, 10) and image.mode == "RGB"
    assert np.allclose(np.asarray(image)[..., 0] / 255, tensor[0].numpy(), atol=1 / 255)
    gray = to_pil(np.full((5, 5), 7, dtype=np.uint8))
    assert np.asarray(gray).shape == (5, 5, 3) and np.asarray(gray).max() == 7


def test_torch_dataset_with_classes_attribute():
    class Shapes(Dataset):
        classes = ["round", "square", "star"]
        targets = [0, 1, 2] * 4

        def __len__(self):
            return 12

        def __getitem__(self, i):
            return torch.full((3, 8, 8), i / 12), self.targets[i]

    train, val = resolve_sources(Shapes(), 0.25, seed=0)
    assert train.class_names == ("round", "square", "star")
    assert len(train) == 9 and len(val) == 3
    assert np.asarray(val.load(0)).shape == (8, 8, 3)


def test_hidden_folders_are_skipped(tmp_path, digits_folder):
    for name in ("a", "b", ".ipynb_checkpoints"):
        (tmp_path / name).mkdir()
        for source in list((digits_folder / "train" / "1").iterdir())[:3]:
            (tmp_path / name / source.name).write_bytes(source.read_bytes())
    assert read_folder(tmp_path).class_names == ("a", "b")


def test_missing_folder_names_the_path(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        resolve_sources(tmp_path / "nope", 0.2, 0)


def test_folder_without_images_says_what_layout_is_expected(tmp_path):
    (tmp_path / "cats").mkdir()
    with pytest.raises(ValueError, match="no images found in class subfolders"):
        read_folder(tmp_path)


def test_loose_images_get_a_hint_to_make_class_folders(tmp_path, digits_folder):
    source = next((digits_folder / "train" / "1").iterdir())
    (tmp_path / "x.png").write_bytes(source.read_bytes())
    with pytest.raises(ValueError, match="one subfolder per class"):
        read_folder(tmp_path)


def test_single_class_is_refused(tmp_path, digits_folder):
    (tmp_path / "only").mkdir()
    for source in list((digits_folder / "train" / "1").iterdir())[:4]:
        (tmp_path / "only" / source.name).write_bytes(source.read_bytes())
    with pytest.raises(ValueError, match="single class"):
        read_folder(tmp_path)


def test_mismatched_images_and_labels_are_refused():
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        resolve_sources((np.zeros((3, 8, 8), np.uint8), [0, 1]), 0.2, 0)


def test_validation_labels_unknown_to_training_are_refused():
    images = np.zeros((4, 8, 8), np.uint8)
    with pytest.raises(ValueError, match=r"labels \['7'\] of the validation or test"):
        resolve_sources((images, [0, 1, 0, 1]), (images[:2], [0, 7]), 0)


def test_split_keeps_singleton_classes_in_training():
    images = np.zeros((5, 8, 8), np.uint8)
    train, val = resolve_sources((images, [0, 0, 0, 0, 1]), 0.5, 0)
    assert 1 in train.labels.tolist() and 1 not in val.labels.tolist()
    one_image_per_class = read_object((images[:2], [0, 1]))
    with pytest.raises(ValueError, match="too few images"):
        stratified_split(one_image_per_class, 0.5, 0)


def test_val_given_as_a_second_folder_uses_the_training_class_names(digits_folder):
    train, val = resolve_sources(digits_folder / "train", digits_folder / "val", seed=0)
    assert val.class_names == train.class_names
    assert len(val) == sum(1 for _ in (digits_folder / "val").rglob("*.png"))
    first = val.items[0]
    assert val.class_names[val.labels[0]] == first.parent.name
