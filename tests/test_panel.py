"""The control panel (#3): buttons drive real runs, choices are refused in the API's words,
freeze and precision pickers describe the model and the device."""

from __future__ import annotations

import html

import pytest
import timm
import torch

import nbaccel
from nbaccel.ui import Panel, panel_for
from tests.conftest import SMALL, wait_for


def choose(panel: Panel, **values) -> None:
    """Sets the panel's choices as a user would, widget by widget."""
    controls = panel.controls
    if "backbone" in values:
        controls.backbone_filter.value = values.pop("backbone")
        controls.backbone.value = controls.backbone_filter.value
    for name, value in values.items():
        getattr(controls, name).value = value


def test_pause_resume_and_stop_buttons_drive_the_run(digits_high):
    run = (
        nbaccel.fasttrain(  # compile: on CUDA "auto" compiles a 500-epoch budget first
            digits_high,
            pretrained=False,
            epochs=500,
            stop="none",
            compile=False,
            **SMALL,
        )
    )
    panel = panel_for(run, charts="off")
    wait_for(lambda: len(run.history) >= 1)
    assert panel.start_button.disabled and not panel.stop_button.disabled

    panel.pause_button.click()
    assert run.status == "paused"
    assert panel.pause_button.description == "Resume" and "paused" in panel.status.value
    panel.pause_button.click()
    assert run.status == "running" and panel.pause_button.description == "Pause"
    epochs = len(run.history)
    wait_for(lambda: len(run.history) > epochs)  # training goes on after Resume

    panel.stop_button.click()
    run.wait(timeout=60)
    assert run.status == "stopped" and run.reason == "user"
    wait_for(lambda: "stopped" in panel.status.value)
    assert panel.stop_button.disabled and panel.pause_button.disabled
    assert not panel.start_button.disabled  # ready for the next run
    assert not panel.controls.backbone.disabled


@pytest.mark.colab
def test_start_button_trains_with_the_chosen_settings(digits_high):
    panel = Panel(charts="widget")
    assert panel.chart.widget not in panel.widget.children  # no empty chart when idle
    assert "0 = auto: 224 px, resnet18's own" in panel.controls.image_size_info.value
    choose(
        panel,
        backbone="test_resnet",
        data=str(digits_high),
        pretrained="no",
        image_size=32,
        epochs=2,
        stop="none",
    )
    assert panel.controls.image_size_info.value.startswith("px")
    panel.start_button.click()
    run = panel.run
    assert panel.widget.children[-2] is panel.chart.widget  # above the choices
    assert run is not None and run.config.backbone == "test_resnet"
    assert run.config.pretrained is False and run.config.epochs == 2
    run.wait(timeout=60)
    val_loss = next(t for t in panel.chart.widget.data if t.name == "val loss")
    assert list(val_loss.y) == [row["val_loss"] for row in run.history]
    assert panel.progress.value == panel.progress.max
    assert panel.message.value == ""


@pytest.mark.colab
@pytest.mark.parametrize(
    ("choices", "keywords"),
    [
        (dict(data="missing-folder"), dict(data="missing-folder")),
        (dict(stop="patience:0"), dict(stop="patience:0")),
        (dict(stop="target:val_acc>=1.5"), dict(stop="target:val_acc>=1.5")),  # (#14)
        (
            dict(pretrained="no-such-weights.pth"),
            dict(pretrained="no-such-weights.pth"),
        ),
    ],
)
def test_bad_choices_are_refused_with_the_api_message(digits_high, choices, keywords):
    base = dict(data=digits_high, backbone="test_resnet", pretrained=False, epochs=1)
    with pytest.raises(ValueError) as api:
        nbaccel.fasttrain(**{**base, **keywords})
    panel = Panel(charts="off")
    choose(
        panel, backbone="test_resnet", data=str(digits_high), pretrained="no", epochs=1
    )
    choose(panel, **choices)
    panel.start_button.click()
    assert panel.run is None
    assert str(api.value) in html.unescape(panel.message.value)


@pytest.mark.colab
def test_bad_stop_rule_is_flagged_while_typing():
    panel = Panel(charts="off")
    panel.controls.stop.value = "patience:3 | soon"
    with pytest.raises(ValueError) as api:
        nbaccel.parse_stop_rule("patience:3 | soon")
    assert str(api.value) in html.unescape(panel.controls.stop_info.value)
    panel.controls.stop.value = "target:val_acc>=0.9 | time:2m"
    assert "✓" in panel.controls.stop_info.value


@pytest.mark.colab
def test_empty_data_box_is_refused():
    panel = Panel(charts="off")
    panel.start_button.click()
    assert panel.run is None and "no data" in panel.message.value


