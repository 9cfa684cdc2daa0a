"""A table of image paths and labels as data: a .csv file, or a pandas DataFrame.

The columns are `path` and `label` (any case), or guessed from the names people use
(`filename`, `image`, `id`; `class`, `category`, `target`, ...) or, with two columns, from
which one holds image file names. Relative paths start at the CSV file's folder (at the
working directory for a DataFrame); a path without an extension (a Kaggle `id`) matches
the image file with that name. An optional `split` column (train, val, test, ...) says
which rows validate and which test. Nothing imports pandas: a DataFrame is read through
its `columns` and columns' `tolist()`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from nbaccel.core.data import (
    IMAGE_EXTENSIONS,
    SPLIT_NAMES,
    ImageSource,
    checked,
    index_labels,
)

PATH_COLUMNS = (
    "path",
    "filepath",
    "file_path",
    "image_path",
    "filename",
    "file_name",
    "file",
    "image",
    "img",
    "image_id",
    "id",
)
LABEL_COLUMNS = ("label", "class", "class_name", "category", "target", "y")
SPLIT_COLUMN = "split"
VALID_COLUMN = "is_valid"  # fastai's ColSplitter column: true for validation rows


def is_table(data: Any) -> bool:
    """A .csv file's path, or a DataFrame-like object (columns, each with tolist())."""
    if isinstance(data, (str, os.PathLike)):
        return Path(os.fspath(data)).suffix.lower() == ".csv"
    return hasattr(data, "columns") and hasattr(data, "iloc")


def read_table(
    data: Any, class_names: Optional[tuple[str, ...]] = None
) -> dict[str, ImageSource]:
    """The table's sources by split ({"train": ...} alone without a split column).

    Raises:
        ValueError: the file is missing or empty, the path or label column cannot be
            found, image files are missing, or a split value is unknown.
    """
    columns, base, where = _read_columns(data)
    path_column = _pick(columns, PATH_COLUMNS, "path", where, _image_share)
    label_column = _pick(
        {k: v for k, v in columns.items() if k != path_column},
        LABEL_COLUMNS,
        "label",
        where,
    )
    paths = _find_images(columns[path_column], base, where)
    labels = _labels(columns[label_column], where, label_column)
    splits = _split_rows(columns, where)
    if not splits:
        names, indices = index_labels(labels, class_names)
        return {
            "train": checked(
                ImageSource(paths, indices, names), where, class_names is None
            )
        }
    rows = splits.get("train")
    if rows is None:
        raise ValueError(
            f"{where}: the {SPLIT_COLUMN!r} column has no training rows (values like "
            "'train'); every split needs some rows, the training split most of all"
        )
    names, _ = index_labels(labels[rows], class_names)
    return {
        split: checked(
            ImageSource(
                [paths[i] for i in chosen],
                index_labels(labels[chosen], names)[1],
                names,
            ),
            f"the {split} rows of {where}",
            split == "train" and class_names is None,
        )
        for split, chosen in splits.items()
    }


