"""Live Plotly charts of a run as one figure: loss and accuracy, throughput, and time.

`ChartData` turns events into series; a backend draws them: `WidgetChart` (a FigureWidget
inside the panel, updated in one `batch_update`), `HtmlChart` (a Figure re-rendered through a
display handle, for Colab, Kaggle and VS Code) or `NoChart` (`charts="off"`).
"""

from __future__ import annotations

import json
from typing import Callable, Optional

import plotly.graph_objects as go
import plotly.io as pio
from IPython.display import display
from plotly.subplots import make_subplots

from nbaccel.core import (
    EpochEnded,
    Event,
    Progress,
    RunEnded,
    RunStarted,
    Savings,
    SavingsUpdated,
)

MAX_POINTS = 2000  # per trace; older points are thinned beyond this
# Accuracy always spans 0-100%; every other axis fits its points (see fit_axes).
ACCURACY_AXIS = dict(range=[0, 1.02], tickformat=".0%", tickmode="linear", dtick=0.2)
EMPTY_AXIS = dict(autorange=False, range=[0, 1])

# name: (subplot column, on the secondary y axis, style)
TRACES: dict[str, tuple[int, bool, dict]] = {
    "train loss": (1, False, dict(line=dict(color="#1f77b4"))),
    "val loss": (1, False, dict(mode="lines+markers", line=dict(color="#ff7f0e"))),
    "val acc": (
        1,
        True,
        dict(mode="lines+markers", line=dict(color="#2ca02c", dash="dot")),
    ),
    "images/s": (2, False, dict(line=dict(color="#9467bd"))),
    # Not train loss's blue: the legend is shared by the three panels.
    "elapsed": (3, False, dict(line=dict(color="#444444"))),
    "projected": (3, False, dict(line=dict(color="#444444", dash="dash"))),
    # The baseline's projected time (every layer trained, fp32), from SavingsUpdated.
    "baseline": (3, False, dict(line=dict(color="#d62728", dash="dot"))),
}


