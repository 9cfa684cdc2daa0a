"""The data audit: exact and near duplicates, duplicates across splits (leakage), likely
mislabels, outliers, unreadable files and the class balance, from one pass of a backbone
over the images (its pooled features, as the frozen-feature cache holds them).

audit = nbaccel.audit("photos", backbone="resnet18")   # or run.audit() after training
audit.summary(); audit.files("mislabels")
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from nbaccel.core import audit_checks as checks
from nbaccel.core.data import ImageSource
from nbaccel.core.loaders import create_transforms
from nbaccel.core.model import create_backbone
from nbaccel.core.precision import resolve_device
from nbaccel.core.splits import Sources, resolve_sources

BATCH = 64
FINDINGS = (
    "exact_duplicates",
    "near_duplicates",
    "leakage",
    "mislabels",
    "outliers",
    "corrupt",
)


@dataclass(frozen=True, eq=False)
class Audit:
    """What an audit found. Each finding is a list of dicts, most telling first:

    - exact_duplicates, near_duplicates, leakage: groups of copies: `indices`, `items`
      (paths, or (split, row) for arrays and Datasets), `splits`, `labels`; near and
      leakage groups also `similarity` (the lowest within the group: 1.0 for exact copies)
      and leakage groups `kind` ("exact" or "near");
    - mislabels: `index`, `item`, `split`, `label`, `suggested`, `confidence` (the
      out-of-fold probe's probability of `suggested`, or the run's), `neighbours` (the
      share of the image's nearest neighbours labelled `suggested`) and `why`;
    - outliers: `index`, `item`, `split`, `label`, `distance` and `threshold`;
    - corrupt: `item`, `split`, `label`, `error` (the file is left out of the rest).

    `balance` holds the images per class, per split and their max/min ratio; `timings`
    the seconds the features and the checks took.
    """

    class_names: tuple[str, ...]
    items: list  # per image: its path, or (split, row)
    labels: np.ndarray  # per image: an index into class_names
    splits: tuple[str, ...]  # per image: "train", "val" or "test"
    exact_duplicates: list[dict]
    near_duplicates: list[dict]
    leakage: list[dict]
    mislabels: list[dict]
    outliers: list[dict]
    corrupt: list[dict]
    balance: dict
    timings: dict
    backbone: str
    _images: list = field(repr=False, default_factory=list)  # (source, row) per image

    def files(self, finding: str) -> list:
        """The items (paths, or (split, row)) that `finding` names, each once, in order."""
        if finding not in FINDINGS:
            raise ValueError(f"no finding {finding!r}; the findings: {FINDINGS}")
        seen: dict = {}
        for row in getattr(self, finding):
            for item in row["items"] if "items" in row else [row["item"]]:
                seen.setdefault(str(item), item)
        return list(seen.values())

    def load(self, index: int) -> Image.Image:
        """Image `index` (as the findings number them) as an RGB PIL image."""
        source, row = self._images[index]
        return source.load(row)

    def summary(self) -> str:
        """One line per finding, and the balance."""
        counts = self.balance["counts"]
        lines = [
            f"{len(self.items)} images, {len(self.class_names)} classes "
            f"({self.backbone}; features {self.timings['features_s']:.1f} s, "
            f"checks {self.timings['checks_s']:.2f} s)",
            f"exact duplicates: {_groups(self.exact_duplicates)}",
            f"near duplicates: {_groups(self.near_duplicates)}",
            f"leakage across splits: {_groups(self.leakage)}",
            f"likely mislabels: {len(self.mislabels)}",
            f"outliers: {len(self.outliers)}",
            f"unreadable files: {len(self.corrupt)}",
            f"balance: {min(counts.values())} to {max(counts.values())} images a class "
            f"(ratio {self.balance['ratio']:.1f})",
        ]
        return "\n".join(lines)

    def __repr__(self) -> str:
        found = ", ".join(f"{len(getattr(self, name))} {name}" for name in FINDINGS)
        return f"<nbaccel.Audit {len(self.items)} images: {found}>"


def _groups(groups: list[dict]) -> str:
    return f"{len(groups)} groups, {sum(len(g['indices']) for g in groups)} images"


def audit(
    data: Any,
    backbone: str = "resnet18",
    pretrained: Union[bool, str, os.PathLike] = True,
    val: Any = 0.2,
    image_size: Optional[int] = None,
    device: str = "auto",
    seed: int = 0,
    near_duplicate: float = checks.NEAR_DUPLICATE,
) -> Audit:
    """Audits labelled images with a backbone's pooled features.

    Args:
        data: anything fasttrain() takes (a folder with or without split folders, a CSV
            or DataFrame, an (images, labels) pair, a Dataset); its splits are read as
            fasttrain() reads them, so leakage across train, val and test is known.
        backbone: a timm model name; its features place the images.
        pretrained: True for timm's weights, a path for a local weights file (random
            weights place images by pixels alone, and find little but exact copies).
        val, seed: as for fasttrain(): the held-out share when the data has no val split.
        image_size: the backbone's input size (default: its own).
        device: "auto" (CUDA, then MPS, then CPU) or a device name.
        near_duplicate: the cosine similarity of two images' features from which they
            are near copies. 0.98 suits ImageNet features; a backbone trained on few
            classes packs its features tighter and needs more (docs/design.md). Images
            whose grey 16 x 16 thumbnails are all but equal (re-encoded, re-saved or
            resized copies) are near copies whatever their features say.
    """
    sources = resolve_sources(data, val, seed)
    model = create_backbone(backbone, pretrained, len(sources.train.class_names))
    _, transform, _ = create_transforms(model, image_size, "none")
    model.to(resolve_device(device))
    return audit_sources(model, sources, transform, backbone, False, near_duplicate)


def audit_sources(
    model: nn.Module,
    sources: Sources,
    transform: Any,
    backbone: str,
    with_predictions: bool,
    near_duplicate: Optional[float] = checks.NEAR_DUPLICATE,
) -> Audit:
    """The audit of `sources` with `model` (left as it was but for eval mode), and with
    its predictions as a further vote on the labels when `with_predictions`.
    `near_duplicate` None: near copies by pixels only."""
    number = isinstance(near_duplicate, (int, float)) and 0 < near_duplicate <= 1
    if near_duplicate is not None and not number:
        raise ValueError(
            "near_duplicate is a cosine similarity between 0 and 1 (e.g. 0.98), got "
            f"{near_duplicate!r}"
        )
    images = [
        (split, source, row)
        for split, source in (("train", sources.train), ("val", sources.val))
        + ((("test", sources.test),) if sources.test is not None else ())
        for row in range(len(source))
    ]
    start = time.perf_counter()
    scan = _scan(model, images, transform, with_predictions)
    features_s = time.perf_counter() - start
    start = time.perf_counter()
    findings = _check(scan, images, len(sources.train.class_names), near_duplicate)
    timings = dict(features_s=features_s, checks_s=time.perf_counter() - start)
    return Audit(
        class_names=sources.train.class_names,
        items=[_item(split, source, row) for split, source, row in images],
        labels=np.array([source.labels[row] for _, source, row in images]),
        splits=tuple(split for split, _, _ in images),
        timings=timings,
        backbone=backbone,
        _images=[(source, row) for _, source, row in images],
        **findings,
    )


def _item(split: str, source: ImageSource, row: int) -> Any:
    item = source.items[row]
    return item if isinstance(item, (str, os.PathLike)) else (split, row)


@dataclass
class _Scan:
    """One pass over the images: what the checks need."""

    readable: np.ndarray  # the images that decoded, as indices
    hashes: list[bytes]  # of each readable image's decoded pixels
    thumbnails: (
        np.ndarray
    )  # readable x THUMBNAIL**2: grey, 0-1 (audit_checks.thumbnail)
    features: torch.Tensor  # readable x D, rows L2-normalised
    probabilities: Optional[np.ndarray]  # readable x classes, with_predictions only
    corrupt: list[tuple[int, str]]  # (image, error) for those that did not decode


@torch.no_grad()
def _scan(
    model: nn.Module, images: list, transform: Any, with_predictions: bool
) -> _Scan:
    """Decodes each image once: hashes its pixels, runs the model in batches (fp32: the
    duplicate threshold is a cosine near 1, which bf16's few mantissa bits would blur)."""
    device = next(model.parameters()).device
    model.eval()
    readable, hashes, thumbnails, corrupt = [], [], [], []
    features, probabilities, batch = [], [], []

    def flush() -> None:
        x = torch.stack(batch).to(device)
        body = model.forward_features(x)
        pooled = model.forward_head(body, pre_logits=True).float()
        features.append(F.normalize(pooled.flatten(1), dim=1).cpu())
        if with_predictions:
            probabilities.append(model.forward_head(body).float().softmax(1).cpu())
        batch.clear()

    for index, (_, source, row) in enumerate(images):
        try:
            image = source.load(row)
            tensor = transform(image)
        except Exception as error:  # noqa: BLE001 - any undecodable file is a finding
            corrupt.append((index, f"{type(error).__name__}: {error}"))
            continue
        pixels = np.asarray(image)
        shape = np.asarray(pixels.shape, dtype=np.int64).tobytes()
        hashes.append(hashlib.blake2b(pixels.tobytes() + shape).digest())
        thumbnails.append(checks.thumbnail(image))
        readable.append(index)
        batch.append(tensor)
        if len(batch) == BATCH:
            flush()
    if batch:
        flush()
    return _Scan(
        np.array(readable, dtype=np.int64),
        hashes,
        np.array(thumbnails, dtype=np.float32).reshape(len(readable), -1),
        torch.cat(features) if features else torch.zeros(0, 1),
        torch.cat(probabilities).numpy() if with_predictions and features else None,
        corrupt,
    )


def _check(
    scan: _Scan, images: list, classes: int, near_duplicate: Optional[float]
) -> dict:
    """Every finding from the scan: the checks run on the readable images, and their
    indices are mapped back to all images'."""
    ids = scan.readable
    labels = np.array([images[i][1].labels[images[i][2]] for i in ids], dtype=np.int64)
    exact = checks.exact_groups(scan.hashes)
    findings: dict[str, list] = {name: [] for name in FINDINGS}
    if len(ids) > 1:
        wide = checks.NEIGHBOURS + 10  # room for the copies own_neighbours leaves out
        similar, nearest = checks.nearest_neighbours(scan.features, wide)
        by_features = similar >= (2.0 if near_duplicate is None else near_duplicate)
        copies = by_features | (
            checks.pixel_distances(scan.thumbnails, nearest) <= checks.PIXEL_COPY
        )
        near = checks.near_groups(copies, nearest, exact)
        for group in checks.members(exact):
            row = _group(group, ids, images, 1.0)
            findings["exact_duplicates"].append(row)
            if len(set(row["splits"])) > 1:
                findings["leakage"].append(dict(row, kind="exact"))
        for group in checks.members(near):
            if len(set(exact[group])) > 1:  # not only exact copies of one image
                lowest = float((scan.features[group] @ scan.features[group].T).min())
                row = _group(group, ids, images, lowest)
                findings["near_duplicates"].append(row)
                if _spans_splits(exact[group], row["splits"]):
                    findings["leakage"].append(dict(row, kind="near"))
        neighbour_s, neighbour_i = checks.own_neighbours(
            similar, nearest, near, checks.NEIGHBOURS
        )
        shares = checks.vote(labels[neighbour_i], classes)
        probe = checks.out_of_fold_probabilities(scan.features, labels, classes)
        names = images[0][1].class_names
        for i, suggested, confidence, why in checks.likely_mislabels(
            probe, labels, scan.probabilities
        ):
            findings["mislabels"].append(
                dict(
                    _one(i, ids, images),
                    suggested=names[suggested],
                    confidence=confidence,
                    neighbours=float(shares[i, suggested]),
                    why=why,
                )
            )
        distance, threshold = checks.outlier_scores(neighbour_s)
        for i in np.argsort(-distance, kind="stable"):
            if distance[i] <= threshold:
                break
            row = _one(int(i), ids, images)
            findings["outliers"].append(
                dict(row, distance=float(distance[i]), threshold=threshold)
            )
    for index, error in scan.corrupt:
        split, source, row = images[index]
        findings["corrupt"].append(
            dict(
                index=index,
                item=_item(split, source, row),
                split=split,
                label=source.class_names[int(source.labels[row])],
                error=error,
            )
        )
    findings["near_duplicates"].sort(key=lambda g: -g["similarity"])
    return dict(findings, balance=_balance(images))


def _spans_splits(exact_ids: np.ndarray, splits: list[str]) -> bool:
    """Whether a near group holds two images in different splits that are not exact
    copies of each other (those are leakage of the exact kind, reported once)."""
    pairs = list(zip(exact_ids.tolist(), splits))
    return any(
        g != h and s != t for i, (g, s) in enumerate(pairs) for h, t in pairs[i + 1 :]
    )


def _group(group: np.ndarray, ids: np.ndarray, images: list, similarity: float) -> dict:
    rows = [_one(int(i), ids, images) for i in group]
    return dict(
        indices=[r["index"] for r in rows],
        items=[r["item"] for r in rows],
        splits=[r["split"] for r in rows],
        labels=[r["label"] for r in rows],
        similarity=similarity,
    )


def _one(i: int, ids: np.ndarray, images: list) -> dict:
    """Readable image `i` as a finding's row: its index among all images, item, split
    and label."""
    index = int(ids[i])
    split, source, row = images[index]
    return dict(
        index=index,
        item=_item(split, source, row),
        split=split,
        label=source.class_names[int(source.labels[row])],
    )


def _balance(images: list) -> dict:
    """Images per class (all splits, unreadable ones included), per split, and the
    ratio of the largest class to the smallest."""
    names = images[0][1].class_names
    per_split: dict[str, dict[str, int]] = {}
    for split, source, row in images:
        counts = per_split.setdefault(split, dict.fromkeys(names, 0))
        counts[names[int(source.labels[row])]] += 1
    total = {n: sum(c[n] for c in per_split.values()) for n in names}
    smallest = min(total.values())
    ratio = max(total.values()) / smallest if smallest else float("inf")
    return dict(counts=total, per_split=per_split, ratio=ratio)
