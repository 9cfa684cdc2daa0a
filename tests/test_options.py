"""One definition per option (#11): fasttrain()'s signature and docs, the %fasttrain flags,
the panel's controls and the README's table are all read from TrainConfig's fields, so a
test here fails when any of them leaves an option out."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from IPython.testing import globalipapp

import nbaccel
from nbaccel.core.config import TrainConfig
from nbaccel.ui import Panel
from scripts.make_readme import BEGIN, END, options_table
from tests.conftest import SMALL

OPTIONS = nbaccel.list_options()
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def magic_help():
    shell = globalipapp.get_ipython()
    shell.run_line_magic("load_ext", "nbaccel")
    yield shell.find_line_magic("fasttrain").__doc__  # what %fasttrain? shows
    shell.run_line_magic("unload_ext", "nbaccel")


def test_every_fasttrain_keyword_has_a_flag_in_the_magic_help(magic_help):
    keywords = [
        p for p in inspect.signature(nbaccel.fasttrain).parameters if p != "data"
    ]
    assert set(keywords) == {spec.name for spec in OPTIONS} | {"background"}
    for keyword in keywords:
        # background=False is what --wait asks for; every other flag is the keyword's.
        flag = "--wait" if keyword == "background" else "--" + keyword.replace("_", "-")
        assert re.search(rf"{flag}\b", magic_help), f"%fasttrain? has no {flag}"
    words = " ".join(magic_help.split())  # argparse wraps the lines
    for spec in OPTIONS:  # and each flag says what its option does
        assert " ".join(spec.help.split()) in words, spec.name


def test_fasttrain_and_compare_show_each_option_with_its_default():
    for function in (nbaccel.fasttrain, nbaccel.compare):
        parameters = inspect.signature(function).parameters
        for spec in OPTIONS:
            assert parameters[spec.name].default == spec.default, (function, spec.name)
    args = inspect.getdoc(nbaccel.fasttrain).split("Args:")[1].splitlines()
    for spec in OPTIONS:  # each an entry of Args, as help() shows it
        assert f"    {spec.name}: {spec.help} (default {spec.default!r})." in args


def test_the_new_flags_reach_the_run(digits_high):
    """fused and baseline had no flag before (#11)."""
    shell = globalipapp.get_ipython()
    shell.run_line_magic("load_ext", "nbaccel")
    try:
        run = shell.run_line_magic(
            "fasttrain",
            f"{digits_high} --backbone test_resnet --pretrained no --image-size 32 "
            "--fused no --baseline off --val 0.25 --seed 3 --epochs 1 --wait --charts off",
        )
    finally:
        shell.run_line_magic("unload_ext", "nbaccel")
    assert (run.config.fused, run.config.baseline, run.config.seed) == (False, "off", 3)
    assert "fused optimizer: off (fused=False)" in run.events[0].speedups
    assert run.savings is None and run.status == "finished"


def test_the_panel_has_a_control_for_every_option(digits_high):
    panel = Panel(
        charts="off", defaults=dict(data=str(digits_high), lr=0.01, fused=False)
    )
    keywords = panel.controls.to_kwargs()
    assert set(keywords) == {"data"} | {spec.name for spec in OPTIONS}
    assert keywords["lr"] == 0.01 and keywords["fused"] is False
    assert (
        TrainConfig(**keywords).batch_size == "auto"
    )  # every default is a valid value
    more = {control.spec.name: control for control in panel.controls.more}
    more["workers"].widget.value = "2"
    more["cache"].widget.value = False
    assert panel.controls.to_kwargs()["workers"] == 2
    assert panel.controls.to_kwargs()["cache"] is False


def test_a_panel_keeps_a_data_object_given_as_val():
    images, labels = nbaccel.datasets.digits(range(2), as_arrays=True)
    held_out = (images[:20], labels[:20])
    panel = Panel(charts="off", defaults=dict(data=(images, labels), val=held_out))
    assert panel.controls.to_kwargs()["val"] is held_out


def test_the_readme_option_table_is_the_definitions():
    text = README.read_text()
    block = text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip()
    assert block == options_table(), "run: python scripts/make_readme.py"
    assert len(block.splitlines()) == len(OPTIONS) + 2


def test_an_unknown_keyword_names_the_closest_option(digits_high):
    with pytest.raises(
        TypeError, match="unknown option 'epoch'; did you mean 'epochs'"
    ):
        nbaccel.fasttrain(digits_high, epoch=3, **SMALL)
    with pytest.raises(TypeError, match="unknown option 'freez'"):
        nbaccel.compare(digits_high, freez="all", **SMALL)