class ChartData:
    """The series behind the chart, x in epochs (fractional within an epoch)."""

    def __init__(self) -> None:
        self.series: dict[str, tuple[list[float], list[float]]] = {
            name: ([], []) for name in TRACES
        }
        self.epochs: Optional[int] = None  # the epoch budget, from RunStarted
        self._last: Optional[Progress] = None  # the previous Progress event
        self._savings: Optional[Savings] = None  # the latest, for the projection

    def add(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.epochs = event.epochs
            self._append("elapsed", 0.0, 0.0)
        elif isinstance(event, Progress):
            x = event.epoch - 1 + event.step / event.steps_per_epoch
            self._append("train loss", x, self._window_loss(event))
            self._last = event
            self._append("images/s", x, event.images_per_s)
            self._append("elapsed", x, event.elapsed_s)
            self._project(x, event.elapsed_s)
        elif isinstance(event, EpochEnded):
            self._append("val loss", event.epoch, event.val_loss)
            self._append("val acc", event.epoch, event.val_acc)
            self._append("elapsed", event.epoch, event.elapsed_s)
            self._project(event.epoch, event.elapsed_s)
        elif isinstance(event, SavingsUpdated):
            savings = self._savings = event.savings
            if savings.baseline_epoch_s > 0:  # the baseline's pace, over the budget
                budget = float(savings.epochs_budget)
                self.set_baseline(
                    [0.0, budget], [0.0, budget * savings.baseline_epoch_s]
                )
        elif isinstance(event, RunEnded):
            self.series["projected"] = ([], [])

    def set_baseline(self, epochs: list[float], seconds: list[float]) -> None:
        """The baseline's projected elapsed time against epochs."""
        self.series["baseline"] = (list(epochs), list(seconds))

    def points(self, name: str) -> tuple[list[float], list[float]]:
        """The trace's points, thinned to at most MAX_POINTS."""
        xs, ys = self.series[name]
        return thin(xs, ys)

    def _append(self, name: str, x: float, y: float) -> None:
        xs, ys = self.series[name]
        if xs and xs[-1] == x:  # an epoch's last Progress and its EpochEnded share an x
            ys[-1] = y
        else:
            xs.append(x)
            ys.append(y)

    def _window_loss(self, event: Progress) -> float:
        """The mean loss over the steps since the previous Progress event.

        Progress carries the epoch's running mean, which restarts every epoch (a sawtooth
        on a chart); the running means and step counts give each window's mean exactly.
        """
        last = self._last
        if last is None or last.epoch != event.epoch or last.step >= event.step:
            return event.train_loss
        total = event.train_loss * event.step - last.train_loss * last.step
        return total / (event.step - last.step)

    def _project(self, x: float, elapsed_s: float) -> None:
        """A straight line from now to this run's projected end of the epoch budget: the
        savings' projection (Savings.projected_at, which the headline's "projected" saving
        uses too), or without a baseline, the pace of the epochs so far (none before the
        first, whose set-up would inflate it)."""
        savings = self._savings
        if savings is not None and not savings.final:
            end: Optional[float] = savings.projected_at(x, elapsed_s)
        elif savings is None and x >= 1:
            end = elapsed_s / x * (self.epochs or 0)
        else:
            end = None
        if end is not None and self.epochs and 0 < x < self.epochs:
            self.series["projected"] = ([x, float(self.epochs)], [elapsed_s, end])
        else:
            self.series["projected"] = ([], [])


def thin(
    xs: list[float], ys: list[float], limit: int = MAX_POINTS
) -> tuple[list[float], list[float]]:
    """At most `limit` points: the newest half as they are, the older ones evenly sampled."""
    count = len(xs)
    if count <= limit:
        return list(xs), list(ys)
    recent = limit // 2
    older = count - recent
    step = older / (limit - recent)
    keep = [int(i * step) for i in range(limit - recent)] + list(range(older, count))
    return [xs[i] for i in keep], [ys[i] for i in keep]


def create_figure() -> go.Figure:
    """The empty three-panel figure with every trace in TRACES order."""
    figure = make_subplots(
        rows=1,
        cols=3,
        specs=[[{"secondary_y": True}, {}, {}]],
        subplot_titles=("loss and accuracy", "throughput", "time"),
        horizontal_spacing=0.14,  # room for the accuracy axis's title
    )
    for name, (column, secondary, style) in TRACES.items():
        mode = style.get("mode", "lines")
        # meta: the trace's own mode, which fill() puts back once it has two points
        trace = go.Scatter(x=[], y=[], name=name, mode=mode, meta=mode)
        trace.update({k: v for k, v in style.items() if k != "mode"})
        if secondary:
            figure.add_trace(trace, row=1, col=column, secondary_y=True)
        else:
            figure.add_trace(trace, row=1, col=column)
    # Empty, every axis spans 0..1 (Plotly's empty axis spans -1..4, which reads as
    # negative seconds) until fit_axes lets it fit its first points.
    figure.update_xaxes(title_text="epoch", rangemode="tozero", **EMPTY_AXIS)
    figure.update_yaxes(rangemode="tozero", **EMPTY_AXIS)
    figure.update_yaxes(title_text="loss", row=1, col=1, secondary_y=False)
    figure.update_yaxes(
        title_text="val acc",
        title_standoff=4,
        **ACCURACY_AXIS,
        showgrid=False,
        row=1,
        col=1,
        secondary_y=True,
    )
    # From zero: a throughput axis cut near its values made noise look dramatic.
    figure.update_yaxes(title_text="images/s", row=1, col=2)
    figure.update_yaxes(title_text="seconds", row=1, col=3)
    figure.update_layout(
        height=330,
        autosize=True,
        margin=dict(l=50, r=20, t=40, b=40),
        template="plotly_white",
        legend=dict(orientation="h", y=-0.22),
        uirevision="nbaccel",  # keeps the user's zoom across updates
    )
    return figure


Points = Callable[[str], tuple[list[float], list[float]]]  # trace name -> (xs, ys)


def fit_axes(figure: go.Figure, points: Points, fitted: set[str]) -> None:
    """An axis fits its points from the draw that brings its first ones, and spans 0..1
    again if they go (a new run in the panel). `fitted`: the axes fitting their points,
    kept by the chart: reading the layout instead would undo a user's zoom, which the
    widget writes back into it. Accuracy axes keep their 0-100%."""
    filled: dict[str, bool] = {}
    for trace in figure.data:
        has_points = bool(points(trace.name)[0])
        for axis in (
            "xaxis" + (trace.xaxis or "x")[1:],
            "yaxis" + (trace.yaxis or "y")[1:],
        ):
            filled[axis] = filled.get(axis, False) or has_points
    for name, has_points in filled.items():
        axis = figure.layout[name]
        if axis.tickformat == ACCURACY_AXIS["tickformat"]:
            continue
        if has_points and name not in fitted:
            axis.autorange = True
            fitted.add(name)
        elif not has_points and name in fitted:
            axis.update(EMPTY_AXIS)
            fitted.discard(name)


def fill(trace: go.Scatter, points: Points) -> None:
    """Sets a trace's points; a line trace with a single point shows it as a marker (a
    line needs two points to be seen)."""
    xs, ys = points(trace.name)  # (inside a batch update, trace.x reads the old value)
    trace.x, trace.y = xs, ys
    mode = trace.meta if len(xs) != 1 else "lines+markers"
    if trace.meta and trace.mode != mode:  # a change only: each one is sent to the view
        trace.mode = mode


class NoChart:
    """`charts="off"`: nothing drawn."""

    backend = "off"
    widget = None

    def __init__(self, figure: Optional[go.Figure] = None) -> None:
        pass

    def draw(self, points: Points) -> None:
        pass

    def show(self, empty: bool = False) -> None:
        """Displays the chart below the panel (html backend) or nothing (it is in it);
        `empty`: a place for it, filled by the first draw (a panel with no run yet)."""


class WidgetChart(NoChart):
    """A plotly FigureWidget that lives inside the panel; each draw is one batch update."""

    backend = "widget"

    def __init__(self, figure: Optional[go.Figure] = None) -> None:
        self.widget = go.FigureWidget(figure or create_figure())
        self._fitted: set[str] = set()

    def draw(self, points: Points) -> None:
        with self.widget.batch_update():
            for trace in self.widget.data:
                fill(trace, points)
            fit_axes(self.widget, points, self._fitted)


class HtmlChart(NoChart):
    """A plotly Figure shown below the panel and re-rendered through its display handle."""

    backend = "html"

    def __init__(self, figure: Optional[go.Figure] = None) -> None:
        self.figure = figure or create_figure()
        self._handle = None
        self._fitted: set[str] = set()

    def show(self, empty: bool = False) -> None:
        shown = {"text/plain": ""} if empty else self.bundle()
        self._handle = display(shown, raw=True, display_id=True)

    def draw(self, points: Points) -> None:
        with self.figure.batch_update():
            for trace in self.figure.data:
                fill(trace, points)
            fit_axes(self.figure, points, self._fitted)
        if self._handle is not None:
            self._handle.update(self.bundle(), raw=True)

    def bundle(self) -> dict:
        """plotly's own HTML (plotly.js from its CDN, as plotly's Colab renderer does) plus
        its JSON mimetype, which JupyterLab and VS Code render without the network."""
        return {
            "text/html": pio.to_html(
                self.figure, include_plotlyjs="cdn", full_html=False
            ),
            "application/vnd.plotly.v1+json": json.loads(self.figure.to_json()),
            "text/plain": "<nbaccel chart>",
        }


def create_chart(backend: str, figure: Optional[go.Figure] = None) -> NoChart:
    """The chart for a resolved backend ("widget", "html" or "off") showing `figure`
    (by default the run figure of create_figure())."""
    kinds = {"widget": WidgetChart, "html": HtmlChart, "off": NoChart}
    return kinds[backend](figure)


def create_comparison_figure() -> go.Figure:
    """Both runs' validation accuracy against wall time, and the target accuracy."""
    figure = go.Figure()
    for name, color, dash in (
        ("accelerated", "#1f77b4", None),
        ("baseline", "#d62728", "dot"),
        ("target", "#7f7f7f", "dash"),
    ):
        figure.add_scatter(
            x=[],
            y=[],
            name=name,
            mode="lines" if name == "target" else "lines+markers",
            line=dict(color=color, dash=dash),
        )
    figure.update_layout(
        height=330,
        autosize=True,
        template="plotly_white",
        title="validation accuracy against wall time",
        xaxis=dict(title="seconds", rangemode="tozero", **EMPTY_AXIS),
        yaxis=dict(title="val acc", **ACCURACY_AXIS),
        margin=dict(l=50, r=20, t=50, b=40),
        uirevision="nbaccel",
    )
    return figure
