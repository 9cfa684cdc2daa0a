"""The audit's checks, as arithmetic on what one pass over the images gave: a hash of each
image's decoded pixels, its L2-normalised pooled features and its label.

Plain numpy and torch (for the blockwise similarity); nbaccel/core/auditing.py makes the pass and
keeps the findings. The thresholds are measured on the bundled digits with injected faults
(docs/design.md, "Auditing the data").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

NEAR_DUPLICATE = 0.98  # cosine similarity of features from which two images are copies
# ...or the mean absolute difference (0-1) of their grey THUMBNAIL x THUMBNAIL thumbnails
# under which they are: re-encoded copies of the digits measured <= 0.004, two distinct
# scans >= 0.015 (docs/design.md)
PIXEL_COPY = 0.008
THUMBNAIL = 16
NEIGHBOURS = 10  # the k nearest neighbours: their distance, and their labels' shares
PROBE_FOLDS = 5  # the out-of-fold linear probe that votes on each label
PROBE_DECAY = 1e-3
MISLABEL_OWN = 0.02  # a likely mislabel: the probe gives its label at most this...
MISLABEL_OTHER = 0.8  # ...and another label at least this
RUN_CONFIDENCE = 0.9  # run.audit(): a prediction this sure of another label is flagged
OUTLIER_MADS = (
    6.0  # an outlier: its neighbours' distance this many MADs above the median
)
BLOCK = 2048  # rows of the similarity matrix held at once (BLOCK x N floats)


def exact_groups(hashes: Sequence[bytes]) -> np.ndarray:
    """A group id per image: equal ids for equal pixel hashes (the first image's index)."""
    first: dict[bytes, int] = {}
    return np.array([first.setdefault(h, i) for i, h in enumerate(hashes)])


def nearest_neighbours(features: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(N x k similarities, N x k indices) of each row's k most similar other rows, most
    similar first. `features`: N x D, rows L2-normalised, so a product is a cosine."""
    count = len(features)
    k = min(k, count - 1)
    similarities, indices = [], []
    for start in range(0, count, BLOCK):
        block = features[start : start + BLOCK] @ features.T  # B x N
        rows = torch.arange(len(block))
        block[rows, rows + start] = -torch.inf  # not its own neighbour
        values, where = block.topk(k, dim=1)
        similarities.append(values)
        indices.append(where)
    return torch.cat(similarities).numpy(), torch.cat(indices).numpy()


def thumbnail(image: Image.Image) -> np.ndarray:
    """The image in grey at THUMBNAIL x THUMBNAIL (bilinear), 0-1: what two copies of a
    picture still share after re-encoding or resizing."""
    small = image.convert("L").resize((THUMBNAIL, THUMBNAIL), Image.BILINEAR)
    return np.asarray(small, dtype=np.float32).ravel() / 255.0


def pixel_distances(thumbnails: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """N x k: the mean absolute difference between each image's thumbnail and those of
    its k neighbours (`indices`, N x k), in blocks of BLOCK rows."""
    out = np.empty(indices.shape, dtype=np.float32)
    for start in range(0, len(indices), BLOCK):
        rows = slice(start, start + BLOCK)
        own = thumbnails[rows][:, None, :]
        out[rows] = np.abs(own - thumbnails[indices[rows]]).mean(axis=2)
    return out


def near_groups(
    copies: np.ndarray, indices: np.ndarray, exact: np.ndarray
) -> np.ndarray:
    """A group id per image: images joined by a chain of neighbour pairs that are
    `copies` (N x k, True where image i and its neighbour indices[i, j] are copies), and
    exact copies. Union-find over the exact groups."""
    parent = {int(g): int(g) for g in np.unique(exact)}

    def root(g: int) -> int:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    rows, columns = np.nonzero(copies)
    for i, j in zip(rows, indices[rows, columns]):
        a, b = root(int(exact[i])), root(int(exact[j]))
        if a != b:
            parent[max(a, b)] = min(a, b)
    return np.array([root(int(g)) for g in exact])


def members(groups: np.ndarray) -> list[np.ndarray]:
    """The images of each group with two or more, in order of their first image."""
    found: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        found[int(g)].append(i)
    return [np.array(m) for g, m in sorted(found.items()) if len(m) > 1]


def own_neighbours(
    similarities: np.ndarray, indices: np.ndarray, groups: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each image's k nearest neighbours that are not its own copies (exact or near): a
    copy would vouch for the image's label, and its distance says nothing about outliers.
    Rows with fewer left are padded with their last neighbour."""
    keep = groups[indices] != groups[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept ones first, in order
    chosen_s = np.take_along_axis(similarities, order, axis=1)
    chosen_i = np.take_along_axis(indices, order, axis=1)
    return chosen_s, chosen_i


def vote(neighbour_labels: np.ndarray, classes: int) -> np.ndarray:
    """N x classes: the share of each image's neighbours carrying each label.
    `neighbour_labels`: N x k."""
    tallies = np.zeros((len(neighbour_labels), classes))
    rows = np.arange(len(neighbour_labels))[:, None]
    np.add.at(tallies, (rows, neighbour_labels), 1.0 / neighbour_labels.shape[1])
    return tallies


def out_of_fold_probabilities(
    features: torch.Tensor, labels: np.ndarray, classes: int, seed: int = 0
) -> np.ndarray:
    """N x classes: each image's class probabilities from a linear probe (softmax
    regression on the standardised features, L-BFGS, weight decay PROBE_DECAY) trained
    on the other PROBE_FOLDS - 1 folds, so an image never votes on its own label."""
    x = (features - features.mean(0)) / (features.std(0) + 1e-6)
    fold = np.random.default_rng(seed).permutation(len(labels)) % PROBE_FOLDS
    out = np.zeros((len(labels), classes))
    for k in range(PROBE_FOLDS):
        held = torch.from_numpy(fold == k)
        train_y = torch.from_numpy(labels[~held.numpy()])
        weight, bias = _fit_probe(x[~held], train_y, classes)
        out[held.numpy()] = (x[held] @ weight + bias).softmax(1).numpy()
    return out


def _fit_probe(
    x: torch.Tensor, y: torch.Tensor, classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax regression's (weight, bias) on `x` (N x D) for labels `y`."""
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    solver = torch.optim.LBFGS(
        [weight, bias], max_iter=100, line_search_fn="strong_wolfe"
    )

    def loss() -> torch.Tensor:
        solver.zero_grad()
        value = F.cross_entropy(x @ weight + bias, y)
        value = value + PROBE_DECAY * weight.square().sum()
        value.backward()
        return value

    with torch.enable_grad():
        solver.step(loss)
    return weight.detach(), bias.detach()


def likely_mislabels(
    probe: np.ndarray, labels: np.ndarray, run: Optional[np.ndarray]
) -> list[tuple[int, int, float, str]]:
    """(image, suggested label, confidence, why) for each likely mislabel, most confident
    first: the out-of-fold probe gives its label at most MISLABEL_OWN and another at
    least MISLABEL_OTHER (confident learning's idea, with fixed thresholds); or (with a
    run's probabilities) the run predicts another label with RUN_CONFIDENCE or more."""
    found: dict[int, tuple[int, float, str]] = {}
    rows = np.arange(len(labels))
    own = probe[rows, labels]
    others = probe.copy()
    others[rows, labels] = -1.0
    suggested = others.argmax(axis=1)
    sure = others[rows, suggested]
    for i in np.flatnonzero((own <= MISLABEL_OWN) & (sure >= MISLABEL_OTHER)):
        found[int(i)] = (int(suggested[i]), float(sure[i]), "probe")
    if run is not None:
        predicted, confidence = run.argmax(axis=1), run.max(axis=1)
        for i in np.flatnonzero((predicted != labels) & (confidence >= RUN_CONFIDENCE)):
            why = "run" if int(i) not in found else "probe and run"
            found[int(i)] = (int(predicted[i]), float(confidence[i]), why)
    return sorted(((i, *found[i]) for i in found), key=lambda row: -row[2])


def outlier_scores(similarities: np.ndarray) -> tuple[np.ndarray, float]:
    """(each image's distance to its neighbours: 1 - their mean similarity, the distance
    above which an image is an outlier: the median plus OUTLIER_MADS robust deviations)."""
    distance = 1.0 - similarities.mean(axis=1)
    median = float(np.median(distance))
    spread = 1.4826 * float(np.median(np.abs(distance - median)))  # the MAD, as a sigma
    return distance, median + OUTLIER_MADS * max(spread, 1e-6)
