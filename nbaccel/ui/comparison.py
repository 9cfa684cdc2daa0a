"""The comparison view: both runs' accuracy against wall time, and the measured figures.

cmp = nbaccel.compare(data, freeze="all", epochs=4)
nbaccel.ui.ComparisonPanel(cmp)      # or %fasttrain DATA ... --compare
"""

from __future__ import annotations

import ipywidgets as widgets
from IPython.display import display

from nbaccel.core import Comparison
from nbaccel.ui.bridge import ComparisonBridge
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
        self._bridge = ComparisonBridge(self, comparison, rate)

    def close(self) -> None:
        self._bridge.close()

    def _ipython_display_(self) -> None:
        display(self.widget)
        self.chart.show()
