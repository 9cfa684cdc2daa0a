"""The audit view: the summary, the class balance as bars, and each finding's images as
thumbnails (embedded PNGs, so they stay in the saved notebook).

With the widget backend the findings are the tabs of an ipywidgets Tab; with the html
backend (Colab, Kaggle, VS Code) each part is a static HTML output of its own.
"""

from __future__ import annotations

import html
from typing import Any, Optional

from nbaccel.core import Audit
from nbaccel.ui.environment import prepare_charts
from nbaccel.ui.gallery import card_html
from nbaccel.ui.view import View

SHOWN = 12  # images (or groups of copies) shown per finding
TITLES = {
    "exact_duplicates": "exact duplicates",
    "near_duplicates": "near duplicates",
    "leakage": "leakage across splits",
    "mislabels": "likely mislabels",
    "outliers": "outliers",
    "corrupt": "unreadable files",
}


def summary_html(audit: Audit) -> str:
    """The summary lines, and one bar per class (its images, all splits)."""
    lines = "<br>".join(html.escape(line) for line in audit.summary().splitlines())
    counts = audit.balance["counts"]
    largest = max(counts.values()) or 1
    bars = "".join(
        f"<tr><td style='padding:0 8px'>{html.escape(name)}</td><td>"
        f"<div style='background:#4c78a8;height:10px;width:{200 * n / largest:.0f}px'>"
        f"</div></td><td style='padding:0 8px;text-align:right'>{n}</td></tr>"
        for name, n in counts.items()
    )
    return f"<div>{lines}</div><table style='margin-top:4px'>{bars}</table>"


def finding_html(audit: Audit, finding: str) -> str:
    """A finding's images: one row of thumbnails per group of copies, or one card per
    image, each with its split, label and score."""
    rows = getattr(audit, finding)
    title = TITLES[finding]
    if not rows:
        return f"<div><b>{title}</b>: none</div>"
    more = f" (the first {SHOWN} of {len(rows)})" if len(rows) > SHOWN else ""
    if "indices" in rows[0]:  # groups of copies
        body = "".join(
            "<div style='border-bottom:1px solid #ddd'>"
            + "".join(
                _card(audit, i, [f"{s} · {lab}"])
                for i, s, lab in zip(g["indices"], g["splits"], g["labels"])
            )
            + f"<span style='font-size:11px'>similarity {g['similarity']:.4f}</span>"
            "</div>"
            for g in rows[:SHOWN]
        )
    else:
        body = "".join(_card(audit, r["index"], _caption(r)) for r in rows[:SHOWN])
    return f"<div><b>{title}</b>{more}</div><div>{body}</div>"


def _caption(row: dict) -> list[str]:
    where = f"{row['split']} · {row['label']}"
    if "suggested" in row:
        return [where, f"→ {row['suggested']} ({row['confidence']:.0%}, {row['why']})"]
    if "distance" in row:
        return [where, f"distance {row['distance']:.3f}"]
    return [where, row["error"][:60]]


def _card(audit: Audit, index: int, caption: list[str]) -> str:
    name = str(audit.items[index]).rsplit("/", 1)[-1]
    try:
        image = audit.load(index)
    except Exception:  # noqa: BLE001 - an unreadable file has no thumbnail
        image = None
    return card_html(image, [name, *caption])


class AuditView(View):
    """The view of an Audit; `charts` as for the panel ("auto", "widget", "html",
    "off"; the audit has no Plotly chart, so "off" shows the same as "html")."""

    def __init__(self, audit: Audit, charts: str = "auto") -> None:
        self.audit = audit
        self.backend, _ = prepare_charts(charts)
        self.summary = summary_html(audit)
        self.findings = {name: finding_html(audit, name) for name in TITLES}
        self.widget: Optional[Any] = None
        if self.backend == "widget":
            self.widget = self._build_widget()

    def _build_widget(self) -> Any:
        import ipywidgets as widgets

        tabs = widgets.Tab(
            children=[widgets.HTML(text) for text in self.findings.values()]
        )
        for position, name in enumerate(self.findings):
            count = len(getattr(self.audit, name))
            tabs.set_title(position, f"{TITLES[name]} ({count})")
        return widgets.VBox([widgets.HTML(self.summary), tabs])

    def bundles(self) -> list[dict]:
        """The static view: the summary, then one output per finding."""
        outputs = [{"text/html": self.summary, "text/plain": self.audit.summary()}]
        outputs += [
            {"text/html": text, "text/plain": ""} for text in self.findings.values()
        ]
        return outputs