def _read_columns(data: Any) -> tuple[dict[str, list], Path, str]:
    """Columns by lower-cased name, the folder relative paths start at, and a name for
    the table in messages."""
    if not isinstance(data, (str, os.PathLike)):
        frame_columns = {str(c).strip().lower(): data[c].tolist() for c in data.columns}
        if len(frame_columns) != len(data.columns):
            raise ValueError(
                "the DataFrame has two columns whose names differ only in case"
            )
        return frame_columns, Path.cwd(), "the DataFrame"
    path = Path(os.fspath(data)).expanduser()
    where = repr(str(path))
    if not path.is_file():
        raise ValueError(
            f"no CSV file at {where}; check the path (relative paths start at {os.getcwd()!r})"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: Excel's byte-order mark
    except UnicodeDecodeError:  # Excel's "CSV" on Windows: cp1252, which latin-1 reads
        text = path.read_text(encoding="latin-1")
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    if not reader.fieldnames:
        raise ValueError(f"{where} is empty; expected a header row such as path,label")
    names = [name.strip().lower() for name in reader.fieldnames]
    if len(set(names)) != len(names):
        raise ValueError(f"{where} has two columns whose names differ only in case")
    file_columns: dict[str, list] = {name: [] for name in names}
    for row in reader:
        for name, value in zip(names, row.values()):
            file_columns[name].append("" if value is None else value.strip())
    return file_columns, path.parent, where


def _pick(
    columns: dict[str, list],
    known: Sequence[str],
    role: str,
    where: str,
    score: Optional[Any] = None,
) -> str:
    """The column for `role`: named so, one of the `known` names, the one column left,
    or (with `score`) the only column that mostly holds image file names."""
    for name in known:
        if name in columns:
            return name
    if score is not None:
        likely = [name for name, values in columns.items() if score(values) > 0.5]
        if len(likely) == 1:
            return likely[0]
    candidates = [name for name in columns if name not in (SPLIT_COLUMN, VALID_COLUMN)]
    if role == "label" and len(candidates) == 1:
        return candidates[0]
    raise ValueError(
        f"{where}: cannot tell which column holds the image {role}s among "
        f"{list(columns)}; name it {role!r} (the columns used are 'path' and 'label')"
    )


def _image_share(values: list) -> float:
    if not values:
        return 0.0
    return sum(str(v).lower().endswith(IMAGE_EXTENSIONS) for v in values) / len(values)


def _find_images(values: list, base: Path, where: str) -> list[Path]:
    """Each row's image file; refuses missing files, naming the first few."""
    found, missing = [], []
    for value in values:
        path = None if _is_missing(value) else _find_image(str(value).strip(), base)
        if path is None:
            missing.append("<empty>" if _is_missing(value) else str(value))
        found.append(path)
    if missing:
        raise ValueError(
            f"{where}: {len(missing)} of {len(values)} image files not found, e.g. "
            f"{missing[:3]}; relative paths start at {str(base)!r}"
        )
    return found


def _find_image(value: str, base: Path) -> Optional[Path]:
    """The file `value` names (relative to `base`), trying the image extensions for a
    name without one; None if there is none."""
    path = Path(value.replace("\\", "/")).expanduser()  # a path written on Windows
    path = path if path.is_absolute() else base / path
    candidates = [path]
    if not path.suffix:
        candidates += [path.with_name(path.name + ext) for ext in IMAGE_EXTENSIONS]
    return next((c for c in candidates if c.is_file()), None)


def _labels(values: list, where: str, column: str) -> np.ndarray:
    """Labels as an array: integers when every label is one (so 2 sorts before 10)."""
    empty = [i for i, v in enumerate(values) if _is_missing(v)]
    if empty:
        raise ValueError(
            f"{where}: {len(empty)} rows have no {column!r}, e.g. data row "
            f"{empty[0] + 1}; give every image a label or drop those rows"
        )
    text = [str(v).strip() for v in values]
    if all(t.lstrip("-").isdigit() for t in text):
        return np.array([int(t) for t in text], dtype=np.int64)
    return np.array(text)


def _is_missing(value: Any) -> bool:
    """An empty cell: None, blank text, or a DataFrame's NaN or pd.NA."""
    if value is None or str(value).strip() in ("", "<NA>"):
        return True
    try:
        return bool(value != value)  # NaN
    except TypeError:  # pd.NA has no truth value
        return True


def _split_rows(columns: dict[str, list], where: str) -> dict[str, np.ndarray]:
    """Row indices by split, from the `split` column, or fastai's `is_valid` (true: a
    validation row); {} without either."""
    if SPLIT_COLUMN not in columns and VALID_COLUMN in columns:
        flags = [
            str(v).strip().lower() in ("1", "true", "yes")
            for v in columns[VALID_COLUMN]
        ]
        rows, valid = np.arange(len(flags)), np.array(flags, dtype=bool)
        return {"train": rows[~valid], "val": rows[valid]} if valid.any() else {}
    if SPLIT_COLUMN not in columns:
        return {}
    values = [str(v).strip().lower() for v in columns[SPLIT_COLUMN]]
    unknown = sorted(set(values) - set(SPLIT_NAMES))
    if unknown:
        raise ValueError(
            f"{where}: the {SPLIT_COLUMN!r} column has values {unknown[:5]}; use "
            f"train, val or test"
        )
    splits: dict[str, list[int]] = {}
    for row, value in enumerate(values):
        splits.setdefault(SPLIT_NAMES[value], []).append(row)
    return {split: np.array(rows, dtype=np.int64) for split, rows in splits.items()}
