"""The panel's choices: data, backbone, weights, freeze depth, precision, stopping rule,
and every other option of fasttrain(), read from the options' one definition.

`Controls.to_kwargs()` turns them into `fasttrain()` keywords; the API itself checks them, so
the panel refuses bad choices with the API's own messages.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import ipywidgets as widgets
import timm

from nbaccel.core import OptionSpec, list_freeze_options, list_options, parse_stop_rule
from nbaccel.core.config import parse_pretrained
from nbaccel.core.precision import resolve_device, resolve_precision
from nbaccel.ui._format import format_count

MAX_LISTED = 300  # backbone names shown at once; the filter narrows the rest
STOP_PRESETS = (
    "patience:3",
    "patience:5",
    "target:val_acc>=0.95 | patience:5",
    "time:10m | patience:3",
    "epochs:5",
    "none",
)
# The options with a picker of their own; every other option gets an OptionControl.
PICKED = (
    "backbone",
    "pretrained",
    "freeze",
    "precision",
    "stop",
    "epochs",
    "image_size",
)
WIDE = dict(layout=widgets.Layout(width="460px"), style={"description_width": "110px"})
# A picker and what goes beside it (a checkbox, a note), on one centred line whose height
# is the picker's own (an HBox's default clipped the dropdown under its checkbox).
ROW = widgets.Layout(align_items="center", overflow="visible", min_height="36px")


class Controls:
    """The choice widgets, as one VBox (`.widget`), with defaults from a config or keywords."""

    def __init__(self, defaults: Optional[dict] = None, num_classes: int = 10) -> None:
        specs = {spec.name: spec for spec in list_options()}
        values = {name: spec.default for name, spec in specs.items()}
        values.update(defaults or {})
        self.more = [
            OptionControl(spec, values[name])
            for name, spec in specs.items()
            if name not in PICKED
        ]
        self.num_classes = num_classes
        self._data_object: Any = None
        self._data_label = ""
        self._freeze_cache: dict[str, list] = {}
        self._all_names = timm.list_models()
        self._with_weights = {
            name.split(".")[0] for name in timm.list_models(pretrained=True)
        }

        self.data = widgets.Text(
            description="data",
            placeholder="a folder (a subfolder per class, or train/ val/ test/) or a .csv",
            **WIDE,
        )
        self.set_data(values.get("data"))
        self.backbone_filter = widgets.Text(
            description="backbone",
            placeholder="filter: resnet, convnext, vit…",
            continuous_update=True,
            **WIDE,
        )
        self.weights_only = widgets.Checkbox(
            value=False, description="only with published weights", indent=False
        )
        self.backbone = widgets.Dropdown(description=" ", **WIDE)
        self.pretrained = widgets.Combobox(
            value=_pretrained_text(values["pretrained"]),
            options=["yes", "no"],
            ensure_option=False,
            description="weights",
            placeholder="yes (timm hub), no (random) or a weights file",
            **WIDE,
        )
        self.freeze = widgets.SelectionSlider(
            options=[("auto", "auto")], description="freeze", **WIDE
        )
        self.freeze_info = widgets.HTML()
        self.precision = widgets.Dropdown(
            options=_precision_options(values["device"]),
            description="precision",
            **WIDE,
        )
        self.stop = widgets.Combobox(
            value=values["stop"],
            options=list(STOP_PRESETS),
            ensure_option=False,
            description="stop when",
            **WIDE,
        )
        self.stop_info = widgets.HTML()
        self.epochs = widgets.BoundedIntText(
            value=values["epochs"], min=1, max=100_000, description="epochs", **WIDE
        )
        self.image_size = widgets.BoundedIntText(
            value=values["image_size"] or 0,
            min=0,
            max=4096,
            description="image size",
            **WIDE,
        )
        self.image_size_info = widgets.HTML()  # what 0 means for this backbone
        for name in PICKED:
            set_tooltip(getattr(self, name), specs[name].help)
        set_tooltip(self.image_size, "pixels; 0 uses the backbone's default")

        self._list_backbones(selected=values["backbone"])
        self._list_freeze_options(values["freeze"])
        if values["precision"] in [v for _, v in self.precision.options]:
            self.precision.value = values["precision"]
        self._check_stop()
        self.backbone_filter.observe(lambda _: self._list_backbones(), "value")
        self.weights_only.observe(lambda _: self._list_backbones(), "value")
        self.backbone.observe(lambda _: self._list_freeze_options(), "value")
        self.backbone.observe(lambda _: self._describe_image_size(), "value")
        self.image_size.observe(lambda _: self._describe_image_size(), "value")
        self._describe_image_size()
        self.freeze.observe(lambda _: self._describe_freeze(), "value")
        self.stop.observe(lambda _: self._check_stop(), "value")
        self.widget = widgets.VBox(
            [
                self.data,
                self.backbone_filter,
                widgets.HBox([self.backbone, self.weights_only], layout=ROW),
                self.pretrained,
                self.freeze,
                self.freeze_info,
                self.precision,
                widgets.HBox([self.stop, self.stop_info], layout=ROW),
                self.epochs,
                widgets.HBox([self.image_size, self.image_size_info], layout=ROW),
                _collapsed(
                    "more options",
                    widgets.GridBox(
                        [control.widget for control in self.more],
                        layout=widgets.Layout(grid_template_columns="repeat(2, 340px)"),
                    ),
                ),
            ]
        )

    # --- reading and writing the choices -----------------------------------------------

    def set_data(self, data: Any) -> None:
        """Shows a path as text; an in-memory object (arrays, a Dataset) by a label."""
        if data is None or isinstance(data, (str, os.PathLike)):
            self._data_object, self._data_label = None, ""
            self.data.value = "" if data is None else str(data)
        else:
            self._data_object = data
            self._data_label = f"<in-memory {type(data).__name__}>"
            self.data.value = self._data_label

    def to_kwargs(self) -> dict:
        """The choices as `fasttrain()` keywords (unchecked: TrainConfig checks them)."""
        text = self.data.value.strip()
        if self._data_label and text == self._data_label:
            data: Any = self._data_object
        elif text:
            data = Path(text).expanduser()
        else:
            raise ValueError(
                "no data: type the path of an image folder (one subfolder per class) in "
                "the data box"
            )
        return dict(
            data=data,
            backbone=self.backbone.value,
            pretrained=parse_pretrained(self.pretrained.value),
            freeze=self.freeze.value,
            precision=self.precision.value,
            stop=self.stop.value,
            epochs=self.epochs.value,
            image_size=self.image_size.value or None,
            **{control.spec.name: control.value() for control in self.more},
        )

    def set_enabled(self, enabled: bool) -> None:
        for child in (
            self.data,
            self.backbone_filter,
            self.weights_only,
            self.backbone,
            self.pretrained,
            self.freeze,
            self.precision,
            self.stop,
            self.epochs,
            self.image_size,
            *(control.widget for control in self.more),
        ):
            child.disabled = not enabled

    # --- reacting to choices -------------------------------------------------------------

    def _list_backbones(self, selected: Optional[str] = None) -> None:
        selected = selected or self.backbone.value
        words = self.backbone_filter.value.lower().split()
        names = [
            name
            for name in self._all_names
            if all(word in name for word in words)
            and (not self.weights_only.value or name in self._with_weights)
        ]
        shown = names[:MAX_LISTED]
        if selected and selected not in shown:
            shown.insert(0, selected)
        self.backbone.options = [
            (f"{name} ✓ weights" if name in self._with_weights else name, name)
            for name in shown
        ]
        set_tooltip(
            self.backbone, f"{len(names)} of {len(self._all_names)} timm models match"
        )
        if selected in shown:
            self.backbone.value = selected

    def _list_freeze_options(self, freeze: Any = None) -> None:
        """The slider's stops, labelled with the model's groups and trainable counts."""
        name = self.backbone.value
        if not name:
            return
        if name not in self._freeze_cache:
            self._freeze_cache[name] = list_freeze_options(name, self.num_classes)
        options = self._freeze_cache[name]
        current = self.freeze.value if freeze is None else freeze
        if current == "all":
            current = len(options) - 1
        self.freeze.options = [("auto", "auto")] + [
            (f"{o.depth}: {o.label}", o.depth) for o in options
        ]
        values = ["auto"] + [o.depth for o in options]
        self.freeze.value = current if current in values else "auto"
        self._describe_freeze()

    def _describe_freeze(self) -> None:
        options = self._freeze_cache.get(self.backbone.value, [])
        if self.freeze.value == "auto" or not options:
            self.freeze_info.value = (
                "<small>auto: nothing frozen with random weights; with pretrained weights, "
                "the early layers (the leading groups with 2% of the weights)</small>"
            )
            return
        option = options[self.freeze.value]
        self.freeze_info.value = (
            f"<small>{option.label} · {format_count(option.trainable_params)} of "
            f"{format_count(option.total_params)} parameters train "
            f"(with a {self.num_classes}-class head)</small>"
        )

    def _describe_image_size(self) -> None:
        """0 is "auto": say what it becomes for the chosen backbone."""
        if self.image_size.value:
            self.image_size_info.value = "px (images are resized to this square)"
            return
        try:
            size = timm.models.get_pretrained_cfg(self.backbone.value).input_size[-1]
        except Exception:  # noqa: BLE001 - a name without a config: timm's default
            size = None
        own = f"{size} px, " if size else ""
        self.image_size_info.value = f"0 = auto: {own}{self.backbone.value}'s own"

    def _check_stop(self) -> None:
        try:
            parse_stop_rule(self.stop.value)
        except ValueError as error:
            self.stop_info.value = f"<small style='color:#b00020'>{error}</small>"
        else:
            self.stop_info.value = "<small>✓</small>"


class OptionControl:
    """A control for an option with no picker of its own, made from its definition: a
    dropdown of its choices, or a text box read as the option reads text. A value that is
    not text (a data object given as `val`) is shown by a label and kept as it is."""

    def __init__(self, spec: OptionSpec, value: Any) -> None:
        self.spec = spec
        self._object: Any = None
        self._label = ""
        if spec.choices:
            options = [(_as_text(choice), choice) for choice in spec.choices]
            chosen = next((c for c in spec.choices if c is value or c == value), None)
            self.widget: widgets.ValueWidget = widgets.Dropdown(
                options=options,
                value=spec.default if chosen is None else chosen,
                description=spec.name,
                style={"description_width": "110px"},
                layout=widgets.Layout(width="330px"),
            )
        else:
            if value is not None and not isinstance(value, (str, int, float)):
                self._object = value
                self._label = f"<in-memory {type(value).__name__}>"
            self.widget = widgets.Text(
                value=self._label or _as_text(value),
                description=spec.name,
                style={"description_width": "110px"},
                layout=widgets.Layout(width="330px"),
            )
        set_tooltip(self.widget, spec.help)

    def value(self) -> Any:
        """The option's value, unchecked (TrainConfig checks it)."""
        if isinstance(self.widget, widgets.Dropdown):
            return self.widget.value
        text = self.widget.value.strip()
        if self._label and text == self._label:
            return self._object
        return self.spec.parse(text) if text else self.spec.default


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "" if value is None else str(value)


def _collapsed(title: str, child: widgets.Widget) -> widgets.Accordion:
    accordion = widgets.Accordion(children=[child])
    accordion.set_title(0, title)
    accordion.selected_index = None
    return accordion


def set_tooltip(widget: widgets.Widget, text: str) -> None:
    """ipywidgets 8 calls it `tooltip`; 7.7 (Colab's) `description_tooltip`."""
    name = "tooltip" if widget.has_trait("tooltip") else "description_tooltip"
    setattr(widget, name, text)


def _pretrained_text(pretrained: Any) -> str:
    if pretrained is True:
        return "yes"
    if pretrained is False:
        return "no"
    return str(pretrained)


def _precision_options(device_name: str) -> list[tuple[str, str]]:
    """Only what this device can do, with what "auto" becomes here."""
    try:
        device = resolve_device(device_name)
    except ValueError:
        device = resolve_device("cpu")
    supported = []
    for precision in ("fp32", "bf16", "fp16"):
        try:
            resolve_precision(precision, device)
        except ValueError:
            continue
        supported.append(precision)
    auto = resolve_precision("auto", device)
    return [(f"auto ({auto} on {device.type})", "auto")] + [(p, p) for p in supported]
