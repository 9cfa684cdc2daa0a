"""%load_ext nbaccel and %fasttrain through IPython's test shell (#3)."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

import nbaccel
import nbaccel.magics
from nbaccel.ui import ComparisonPanel, Panel
from tests.conftest import wait_for

SMALL_FLAGS = "--backbone test_resnet --pretrained no --image-size 32"


@pytest.fixture
def ip(shell):
    shell.run_line_magic("load_ext", "nbaccel")
    yield shell
    shell.run_line_magic("unload_ext", "nbaccel")


@pytest.fixture
def shown(monkeypatch):
    """Every object the magics pass to display(), in order (and still displayed)."""
    objects = []
    real_display = nbaccel.magics.display

    def record(obj, *args, **kwargs):
        objects.append(obj)
        return real_display(obj, *args, **kwargs)

    monkeypatch.setattr(nbaccel.magics, "display", record)
    return objects


def test_magic_trains_in_the_background_and_its_panel_charts_each_epoch(
    ip, shown, digits_high
):
    """The issue's test: a short resnet18 run on the bundled digits; the panel shown by the
    magic gets one val-loss point per epoch in its FigureWidget."""
    run = ip.run_line_magic(
        "fasttrain",
        f"{digits_high} --backbone resnet18 --pretrained no --image-size 32 "
        "--epochs 2 --stop none",
    )
    assert isinstance(run, nbaccel.Run)
    assert run.status == "running"  # the magic returned while the run trains
    [panel] = shown
    assert isinstance(panel, Panel) and panel.run is run
    run.wait(timeout=120)
    assert run.status == "finished" and run.reason == "epochs"
    traces = {trace.name: trace for trace in panel.chart.widget.data}
    assert list(traces["val loss"].x) == [1, 2]
    assert list(traces["val loss"].y) == [row["val_loss"] for row in run.history]
    assert list(traces["val acc"].y) == [row["val_acc"] for row in run.history]
    assert len(traces["train loss"].x) >= 2 and len(traces["images/s"].y) >= 2
    assert "finished" in panel.status.value


@pytest.mark.colab
def test_loading_twice_is_harmless_and_unloading_stops_a_live_run(
    ip, shown, digits_high
):
    nbaccel.load_ipython_extension(ip)  # a second load, as %reload_ext does
    ip.user_ns["photos"] = digits_high
    run = ip.run_line_magic(  # --compile: on CUDA "auto" compiles 500 epochs' budget first
        "fasttrain", f"photos {SMALL_FLAGS} --epochs 500 --stop none --compile no"
    )
    assert len(shown) == 1  # one panel, even with the extension loaded twice
    wait_for(lambda: len(run.history) >= 1)
    hooks = ip.events.callbacks["post_run_cell"]
    assert hooks.count(nbaccel.magics.release_openmp_after_cell) == 1  # (#16)
    ip.run_line_magic("unload_ext", "nbaccel")
    assert run.status == "stopped" and run.reason == "user"
    assert ip.find_line_magic("fasttrain") is None
    assert nbaccel.magics.release_openmp_after_cell not in hooks
    ip.run_line_magic("load_ext", "nbaccel")  # the fixture unloads it again
    assert ip.find_line_magic("fasttrain") is not None


def test_speed_flags_reach_the_run(ip, shown, digits_high):
    run = ip.run_line_magic(
        "fasttrain",
        f"{digits_high} {SMALL_FLAGS} --freeze all --cache no --compile no "
        "--channels-last no --workers 0 --epochs 1 --wait --charts off",
    )
    config = run.config
    assert (config.cache, config.compile, config.channels_last) == (False,) * 3
    assert config.workers == 0 and run.status == "finished"
    assert "feature cache: off (cache=False)" in run.events[0].speedups


def test_data_from_a_variable_in_the_namespace(ip, shown):
    ip.user_ns["digits"] = nbaccel.datasets.digits(range(5, 10), as_arrays=True)
    run = ip.run_line_magic(
        "fasttrain", f"digits {SMALL_FLAGS} --epochs 1 --stop none --charts off"
    )
    run.wait(timeout=60)
    assert run.class_names == ("5", "6", "7", "8", "9")
    assert run.status == "finished" and shown[0].chart.widget is None


@pytest.mark.colab
@pytest.mark.parametrize(
    ("flags", "keywords"),
    [
        ("--precision fp8", dict(precision="fp8")),
        ("--stop patience:x", dict(stop="patience:x")),
        ("--stop target:val_acc>=1.5", dict(stop="target:val_acc>=1.5")),  # (#14)
        ("--stop time:-5s", dict(stop="time:-5s")),
        ("--epochs many", dict(epochs="many")),
        ("--freeze 9", dict(freeze=9)),
        ("--backbone resnet_18", dict(backbone="resnet_18")),
        ("--lr -1", dict(lr=-1)),
        ("--cache maybe", dict(cache="maybe")),
        ("--workers -2", dict(workers=-2)),
        (
            "--freeze all --cache yes --augment flip",
            dict(freeze="all", cache=True, augment="flip"),
        ),
    ],
)
def test_bad_flags_give_the_api_error_text(ip, shown, digits_high, flags, keywords):
    base = dict(backbone="test_resnet", pretrained=False, image_size=32)
    with pytest.raises(ValueError) as api:
        nbaccel.fasttrain(digits_high, **{**base, **keywords})
    with pytest.raises(UsageError) as magic:
        ip.run_line_magic(
            "fasttrain",
            f"{digits_high} {SMALL_FLAGS} {flags}",  # the last flag wins
        )
    assert str(magic.value) == str(api.value)
    assert shown == []  # nothing displayed, nothing started


@pytest.mark.colab
def test_unknown_name_and_bad_charts_are_refused(ip, shown):
    with pytest.raises(UsageError, match="neither a variable in this notebook"):
        ip.run_line_magic("fasttrain", "no_such_variable")
    with pytest.raises(UsageError, match="--charts must be one of"):
        ip.run_line_magic("fasttrain", "--charts svg")


@pytest.mark.colab
def test_help_lists_the_flags(ip):
    doc = ip.find_line_magic("fasttrain").__doc__
    for flag in (
        "--backbone",
        "--pretrained",
        "--freeze",
        "--precision",
        "--stop",
        "--epochs",
        "--batch-size",
        "--lr",
        "--val",
        "--image-size",
        "--device",
        "--seed",
        "--charts",
        "--wait",
    ):
        assert flag in doc
    assert "Fine-tune a timm image model" in doc


@pytest.mark.colab
def test_no_data_opens_an_idle_panel_prefilled_from_the_flags(ip, shown):
    result = ip.run_line_magic(
        "fasttrain", "--backbone resnet18 --epochs 7 --pretrained no --charts off"
    )
    assert result is None
    [panel] = shown
    assert panel.run is None and not panel.start_button.disabled
    assert panel.controls.backbone.value == "resnet18"
    assert panel.controls.epochs.value == 7 and panel.controls.pretrained.value == "no"
    assert panel.stop_button.disabled and panel.pause_button.disabled


def test_wait_blocks_until_the_run_has_ended(ip, shown, digits_high):
    run = ip.run_line_magic(
        "fasttrain", f"{digits_high} {SMALL_FLAGS} --epochs 2 --stop none --wait"
    )
    assert run.status == "finished" and len(run.history) == 2


@pytest.mark.colab
def test_a_run_as_the_last_line_shows_one_panel(ip, shown, digits_high):
    ip.user_ns["path"] = digits_high

    def cell(code):  # as a kernel runs a cell: counted in the history
        ip.run_cell(code, store_history=True).raise_error()

    cell(f"run = %fasttrain path {SMALL_FLAGS} --epochs 1 --wait")
    assert len(shown) == 1
    cell("run")  # a later cell shows the run's panel again
    assert len(shown) == 2 and shown[1].run is ip.user_ns["run"]
    assert "finished" in shown[1].status.value
    cell(f"%fasttrain path {SMALL_FLAGS} --epochs 1 --wait")
    assert len(shown) == 3  # the magic's own panel, not a second one from Out


def test_compare_flag_trains_both_and_shows_the_comparison(ip, shown, digits_high):
    cmp = ip.run_line_magic(
        "fasttrain", f"{digits_high} {SMALL_FLAGS} --epochs 2 --compare --wait"
    )
    assert isinstance(cmp, nbaccel.Comparison) and cmp.status == "finished"
    [view] = shown
    assert isinstance(view, ComparisonPanel) and view.comparison is cmp
    assert "speedup" in view.summary.value
