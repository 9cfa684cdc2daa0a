"""Live charts (#3): series built from a real run's events, thinning, and the html backend
re-rendered through a display handle with plotly's own output."""

from __future__ import annotations

import pytest

import nbaccel
from nbaccel.core import EpochEnded, Progress, SavingsUpdated
from nbaccel.ui import panel_for
from nbaccel.ui._format import format_saved, savings_html
from nbaccel.ui.charts import (
    MAX_POINTS,
    ChartData,
    HtmlChart,
    create_figure,
    thin,
)
from tests.conftest import SMALL


@pytest.fixture(scope="module")
def finished_run(digits_high):
    return nbaccel.fasttrain(
        digits_high, pretrained=False, epochs=3, stop="none", background=False, **SMALL
    )


def test_series_follow_the_events(finished_run):
    data = ChartData()
    events = finished_run.events
    progress = [e for e in events if isinstance(e, Progress)]
    epochs = [e for e in events if isinstance(e, EpochEnded)]
    savings = None
    for event in events:
        data.add(event)
        if isinstance(event, SavingsUpdated):
            savings = event.savings
        if event is progress[0]:  # mid-run, a projection to the end of the budget
            (x0, x1), (y0, y1) = data.series["projected"]
            assert x1 == 3 and y0 == event.elapsed_s
            # The savings' projection: the chart's gap to the baseline's line at the
            # budget's end is the headline's projected saving at this point.
            assert savings is not None
            assert y1 == pytest.approx(event.elapsed_s + (3 - x0) * savings.own_epoch_s)
            headline = savings_html(savings, event, None)
            baseline_end = data.series["baseline"][1][-1]
            assert format_saved(baseline_end - y1) + " projected" in headline
    assert data.series["val loss"] == ([1, 2, 3], [e.val_loss for e in epochs])
    assert data.series["val acc"][1] == [e.val_acc for e in epochs]
    # Train loss per window between Progress events, recovered from the running means.
    windows = data.series["train loss"][1]
    assert len(windows) == len(progress)
    for epoch in (1, 2, 3):  # the windows, weighted by their steps, give the epoch mean
        steps = [0] + [p.step for p in progress if p.epoch == epoch]
        means = [w for w, p in zip(windows, progress) if p.epoch == epoch]
        total = sum(m * (b - a) for m, a, b in zip(means, steps, steps[1:]))
        epoch_mean = epochs[epoch - 1].train_loss
        assert total / steps[-1] == pytest.approx(epoch_mean)
    assert windows != [
        p.train_loss for p in progress
    ]  # not the restarting running mean
    xs = data.series["elapsed"][0]
    assert xs[0] == 0 and xs == sorted(xs) and xs[-1] == 3
    assert data.series["projected"] == ([], [])  # cleared once the run has ended
    # The baseline's projected time, from the last SavingsUpdated (#4).
    xs, ys = data.series["baseline"]
    assert xs == [0, 3] and ys == pytest.approx([0, finished_run.savings.baseline_s])


def test_thin_keeps_recent_points_and_the_limit():
    xs = list(range(5000))
    ys = [x * 2 for x in xs]
    kept_x, kept_y = thin(xs, ys)
    assert len(kept_x) == MAX_POINTS and kept_x[0] == 0
    assert kept_x[-MAX_POINTS // 2 :] == xs[-MAX_POINTS // 2 :]
    assert kept_x == sorted(set(kept_x)) and kept_y == [x * 2 for x in kept_x]
    assert thin(xs[:10], ys[:10]) == (xs[:10], ys[:10])


@pytest.mark.colab
def test_figure_has_the_three_panels_and_every_trace():
    figure = create_figure()
    assert [t.name for t in figure.data] == [
        "train loss",
        "val loss",
        "val acc",
        "images/s",
        "elapsed",
        "projected",
        "baseline",
    ]
    titles = [a.text for a in figure.layout.annotations]
    assert titles == ["loss and accuracy", "throughput", "time"]


@pytest.mark.colab
def test_a_single_point_is_drawn_as_a_marker_until_a_line_can_be_seen():
    chart = HtmlChart()
    series = {"train loss": ([0.1], [2.3])}
    chart.draw(lambda name: series.get(name, ([], [])))
    modes = {t.name: t.mode for t in chart.figure.data}
    assert modes["train loss"] == "lines+markers"  # one point: a marker
    assert modes["images/s"] == "lines" and modes["val loss"] == "lines+markers"
    series["train loss"] = ([0.1, 0.2], [2.3, 2.1])
    chart.draw(lambda name: series.get(name, ([], [])))
    assert chart.figure.data[0].mode == "lines"  # two points: the line again


@pytest.mark.colab
def test_empty_axes_span_zero_to_one_and_fit_their_points_once_they_have_some():
    chart = HtmlChart()
    layout = chart.figure.layout
    empty = ["xaxis", "yaxis", "xaxis2", "yaxis3", "xaxis3", "yaxis4"]
    for name in empty:  # not Plotly's -1..4 for a trace-less axis
        assert layout[name].autorange is False and tuple(layout[name].range) == (0, 1)
    assert tuple(layout.yaxis2.range) == (0, 1.02)  # accuracy: always 0-100%
    series = {"images/s": ([0.5, 1.0], [310.0, 290.0])}
    chart.draw(lambda name: series.get(name, ([], [])))
    assert layout.xaxis2.autorange is True and layout.yaxis3.autorange is True
    assert layout.yaxis3.rangemode == "tozero"  # 0 to the points, noise kept small
    assert layout.yaxis.autorange is False and layout.yaxis4.autorange is False
    assert tuple(layout.yaxis2.range) == (0, 1.02) and layout.yaxis2.autorange is False
    # A user's zoom (the widget writes it into the layout) outlives later draws.
    layout.xaxis2.update(autorange=False, range=[0.6, 0.9])
    series["images/s"] = ([0.5, 1.0, 1.5], [310.0, 290.0, 300.0])
    chart.draw(lambda name: series.get(name, ([], [])))
    assert tuple(layout.xaxis2.range) == (0.6, 0.9)
    chart.draw(lambda name: ([], []))  # a new run in the panel: empty again
    assert tuple(layout.xaxis2.range) == (0, 1) and layout.xaxis2.autorange is False


@pytest.mark.colab
def test_html_backend_renders_plotly_html_through_one_display_handle(
    monkeypatch, shell, digits_high
):
    published = []
    monkeypatch.setattr(
        shell.display_pub,
        "publish",
        lambda data, metadata=None, **kwargs: published.append((data, kwargs)),
    )
    run = nbaccel.fasttrain(
        digits_high, pretrained=False, epochs=2, stop="none", **SMALL
    )
    panel = panel_for(run, charts="html")
    assert panel.chart.widget is None
    shell.display_formatter.ipython_display_formatter(panel)  # as `panel` in a cell
    run.wait(timeout=60)

    charts = [(d, k) for d, k in published if "application/vnd.plotly.v1+json" in d]
    first, last = charts[0], charts[-1]
    display_id = first[1]["transient"]["display_id"]
    assert not first[1].get("update") and last[1]["update"] is True
    assert {k["transient"]["display_id"] for _, k in charts} == {display_id}
    assert "https://cdn.plot.ly/plotly" in last[0]["text/html"]
    assert "Plotly.newPlot" in last[0]["text/html"]
    traces = {t["name"]: t for t in last[0]["application/vnd.plotly.v1+json"]["data"]}
    assert traces["val loss"]["y"] == [row["val_loss"] for row in run.history]
