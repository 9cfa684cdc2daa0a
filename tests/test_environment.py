"""Front-end detection and the chart backend it implies (#3)."""

from __future__ import annotations

import sys
import types

import pytest

from nbaccel.ui import environment

pytestmark = pytest.mark.colab  # all of it, on Colab's packages too (issue #12)


@pytest.fixture
def plain(monkeypatch):
    for name in (
        "KAGGLE_KERNEL_RUN_TYPE",
        "KAGGLE_URL_BASE",
        "VSCODE_PID",
        "VSCODE_CWD",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    return monkeypatch


def test_jupyterlab_gets_the_widget_backend_at_two_updates_a_second(plain):
    assert environment.detect_front_end() == "jupyter"
    assert environment.resolve_chart_backend("auto") == "widget"
    assert environment.updates_per_second() == 2.0


def test_colab_gets_html_at_one_update_a_second(plain):
    plain.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert environment.detect_front_end() == "colab"
    assert environment.resolve_chart_backend("auto") == "html"
    assert environment.updates_per_second() == 1.0
    assert environment.resolve_chart_backend("widget") == "widget"  # the user's choice


@pytest.mark.parametrize(
    ("variable", "front_end"),
    [("KAGGLE_KERNEL_RUN_TYPE", "kaggle"), ("VSCODE_PID", "vscode")],
)
def test_kaggle_and_vscode_get_html(plain, variable, front_end):
    plain.setenv(variable, "1")
    assert environment.detect_front_end() == front_end
    assert environment.resolve_chart_backend("auto") == "html"


def test_widget_backend_on_colab_enables_its_widget_manager(plain):
    calls = []
    colab = types.ModuleType("google.colab")
    colab.output = types.SimpleNamespace(
        enable_custom_widget_manager=lambda: calls.append("on")
    )
    plain.setitem(sys.modules, "google.colab", colab)
    plain.setitem(sys.modules, "google", types.ModuleType("google"))
    sys.modules["google"].colab = colab
    from nbaccel.ui import Panel

    panel = Panel(charts="widget")
    assert calls == ["on"] and panel.chart.backend == "widget"


def test_unknown_backend_is_refused():
    with pytest.raises(
        ValueError, match="charts must be one of auto, widget, html, off"
    ):
        environment.resolve_chart_backend("svg")
