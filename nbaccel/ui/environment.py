"""Which notebook front end we are in, and what that means for charts.

Custom widgets work in JupyterLab, Notebook 7 and Binder; Colab, Kaggle and VS Code get the
`html` chart backend (a plotly Figure re-rendered through a display handle) and a slower tick.
"""

from __future__ import annotations

import os
import sys

CHART_BACKENDS = ("auto", "widget", "html", "off")


def detect_front_end() -> str:
    """ "colab" | "kaggle" | "vscode" | "jupyter" (JupyterLab, Notebook, Binder or a test)."""
    if "google.colab" in sys.modules:
        return "colab"
    if "KAGGLE_KERNEL_RUN_TYPE" in os.environ or "KAGGLE_URL_BASE" in os.environ:
        return "kaggle"
    if "VSCODE_PID" in os.environ or "VSCODE_CWD" in os.environ:
        return "vscode"
    return "jupyter"


def resolve_chart_backend(requested: str = "auto", front_end: str = "") -> str:
    """The chart backend for `requested` ("auto", "widget", "html" or "off").

    "auto" is `widget` where custom widgets work and plotly's FigureWidget can be built (it
    needs anywidget with plotly 6+), `html` elsewhere.

    Raises:
        ValueError: `requested` is not one of CHART_BACKENDS.
    """
    if requested not in CHART_BACKENDS:
        raise ValueError(
            f"charts must be one of {', '.join(CHART_BACKENDS)}, got {requested!r}"
        )
    front_end = front_end or detect_front_end()
    if requested != "auto":
        return requested
    if front_end != "jupyter" or not figure_widget_available():
        return "html"
    return "widget"


def figure_widget_available() -> bool:
    try:
        import plotly.graph_objects as go
    except ImportError:
        return False
    # Without anywidget (plotly 6+) or ipywidgets (plotly 5) plotly exports a stand-in from
    # plotly.missing_anywidget / plotly.missing_ipywidgets that raises when built.
    return "missing" not in go.FigureWidget.__module__


def updates_per_second(front_end: str = "") -> float:
    """How often the panel redraws: 2 Hz, 1 Hz on Colab and Kaggle (their comms are slower)."""
    return 1.0 if (front_end or detect_front_end()) in ("colab", "kaggle") else 2.0


def enable_colab_widgets(front_end: str = "") -> None:
    """Colab renders third-party widgets (plotly's FigureWidget) only with its custom widget
    manager switched on."""
    if (front_end or detect_front_end()) == "colab":
        from google.colab import output  # type: ignore[import-not-found]

        output.enable_custom_widget_manager()


def prepare_charts(charts: str) -> tuple[str, float]:
    """What a view needs to draw here: the chart backend for `charts` (with Colab's widget
    manager switched on when that is "widget") and the updates per second.

    Raises:
        ValueError: `charts` is not one of CHART_BACKENDS.
    """
    front_end = detect_front_end()
    backend = resolve_chart_backend(charts, front_end)
    if backend == "widget":
        enable_colab_widgets(front_end)
    return backend, updates_per_second(front_end)
