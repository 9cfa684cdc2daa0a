"""The data layouts people bring (#12): split folders (train/ + test/ as on Kaggle,
train/ + val/ + test/), never read as classes; a test split scored once at the end; a CSV
file or a DataFrame of image paths and labels."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

import nbaccel
from nbaccel.core.splits import resolve_sources
from tests.conftest import SMALL

CLASSES = ("0", "1", "2")


def copy_digits(digits_folder: Path, target: Path, split: str, per_class: int) -> None:
    """`per_class` real digit images of each of CLASSES, from the bundled split `split`,
    into target/<class>/."""
    for name in CLASSES:
        (target / name).mkdir(parents=True)
        for image in sorted((digits_folder / split / name).iterdir())[:per_class]:
            shutil.copy(image, target / name / image.name)


@pytest.fixture
def kaggle(tmp_path, digits_folder) -> Path:
    """photos/train/<class>/ and photos/test/<class>/, as Kaggle datasets come."""
    root = tmp_path / "photos"
    copy_digits(digits_folder, root / "train", "train", 40)
    copy_digits(digits_folder, root / "test", "val", 10)
    return root


def test_train_and_test_folders_are_splits_not_classes(kaggle):
    sources = resolve_sources(kaggle, 0.25, seed=0)
    assert sources.train.class_names == CLASSES
    assert len(sources.train) == 90 and len(sources.val) == 30  # 25% of train/
    assert all("train" in p.parts for p in sources.train.items + sources.val.items)
    assert len(sources.test) == 30
    assert [sources.test.class_names[i] for i in sources.test.labels] == [
        p.parent.name for p in sources.test.items
    ]


def test_train_val_and_test_folders_are_all_used_in_any_case(tmp_path, digits_folder):
    root = tmp_path / "scans"
    copy_digits(digits_folder, root / "Training", "train", 20)
    copy_digits(digits_folder, root / "Validation", "val", 6)
    copy_digits(digits_folder, root / "TEST", "val", 4)
    sources = resolve_sources(root, 0.2, seed=0)
    assert (len(sources.train), len(sources.val), len(sources.test)) == (60, 18, 12)
    assert {p.parts[-3] for p in sources.val.items} == {"Validation"}


def test_class_folders_with_a_test_folder_beside_them(tmp_path, digits_folder):
    copy_digits(digits_folder, tmp_path, "train", 10)
    copy_digits(digits_folder, tmp_path / "test", "val", 3)
    sources = resolve_sources(tmp_path, 0.2, seed=0)
    assert sources.train.class_names == CLASSES
    assert len(sources.train) + len(sources.val) == 30 and len(sources.test) == 9


def test_an_unlabelled_test_folder_is_not_scored_and_says_so(kaggle, caplog):
    shutil.rmtree(kaggle / "test")
    (kaggle / "test").mkdir()
    for image in sorted((kaggle / "train" / "1").iterdir())[:5]:
        shutil.copy(image, kaggle / "test" / image.name)
    with caplog.at_level(logging.WARNING):
        sources = resolve_sources(kaggle, 0.2, seed=0)
    assert sources.test is None and sources.train.class_names == CLASSES
    assert "5 images without class folders" in caplog.text


def test_split_folder_mistakes_are_named(kaggle, digits_folder):
    copy_digits(digits_folder, kaggle / "valid", "val", 3)
    copy_digits(digits_folder, kaggle / "validation", "val", 3)
    with pytest.raises(ValueError, match="two val folders, valid/ and validation/"):
        resolve_sources(kaggle, 0.2, 0)
    shutil.rmtree(kaggle / "validation")
    with pytest.raises(ValueError, match="validation split of its own and val= gives"):
        resolve_sources(kaggle, kaggle / "valid", 0)
    (kaggle / "test" / "7").mkdir()
    shutil.copy(
        next((kaggle / "test" / "1").iterdir()), kaggle / "test" / "7" / "x.png"
    )
    with pytest.raises(ValueError, match=r"classes \['7'\] that the training data"):
        resolve_sources(kaggle, 0.2, 0)


def test_a_finished_run_scores_the_test_split_once_with_its_best_weights(kaggle):
    run = nbaccel.fasttrain(
        kaggle, pretrained=False, epochs=3, stop="none", background=False, **SMALL
    )
    test = run.test
    assert test is not None and test.error is None and test.images == 30
    assert test.epoch == run.best["epoch"]
    # The score is the model's on those images, computed here by hand.
    files = sorted((kaggle / "test").rglob("*.png"))
    predicted = run.predict(files).labels
    truth = [p.parent.name for p in files]
    assert test.test_acc == pytest.approx(np.mean(np.equal(predicted, truth)))
    # In the history: the best epoch's row, and no other.
    rows = [row for row in run.history if "test_acc" in row]
    assert rows == [run.best] and rows[0]["test_loss"] == test.test_loss
    started = run.events[0]
    assert (started.train_images, started.val_images, started.test_images) == (
        96,
        24,
        30,
    )


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def images(tmp_path, digits_folder) -> list[tuple[Path, str]]:
    """30 real digit images in one flat folder, with their labels."""
    flat = tmp_path / "images"
    flat.mkdir()
    pairs = []
    for name in CLASSES:
        for image in sorted((digits_folder / "train" / name).iterdir())[:10]:
            target = flat / f"{name}_{image.name}"
            shutil.copy(image, target)
            pairs.append((target, name))
    return pairs


def test_a_csv_of_paths_and_labels_relative_to_the_csv(tmp_path, images):
    table = write_csv(
        tmp_path / "labels.csv",
        ["path", "label"],
        [[f"images/{p.name}", label] for p, label in images],
    )
    sources = resolve_sources(str(table), 0.2, seed=0)
    assert sources.train.class_names == CLASSES
    assert len(sources.train) + len(sources.val) == 30 and sources.test is None
    for source in (sources.train, sources.val):
        for path, label in zip(source.items, source.labels):
            assert path.name.startswith(source.class_names[label] + "_")
            assert path.is_file()


def test_csv_columns_are_guessed_and_ids_find_their_files(tmp_path, images):
    rows = [[str(i), f"images/{p.stem}", label] for i, (p, label) in enumerate(images)]
    table = write_csv(tmp_path / "meta.csv", ["n", "image_id", "Class"], rows)
    sources = resolve_sources(table, 0.2, seed=0)
    assert sources.train.class_names == CLASSES
    assert all(p.suffix == ".png" and p.is_file() for p in sources.train.items)
    # Two unnamed columns: the one holding image file names is the path.
    rows = [[label, f"images/{p.name}"] for p, label in images]
    table = write_csv(tmp_path / "two.csv", ["what", "where"], rows)
    assert len(resolve_sources(table, 0.2, seed=0).train) == 24


def test_a_split_column_gives_val_and_test_rows(tmp_path, images):
    splits = ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    rows = [
        [f"images/{p.name}", label, splits[i % 10]]
        for i, (p, label) in enumerate(images)
    ]
    table = write_csv(tmp_path / "labels.csv", ["path", "label", "split"], rows)
    sources = resolve_sources(table, 0.2, seed=0)
    assert (len(sources.train), len(sources.val), len(sources.test)) == (18, 6, 6)
    assert sources.test.class_names == sources.train.class_names == CLASSES


def test_a_dataframe_of_absolute_paths_and_integer_labels(images):
    import pandas

    labels = [int(label) * 5 for _, label in images]  # 0, 5, 10: sorted as numbers
    frame = pandas.DataFrame({"filepath": [str(p) for p, _ in images], "y": labels})
    sources = resolve_sources(frame, 0.2, seed=0)
    assert sources.train.class_names == ("0", "5", "10")
    run = nbaccel.fasttrain(
        frame, epochs=1, pretrained=False, background=False, **SMALL
    )
    assert run.status == "finished" and run.class_names == ("0", "5", "10")


def test_table_mistakes_are_named(tmp_path, images):
    good = [[f"images/{p.name}", label] for p, label in images]
    with pytest.raises(ValueError, match="no CSV file at"):
        resolve_sources(tmp_path / "nope.csv", 0.2, 0)
    missing = write_csv(
        tmp_path / "m.csv", ["path", "label"], good + [["gone.png", "1"]]
    )
    with pytest.raises(
        ValueError, match=r"1 of 31 image files not found, e.g. \['gone.png'\]"
    ):
        resolve_sources(missing, 0.2, 0)
    unlabelled = write_csv(
        tmp_path / "u.csv", ["path", "label"], good[:-1] + [[good[-1][0], ""]]
    )
    with pytest.raises(ValueError, match="1 rows have no 'label', e.g. data row 30"):
        resolve_sources(unlabelled, 0.2, 0)
    vague = write_csv(
        tmp_path / "v.csv", ["a", "b", "c"], [[p, lab, "x"] for p, lab in good]
    )
    with pytest.raises(
        ValueError, match="cannot tell which column holds the image labels"
    ):
        resolve_sources(vague, 0.2, 0)
    bad_split = write_csv(
        tmp_path / "s.csv",
        ["path", "label", "split"],
        [[*row, "holdout"] for row in good],
    )
    with pytest.raises(
        ValueError, match=r"values \['holdout'\]; use train, val or test"
    ):
        resolve_sources(bad_split, 0.2, 0)


def test_kaggle_set_folders_and_an_empty_val_folder(tmp_path, digits_folder, caplog):
    root = tmp_path / "cats-vs-dogs"
    copy_digits(digits_folder, root / "training_set", "train", 20)
    copy_digits(digits_folder, root / "test_set", "val", 4)
    (root / "val").mkdir()  # empty: left out, with a warning
    with caplog.at_level(logging.WARNING):
        sources = resolve_sources(root, 0.25, seed=0)
    assert sources.train.class_names == CLASSES and len(sources.test) == 12
    assert (len(sources.train), len(sources.val)) == (45, 15)  # held out of train
    assert "holds no images: it is left out" in caplog.text


def test_fastai_is_valid_windows_paths_and_missing_values(tmp_path, images):
    import pandas

    rows = [
        [f"images\\{p.name}", label, i % 5 == 0] for i, (p, label) in enumerate(images)
    ]
    table = write_csv(tmp_path / "fastai.csv", ["fname", "label", "is_valid"], rows)
    sources = resolve_sources(table, 0.2, seed=0)  # val: the is_valid rows
    assert (len(sources.train), len(sources.val)) == (24, 6)
    frame = pandas.DataFrame(
        {"path": [str(p) for p, _ in images], "label": [lab for _, lab in images]}
    ).astype({"label": "string"})
    frame.loc[3, "label"] = pandas.NA
    with pytest.raises(ValueError, match="1 rows have no 'label', e.g. data row 4"):
        resolve_sources(frame, 0.2, seed=0)
