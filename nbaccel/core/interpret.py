"""Where a trained model is wrong: the confusion matrix, per-class precision, recall and F1,
top-k accuracy and the top losses, on the validation images with the best weights.

run.interpret() computes an `Interpretation` once (one pass over the validation images);
everything else is arithmetic on its predictions. Plain numpy here; the notebook view of it
lives in nbaccel/ui/interpretation.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from nbaccel.core.data import ImageSource
from nbaccel.core.loaders import TransformedImages
from nbaccel.core.predict import PREDICT_BATCH
from nbaccel.core.steps import eval_step


@dataclass(frozen=True, eq=False)
class Interpretation:
    """A model's predictions on labelled images, and what they say about its mistakes."""

    class_names: tuple[str, ...]
    targets: np.ndarray  # N true class indices
    probabilities: np.ndarray  # N x classes, rows sum to 1
    images: ImageSource  # the images, in the same order (paths or array rows)

    @property
    def predictions(self) -> np.ndarray:
        """The predicted class index of each image."""
        return self.probabilities.argmax(axis=1)

    @property
    def losses(self) -> np.ndarray:
        """Each image's cross-entropy: -log of the probability of its true class."""
        true = self.probabilities[np.arange(len(self.targets)), self.targets]
        return -np.log(np.clip(true, 1e-12, None))

    @property
    def accuracy(self) -> float:
        return float((self.predictions == self.targets).mean())

    @property
    def confusion_matrix(self) -> np.ndarray:
        """classes x classes counts: row = the true class, column = the prediction."""
        count = len(self.class_names)
        cells = self.targets * count + self.predictions
        return np.bincount(cells, minlength=count * count).reshape(count, count)

    @property
    def normalized_confusion_matrix(self) -> np.ndarray:
        """Each row divided by its class's images (its recall on the diagonal); a class
        without images has a row of zeros."""
        matrix = self.confusion_matrix.astype(float)
        totals = matrix.sum(axis=1, keepdims=True)
        return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)

    @property
    def per_class(self) -> list[dict]:
        """One row per class: precision, recall, F1 and support (its true images).
        A class never predicted has precision 0, one without images recall 0, as
        scikit-learn's zero_division=0."""
        matrix = self.confusion_matrix
        hits = np.diag(matrix).astype(float)
        predicted, support = matrix.sum(axis=0), matrix.sum(axis=1)
        precision = np.divide(
            hits, predicted, out=np.zeros_like(hits), where=predicted > 0
        )
        recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
        both = precision + recall
        f1 = np.divide(
            2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0
        )
        return [
            dict(
                name=name,
                precision=float(precision[i]),
                recall=float(recall[i]),
                f1=float(f1[i]),
                support=int(support[i]),
            )
            for i, name in enumerate(self.class_names)
        ]

    def top_k_accuracy(self, k: int) -> float:
        """The share of images whose true class is among the k most probable."""
        if not 1 <= k <= len(self.class_names):
            raise ValueError(
                f"k must be between 1 and the {len(self.class_names)} classes, got {k}"
            )
        best = np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]
        return float((best == self.targets[:, None]).any(axis=1).mean())

    def top_losses(self, k: int = 9) -> list[dict]:
        """The k images the model got most wrong (highest loss first): each with its
        index, what it is (a path, or its row in the arrays), its true and predicted
        labels, the predicted probability and the loss."""
        order = np.argsort(-self.losses, kind="stable")[:k]
        return [self._row(int(i)) for i in order]

    def cell(self, true: str, predicted: str) -> list[dict]:
        """The images of one confusion-matrix cell: true class `true`, predicted as
        `predicted`, highest loss first."""
        t, p = (self._index(name) for name in (true, predicted))
        chosen = np.flatnonzero((self.targets == t) & (self.predictions == p))
        chosen = chosen[np.argsort(-self.losses[chosen], kind="stable")]
        return [self._row(int(i)) for i in chosen]

    def _row(self, i: int) -> dict:
        predicted = int(self.predictions[i])
        item = self.images.items[i]  # a file's path, or (arrays, a Dataset) its row
        return dict(
            index=i,
            item=item if isinstance(item, (str, os.PathLike)) else i,
            label=self.class_names[int(self.targets[i])],
            predicted=self.class_names[predicted],
            probability=float(self.probabilities[i, predicted]),
            loss=float(self.losses[i]),
        )

    def _index(self, name: str) -> int:
        if name not in self.class_names:
            raise ValueError(f"no class {name!r}; the classes: {self.class_names}")
        return self.class_names.index(name)

    def __repr__(self) -> str:
        return (
            f"<nbaccel.Interpretation {len(self.targets)} images, "
            f"{len(self.class_names)} classes, accuracy {self.accuracy:.3f}>"
        )


@torch.no_grad()
def interpret(
    model: nn.Module,
    images: ImageSource,
    transform: Any,
    class_names: tuple[str, ...],
    precision: str = "fp32",
) -> Interpretation:
    """One pass of `model` (eval mode) over labelled `images` through `transform`."""
    device = next(model.parameters()).device
    model.eval()
    chunks = []
    loader = DataLoader(TransformedImages(images, transform), batch_size=PREDICT_BATCH)
    for inputs, _ in loader:
        logits = eval_step(model, inputs, device, precision).float()
        chunks.append(F.softmax(logits, dim=1).cpu())
    probabilities = torch.cat(chunks).numpy().astype(np.float64)
    targets = np.asarray(images.labels, dtype=np.int64)
    return Interpretation(tuple(class_names), targets, probabilities, images)
