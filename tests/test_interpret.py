"""run.interpret() (#13): the confusion matrix, per-class metrics, top-k accuracy and top
losses equal scikit-learn's on the same predictions; the view renders in both backends."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics

import nbaccel
from nbaccel.ui import InterpretationView
from tests.conftest import SMALL, wait_for


@pytest.fixture(scope="module")
def interp(trained):
    return trained.interpret()


def test_the_figures_equal_scikit_learns_on_the_same_predictions(trained, interp):
    targets, probabilities = interp.targets, interp.probabilities
    predictions = probabilities.argmax(axis=1)
    classes = range(len(interp.class_names))
    assert np.array_equal(
        interp.confusion_matrix,
        metrics.confusion_matrix(targets, predictions, labels=list(classes)),
    )
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        targets, predictions, labels=list(classes), zero_division=0
    )
    rows = interp.per_class
    assert [r["name"] for r in rows] == list(trained.class_names)
    assert np.allclose([r["precision"] for r in rows], precision)
    assert np.allclose([r["recall"] for r in rows], recall)
    assert np.allclose([r["f1"] for r in rows], f1)
    assert [r["support"] for r in rows] == support.tolist()
    for k in (2, 3):
        assert interp.top_k_accuracy(k) == pytest.approx(
            metrics.top_k_accuracy_score(
                targets, probabilities, k=k, labels=list(classes)
            )
        )
    normalized = metrics.confusion_matrix(
        targets, predictions, labels=list(classes), normalize="true"
    )
    assert np.allclose(interp.normalized_confusion_matrix, normalized)


def test_it_scores_the_validation_images_with_the_best_weights(
    trained, interp, digits_high
):
    files = sorted((digits_high / "val").rglob("*.png"))
    assert len(interp.targets) == len(files) == trained.events[0].val_images
    assert interp.accuracy == pytest.approx(trained.best["val_acc"], abs=1 / len(files))
    # The same predictions as run.predict() on the files the top losses name.
    worst = interp.top_losses(5)
    labels, probabilities = trained.predict([row["item"] for row in worst])
    assert labels == [row["predicted"] for row in worst]
    # On a GPU a batch's make-up changes TF32 convolutions' rounding (cuDNN's default).
    on_gpu = trained.events[0].device.startswith("cuda")
    assert np.allclose(
        probabilities.max(axis=1),
        [r["probability"] for r in worst],
        atol=2e-3 if on_gpu else 1e-4,
    )
    assert [row["label"] for row in worst] == [row["item"].parent.name for row in worst]
    losses = [row["loss"] for row in interp.top_losses(len(files))]
    assert losses == sorted(losses, reverse=True) and losses[0] == interp.losses.max()


def test_a_cell_holds_the_images_counted_in_it(interp):
    matrix = interp.confusion_matrix
    names = interp.class_names
    true, predicted = np.unravel_index(
        np.argmax(matrix - np.diag(np.diag(matrix))), matrix.shape
    )
    rows = interp.cell(names[true], names[predicted])
    assert len(rows) == matrix[true, predicted]
    assert {(r["label"], r["predicted"]) for r in rows} <= {
        (names[true], names[predicted])
    }
    with pytest.raises(ValueError, match="no class 'cat'"):
        interp.cell("cat", names[0])
    with pytest.raises(ValueError, match="k must be between 1 and the 5 classes"):
        interp.top_k_accuracy(6)


def test_both_backends_render_the_view(interp):
    html_view = InterpretationView(interp, charts="html")
    table, heatmaps, gallery = html_view.bundles()
    assert "precision" in table["text/html"] and "top-2" in table["text/html"]
    heatmap = heatmaps["application/vnd.plotly.v1+json"]["data"][0]
    assert (
        heatmap["type"] == "heatmap"
        and heatmap["z"] == interp.confusion_matrix.tolist()
    )
    assert gallery["text/html"].count("<img src='data:image/png;base64,") == 12
    widget_view = InterpretationView(interp, charts="widget")
    names = interp.class_names
    shown = widget_view.show_cell(names[0], names[0])  # what a click on the cell shows
    assert widget_view._cell.value == shown
    assert f"true {names[0]}, predicted {names[0]}" in shown


def test_interpret_needs_an_ended_run(digits_high):
    run = nbaccel.fasttrain(
        digits_high, pretrained=False, epochs=50, stop="none", **SMALL
    )
    with pytest.raises(RuntimeError, match=r"run.interpret\(\) needs an ended run"):
        run.interpret()
    wait_for(lambda: run.history)  # one epoch: best weights to interpret
    run.stop()
    assert run.interpret().confusion_matrix.sum() == run.events[0].val_images
