"""What the result views (interpretation, audit) share: an ipywidgets widget with the
widget backend, else static outputs that stay in the saved notebook."""

from __future__ import annotations

from typing import Any, Optional

from IPython.display import display


class View:
    """A subclass sets `widget` (the widget backend) or leaves it None and gives
    `bundles()`: the static outputs, each a mimetype bundle."""

    widget: Optional[Any] = None

    def bundles(self) -> list[dict]:
        raise NotImplementedError

    def as_widget(self) -> Any:
        """The widget, or an Output holding the static outputs (for a panel's pane)."""
        if self.widget is not None:
            return self.widget
        import ipywidgets as widgets

        output = widgets.Output()
        with output:
            display(self)
        return output

    def _ipython_display_(self) -> None:
        if self.widget is not None:
            display(self.widget)
            return
        for bundle in self.bundles():
            display(bundle, raw=True)
