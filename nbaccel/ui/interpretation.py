"""The interpretation view: the confusion matrix as Plotly heatmaps (counts, and each row
as a share of its class), the per-class table and the images the model got most wrong.

With the widget backend, clicking a cell of a heatmap shows that cell's images below it.
With the html backend (Colab, Kaggle, VS Code) the same view is static HTML that stays in
the saved notebook.
"""

from __future__ import annotations

import html
import json
from typing import Any, Optional

import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from nbaccel.core import Interpretation
from nbaccel.ui.environment import prepare_charts
from nbaccel.ui.gallery import cards_html
from nbaccel.ui.view import View

GALLERY = 12  # images in the top-losses gallery, and at most per clicked cell


def create_interpretation_figure(interp: Interpretation) -> go.Figure:
    """Two heatmaps, rows = true class, columns = prediction: counts, and the share of
    each true class (recall on the diagonal)."""
    names = list(interp.class_names)
    figure = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("images", "share of the true class"),
        horizontal_spacing=0.12,
    )
    counts = interp.confusion_matrix
    shares = interp.normalized_confusion_matrix
    for column, (z, text, scale) in enumerate(
        (
            (counts, [[str(v) for v in row] for row in counts], "Blues"),
            (shares, [[f"{v:.0%}" for v in row] for row in shares], "Greens"),
        ),
        start=1,
    ):
        figure.add_trace(
            go.Heatmap(
                z=z.tolist(),
                x=names,
                y=names,
                text=text,
                texttemplate="%{text}",
                colorscale=scale,
                showscale=False,
                hovertemplate="true %{y}, predicted %{x}: %{text}<extra></extra>",
            ),
            row=1,
            col=column,
        )
        figure.update_xaxes(title_text="predicted", row=1, col=column, type="category")
        figure.update_yaxes(
            title_text="true", row=1, col=column, type="category", autorange="reversed"
        )
    side = max(320, 36 * len(names) + 140)
    figure.update_layout(height=side, margin=dict(l=60, r=20, t=40, b=60))
    return figure


def metrics_html(interp: Interpretation) -> str:
    """Accuracy, top-k accuracy where k < classes, and one table row per class."""
    classes = len(interp.class_names)
    tops = [k for k in (2, 3, 5) if k < classes]
    head = (
        f"<b>accuracy {interp.accuracy:.3f}</b> on {len(interp.targets)} images"
        + "".join(f" · top-{k} {interp.top_k_accuracy(k):.3f}" for k in tops)
    )
    cell = "style='padding:1px 12px;text-align:right'"
    rows = "".join(
        f"<tr><td style='padding:1px 12px'>{html.escape(r['name'])}</td>"
        + "".join(
            f"<td {cell}>{r[key]:.3f}</td>" for key in ("precision", "recall", "f1")
        )
        + f"<td {cell}>{r['support']}</td></tr>"
        for r in interp.per_class
    )
    heads = "".join(
        f"<th {cell}>{name}</th>" for name in ("precision", "recall", "F1", "support")
    )
    return (
        f"<div>{head}</div><table style='border-collapse:collapse;margin-top:4px'>"
        f"<tr><th style='padding:1px 12px'>class</th>{heads}</tr>{rows}</table>"
    )


def gallery_html(interp: Interpretation, rows: list[dict], title: str) -> str:
    """Thumbnails with true label, prediction, its probability and the loss."""
    if not rows:
        return f"<div><b>{html.escape(title)}</b>: none</div>"
    cards = (
        (
            interp.images.load(row["index"]),
            [
                f"true {row['label']}",
                f"predicted {row['predicted']} ({row['probability']:.0%})",
                f"loss {row['loss']:.2f}",
            ],
        )
        for row in rows[:GALLERY]
    )
    more = f" (the first {GALLERY} of {len(rows)})" if len(rows) > GALLERY else ""
    return f"<div><b>{html.escape(title)}</b>{more}</div>{cards_html(cards)}"


class InterpretationView(View):
    """The view of an Interpretation; `charts` as for the panel ("auto", "widget",
    "html", "off": the tables and images without the heatmaps)."""

    def __init__(self, interp: Interpretation, charts: str = "auto") -> None:
        self.interp = interp
        self.backend, _ = prepare_charts(charts)
        self.figure = create_interpretation_figure(interp)
        self.metrics = metrics_html(interp)
        self.top_losses = gallery_html(
            interp, interp.top_losses(GALLERY), "the top losses"
        )
        self.widget: Optional[Any] = None
        if self.backend == "widget":
            self.widget = self._build_widget()

    def show_cell(self, true: str, predicted: str) -> str:
        """The gallery of one confusion-matrix cell (what a click shows)."""
        rows = self.interp.cell(true, predicted)
        html_text = gallery_html(
            self.interp, rows, f"true {true}, predicted {predicted}"
        )
        if self.widget is not None:
            self._cell.value = html_text
        return html_text

    def _build_widget(self) -> Any:
        import ipywidgets as widgets

        chart = go.FigureWidget(self.figure)
        self._cell = widgets.HTML("<i>click a cell to see its images</i>")
        for trace in chart.data:
            trace.on_click(self._clicked)
        self._chart = chart
        return widgets.VBox(
            [
                widgets.HTML(self.metrics),
                chart,
                self._cell,
                widgets.HTML(self.top_losses),
            ]
        )

    def _clicked(self, trace: Any, points: Any, state: Any) -> None:
        if points.point_inds:
            row, column = points.point_inds[0]
            names = self.interp.class_names
            self.show_cell(names[row], names[column])

    def bundles(self) -> list[dict]:
        """The static view as three outputs: the table, the heatmaps (plotly's HTML, and
        its JSON mimetype that JupyterLab renders offline; a front end shows one of the
        two, so the tables are outputs of their own) and the images."""
        outputs = [{"text/html": self.metrics, "text/plain": repr(self.interp)}]
        if self.backend != "off":
            outputs.append(
                {
                    "text/html": pio.to_html(
                        self.figure, include_plotlyjs="cdn", full_html=False
                    ),
                    "application/vnd.plotly.v1+json": json.loads(self.figure.to_json()),
                    "text/plain": "<nbaccel confusion matrix>",
                }
            )
        outputs.append({"text/html": self.top_losses, "text/plain": ""})
        return outputs
