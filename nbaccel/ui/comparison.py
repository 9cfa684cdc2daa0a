"""The comparison view: both runs' accuracy against wall time, and the measured figures.

cmp = nbaccel.compare(data, freeze="all", epochs=4)
nbaccel.ui.ComparisonPanel(cmp)      # or %fasttrain DATA ... --compare
"""

from __future__ import annotations

import ipywidgets as widgets
from IPython.display import display

from nbaccel.core import Comparison, EpochEnded, Event
from nbaccel.ui._format import comparison_status_html, comparison_summary_html
from nbaccel.ui.bridge import Bridge
from nbaccel.ui.charts import create_chart, create_comparison_figure
from nbaccel.ui.environment import prepare_charts


class ComparisonPanel:
    """A live view of a Comparison: a Stop button, where each run is, one chart, and the
    summary table (projection error, speedup, time to target) once both runs have ended."""

    def __init__(self, comparison: Comparison, charts: str = "auto") -> None:
        backend, rate = prepare_charts(charts)
        self.comparison = comparison
        self.stop_button = widgets.Button(
            description="Stop", icon="stop", button_style="danger"
        )
        self.status = widgets.HTML()
        self.summary = widgets.HTML()
        self.chart = create_chart(backend, create_comparison_figure())
        self.widget = widgets.VBox(
            [self.stop_button, self.status]
            + ([self.chart.widget] if self.chart.widget is not None else [])
            + [self.summary]
        )
        self.stop_button.on_click(lambda _: self.comparison.stop(timeout=0))
        # Validation accuracy against wall time, per run, and the target line.
        self._series: dict[str, tuple[list[float], list[float]]] = {
            name: ([], []) for name in ("accelerated", "baseline", "target")
        }
        self._bridge = Bridge(comparison.runs(), self._update, rate)

    def close(self) -> None:
        self._bridge.close()

    def _update(self, events: list[tuple[str, Event]], redraw: bool) -> None:
        """The bridge's batch: each epoch is a point of its run's curve; then render."""
        for name, event in events:
            if isinstance(event, EpochEnded):
                xs, ys = self._series[name]
                xs.append(event.elapsed_s)
                ys.append(event.val_acc)
        comparison = self.comparison
        target = comparison.target
        if target is not None:  # given, or the baseline's best once it has ended
            end = max([0.0] + [xs[-1] for xs, _ in self._series.values() if xs])
            self._series["target"] = ([0.0, end], [target, target])
        self.status.value = comparison_status_html(comparison)
        self.summary.value = comparison_summary_html(comparison)
        self.stop_button.disabled = comparison.status != "running"
        if redraw:
            self.chart.draw(lambda trace: self._series[trace])

    def _ipython_display_(self) -> None:
        display(self.widget)
        self.chart.show()
