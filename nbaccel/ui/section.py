"""A collapsed section of a view whose content is made only when it is first opened: a
batch of images to decode, a validation pass to run, paid for only by who looks."""

from __future__ import annotations

import html
from typing import Any, Callable, Optional

import ipywidgets as widgets


class LazySection:
    """An Accordion with one collapsed pane titled `title`; opening it calls `make()` (on
    the main thread: the click's handler) and shows the widget it returns. A failure shows
    as the error's message in the pane."""

    def __init__(self, title: str) -> None:
        self.body = widgets.VBox([])
        self.widget = widgets.Accordion(children=[self.body])
        self.widget.set_title(0, title)
        self.widget.selected_index = None
        self.widget.layout.display = "none"  # until set_content()
        self._make: Optional[Callable[[], Any]] = None
        self.widget.observe(self._toggled, names="selected_index")

    def set_content(self, make: Optional[Callable[[], Any]]) -> None:
        """What the pane shows, made when next opened (collapsed now); None hides it."""
        self._make = make
        self.body.children = ()
        self.widget.selected_index = None
        self.widget.layout.display = "none" if make is None else None

    def open(self) -> None:
        """Opens the pane, as a click does."""
        self.widget.selected_index = 0

    def _toggled(self, change: dict) -> None:
        if change["new"] is None or self.body.children or self._make is None:
            return
        try:
            content = self._make()
        except Exception as error:  # noqa: BLE001 - said in the pane, not lost in a log
            content = widgets.HTML(
                f"<span style='color:#b00020'>✗ {html.escape(type(error).__name__)}: "
                f"{html.escape(str(error))}</span>"
            )
        self.body.children = (content,)
