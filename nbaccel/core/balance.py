"""Class imbalance: whether a run weights its training loss by class, and with what weights.

balance="auto" weights the loss when the largest class has more than IMBALANCE_RATIO times
the smallest class's training images; "weights" always does, "off" never. Each class's
weight is n / (classes x its count) (scikit-learn's "balanced"), so every class carries the
same total weight and an image's mean weight is 1: the loss keeps its scale and the
learning rate its meaning. docs/design.md says how the ratio and the remedy were chosen.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from nbaccel.core.config import IMBALANCE_RATIO
from nbaccel.core.decision import Decision


def class_counts(labels: np.ndarray, classes: int) -> np.ndarray:
    """Training images per class, every class counted (zero where it has none)."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=classes)


def decide_balance(
    requested: str, labels: np.ndarray, class_names: tuple[str, ...]
) -> tuple[Decision, Optional[tuple[float, ...]]]:
    """(the decision as RunStarted reports it, the loss's class weights or None)."""
    counts = class_counts(labels, len(class_names))
    present = counts[counts > 0]
    ratio = float(present.max() / present.min()) if len(present) else 1.0
    largest, smallest = (
        int(np.argmax(counts)),
        int(np.argmin(np.where(counts, counts, np.inf))),
    )
    spread = (
        f"class {class_names[largest]!r} has {counts[largest]} training images, "
        f"{class_names[smallest]!r} {counts[smallest]}: {ratio:.1f}x"
    )
    if requested == "off":
        return Decision("balance", False, f"balance='off'; {spread}"), None
    if requested == "auto" and ratio <= IMBALANCE_RATIO:
        why = f"{spread}, within the {IMBALANCE_RATIO:g}x that 'auto' leaves alone"
        return Decision("balance", False, why), None
    weights = np.where(
        counts > 0, counts.sum() / (len(present) * np.maximum(counts, 1)), 0.0
    )
    rule = (
        "balance='weights'"
        if requested == "weights"
        else f"over the {IMBALANCE_RATIO:g}x that 'auto' allows"
    )
    why = f"{spread}, {rule}: the loss weights each class by 1/its count"
    return Decision("balance", "class-weighted loss", why), tuple(map(float, weights))