@pytest.mark.colab
def test_a_failed_run_shows_its_traceback(broken_folder):
    run = nbaccel.fasttrain(
        broken_folder, pretrained=False, epochs=2, batch_size=8, **SMALL
    )
    panel = panel_for(run, charts="off")
    with pytest.raises(nbaccel.TrainingFailed):
        run.wait(timeout=60)
    assert panel.error.layout.display is None  # shown
    text = html.unescape(panel.error.value)
    assert "Traceback" in text and "broken.png" in text
    assert "failed" in panel.status.value and panel.progress.bar_style == "danger"


@pytest.mark.colab
def test_each_choice_carries_its_help_as_a_tooltip():
    """The tooltip reaches the front end under either name: `tooltip` (ipywidgets 8),
    `description_tooltip` (7.7, Colab's; deprecated in 8)."""
    panel = Panel(charts="off")
    controls = panel.controls
    helps = {spec.name: spec.help for spec in nbaccel.list_options()}

    def tooltip(widget) -> str:
        state = widget.get_state()
        return state.get("tooltip") or state.get("description_tooltip") or ""

    assert tooltip(controls.epochs) == helps["epochs"]
    assert tooltip(controls.stop) == helps["stop"]
    assert tooltip(controls.image_size).startswith("pixels")
    for control in controls.more:
        assert tooltip(control.widget) == helps[control.spec.name]
    assert "timm models match" in tooltip(controls.backbone)


@pytest.mark.colab
def test_freeze_slider_names_the_groups_and_counts_trainable_parameters():
    panel = Panel(charts="off", defaults=dict(backbone="resnet18"))
    controls = panel.controls
    labels = [label for label, _ in controls.freeze.options]
    assert labels[0] == "auto" and labels[1] == "0: train all"
    assert "2: freeze stem..layer1" in labels and labels[-1].endswith(
        "head only (freeze all)"
    )
    controls.freeze.value = 2
    option = nbaccel.list_freeze_options("resnet18", num_classes=10)[2]
    millions = f"{option.trainable_params / 1e6:.1f}M"
    assert millions in controls.freeze_info.value

    choose(panel, backbone="test_vit")  # other groups for another model
    assert any("blocks" in label for label, _ in controls.freeze.options)


@pytest.mark.colab
def test_precision_lists_what_this_device_supports():
    panel = Panel(charts="off")
    values = [value for _, value in panel.controls.precision.options]
    label = panel.controls.precision.options[0][0]
    if torch.cuda.is_available():  # what the card can do, and never an unsupported one
        major, _ = torch.cuda.get_device_capability()
        assert ("bf16" in values) == (major >= 8) and "fp16" in values
        assert label.startswith("auto (") and label.endswith(" on cuda)")
    else:
        assert values == ["auto", "fp32", "bf16"] and label == "auto (fp32 on cpu)"


@pytest.mark.colab
def test_backbone_filter_and_weights_mark():
    panel = Panel(charts="off")
    controls = panel.controls
    controls.backbone_filter.value = "convnext"
    names = [value for _, value in controls.backbone.options]
    expected = [n for n in timm.list_models() if "convnext" in n]
    assert set(names) - {"resnet18"} == set(expected)  # the current choice stays listed
    with_weights = {n.split(".")[0] for n in timm.list_models(pretrained=True)}
    for label, name in controls.backbone.options:
        assert label.endswith("✓ weights") == (name in with_weights)
    controls.weights_only.value = True
    assert all(
        name in with_weights or name == "resnet18"
        for _, name in controls.backbone.options
    )


def test_panel_for_an_in_memory_run_restarts_with_the_same_data():
    images, labels = nbaccel.datasets.digits(range(2), as_arrays=True)
    run = nbaccel.fasttrain(
        (images, labels), pretrained=False, epochs=1, stop="none", **SMALL
    )
    run.wait(timeout=60)
    panel = panel_for(run, charts="off")
    assert panel.controls.data.value == "<in-memory tuple>"
    assert "finished" in panel.status.value and "best epoch 1" in panel.status.value
    again = panel.start()
    assert again is not None and again is not run
    again.wait(timeout=60)
    assert again.class_names == ("0", "1") and again.config.image_size == 32


def test_a_run_slower_than_its_baseline_says_lost_not_zero_saved():
    from nbaccel.ui._format import format_saved

    assert format_saved(65.2) == "1 min 05 s saved"
    assert format_saved(-12.4) == "12 s lost"  # not "0 s saved"
    assert format_saved(-0.2) == "0 s saved"
