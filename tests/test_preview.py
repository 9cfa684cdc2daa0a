"""run.show_batch() (#13): the training images exactly as the model sees them, and the
panel's two on-demand sections: that batch, and the interpretation once a run has ended."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

import nbaccel
import nbaccel.ui.batch
from nbaccel.core import prepare_run
from nbaccel.core.loaders import split_transform, transforms_for
from nbaccel.core.splits import resolve_sources
from nbaccel.ui import panel_for
from tests.conftest import SMALL


def test_a_batch_is_the_training_images_as_fed_with_their_labels(trained):
    before = random.getstate(), torch.get_rng_state()
    preview = trained.show_batch(8, seed=3)
    assert random.getstate() == before[0]  # the caller's random state untouched
    assert torch.equal(torch.get_rng_state(), before[1])
    assert preview.images.shape == (8, 32, 32, 3) and preview.images.dtype == np.uint8
    assert preview.augment == "none"  # 3 epochs: "auto" does not augment
    # Each image is its file after the transform's resize and crop: the normalisation
    # undone gives back the pixels, and the label is the file's folder.
    transform = trained._training.transform
    resize = split_transform(transform)[0]
    for image, item, label in zip(preview.images, preview.items, preview.label_names):
        expected = np.asarray(resize(Image.open(item).convert("RGB")))
        assert np.abs(image.astype(int) - expected.astype(int)).max() <= 1
        assert item.split("/")[-2] == label
    again = trained.show_batch(8, seed=3)
    assert again.items == preview.items and np.array_equal(again.images, preview.images)
    assert trained.show_batch(8, seed=4).items != preview.items


def test_an_augmented_batch_shows_the_random_crops_before_and_after(
    digits_high, tmp_path
):
    config = nbaccel.TrainConfig(
        digits_high,
        pretrained=False,
        augment="light",
        epochs=1,
        checkpoint_dir=str(tmp_path),
        **SMALL,
    )
    run = prepare_run(config)
    preview = run.show_batch(16)
    assert preview.augment == "light"
    assert run.status == "pending"  # previewing starts nothing
    sources = resolve_sources(digits_high, 0.2, 0)
    index = {str(item): i for i, item in enumerate(sources.train.items)}
    resize = split_transform(transforms_for(run.data_config, "none")[1])[0]
    # random 80-100% crops: some images differ from the plain resize of their file
    differ = [
        np.abs(
            image.astype(int)
            - np.asarray(resize(sources.train.load(index[item]))).astype(int)
        ).max()
        > 8
        for image, item in zip(preview.images, preview.items)
    ]
    assert any(differ), "no crop changed any image"
    # The run read back from its checkpoint rebuilds the same transform.
    run.start(background=False)
    saved = nbaccel.load_run(nbaccel.runs(tmp_path)[0].path)
    again = saved.show_batch(16)
    assert again.augment == "light" and again.items == preview.items
    assert np.array_equal(again.images, preview.images)


def test_bad_counts_are_refused(trained):
    for count in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="count must be a whole number"):
            trained.show_batch(count)


def test_the_grid_shows_as_the_cells_last_line(shell, trained, monkeypatch):
    shown = []
    monkeypatch.setattr(nbaccel.ui.batch, "display", shown.append)
    shell.run_line_magic("load_ext", "nbaccel")
    try:
        shell.user_ns["run"] = trained
        shell.run_cell("run.show_batch(6)").raise_error()
    finally:
        shell.run_line_magic("unload_ext", "nbaccel")
    (grid,) = shown
    assert grid.data.count("<img src='data:image/png;base64,") == 6
    assert "6 training images as the model sees them" in grid.data


def test_the_panel_shows_the_batch_and_then_where_the_model_is_wrong(trained):
    panel = panel_for(trained, charts="widget")
    assert panel.batch.widget.layout.display is None  # a run: its batch can be opened
    assert panel.batch.body.children == ()  # nothing decoded until it is opened
    panel.batch.open()
    (grid,) = panel.batch.body.children
    assert grid.value.count("<img src=") == 16
    # The run has ended with its best weights: the interpretation can be opened.
    assert panel.results.widget.layout.display is None
    panel.results.open()
    (view,) = panel.results.body.children
    metrics = view.children[0].value
    interp = trained.interpret()
    assert f"accuracy {interp.accuracy:.3f}" in metrics
    assert metrics.count("<tr>") == len(trained.class_names) + 1
    # ... and the data audit, with the run's features and predictions.
    assert panel.audit.widget.layout.display is None and not panel.audit.body.children
    panel.audit.open()
    (audit,) = panel.audit.body.children
    summary = audit.children[0].value
    sources = resolve_sources(trained.config.data, 0.2, 0)
    images = len(sources.train) + len(sources.val)
    assert f"{images} images, {len(trained.class_names)} classes" in summary
    assert "likely mislabels" in summary


def test_the_panel_ships_an_int8_model_or_says_why_not(trained, tmp_path):
    panel = panel_for(trained, charts="off")
    panel.ship.open()
    (box,) = panel.ship.body.children
    row, report = box.children
    path, button = row.children
    assert path.value == "test_resnet-int8.onnx"
    path.value = str(tmp_path / "digits.pt")  # not ONNX: refused, in the panel
    button.click()
    assert "✗" in report.value and ".onnx" in report.value
    path.value = str(tmp_path / "digits.onnx")
    button.click()
    assert (tmp_path / "digits.onnx").is_file() and not button.disabled
    assert "int8 ONNX" in report.value and "val_acc" in report.value


def test_a_live_run_offers_no_interpretation_yet(digits_high):
    run = nbaccel.fasttrain(
        digits_high, pretrained=False, epochs=50, stop="none", **SMALL
    )
    try:
        panel = panel_for(run, charts="off")
        assert panel.results.widget.layout.display == "none"
        panel.batch.open()
        assert panel.batch.body.children[0].value.count("<img src=") == 16
        # While it trains, the batch is the one kept at its start: another would take
        # the random numbers the training thread draws.
        kept = run.show_batch()
        with pytest.raises(RuntimeError, match="while the run trains"):
            run.show_batch(4)
    finally:
        run.stop()
    assert run.status == "stopped"
    again = run.show_batch(16, seed=0)
    assert again is kept  # the same batch, before and after
    fresh = run._preview(16, 0)
    assert fresh.items == kept.items and np.array_equal(fresh.images, kept.images)


def test_a_run_read_back_without_its_arrays_says_so(tmp_path):
    images, labels = nbaccel.datasets.digits(range(2), as_arrays=True)
    run = nbaccel.fasttrain(
        (images[:40], labels[:40]),
        pretrained=False,
        epochs=1,
        checkpoint_dir=str(tmp_path),
        background=False,
        **SMALL,
    )
    saved = nbaccel.load_run(nbaccel.runs(tmp_path)[0].path)
    for call in (saved.show_batch, saved.interpret, saved.audit):
        with pytest.raises(ValueError, match="checkpoint describes but does not hold"):
            call()
    assert run.show_batch(4).items == (  # the run in memory still has them
        run.show_batch(4).items
    )


def test_a_run_stopped_before_its_first_epoch_has_nothing_to_use(digits_high):
    run = nbaccel.fasttrain(
        digits_high, pretrained=False, epochs=50, checkpoint=False, **SMALL
    )
    run.stop()  # long before the first epoch's 22 steps and its evaluation
    assert run.status == "stopped" and run.best is None
    for use in (run.interpret, run.audit, lambda: run.predict(digits_high / "val")):
        with pytest.raises(RuntimeError, match="stopped before its first epoch"):
            use()
    assert run.show_batch().images.shape[0] == 16  # its data still shows
