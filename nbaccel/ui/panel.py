"""The control panel: Start / Pause / Stop, progress, status, errors, live charts, choices.

panel = nbaccel.ui.panel_for(run)   # or Panel() to pick everything with widgets
panel                               # shows it (build and show it on the main thread)
"""

from __future__ import annotations

import html
from typing import Any, Optional

import ipywidgets as widgets
from IPython.display import display

from nbaccel.core import (
    EpochEnded,
    Event,
    Progress,
    Run,
    RunEnded,
    RunStarted,
    TrainConfig,
    start_run,
)
from nbaccel.ui._format import format_seconds, savings_html, status_html
from nbaccel.ui.audit_view import AuditView
from nbaccel.ui.batch import batch_html
from nbaccel.ui.bridge import Bridge
from nbaccel.ui.charts import ChartData, create_chart
from nbaccel.ui.controls import Controls
from nbaccel.ui.environment import prepare_charts
from nbaccel.ui.interpretation import InterpretationView
from nbaccel.ui.section import LazySection


class Panel:
    """A run's live view, and a way to start the next one.

    Args:
        run: the run to show (live or ended); None opens an idle panel with pickers.
        charts: "auto" | "widget" | "html" | "off" (see nbaccel.ui.environment).
        defaults: fasttrain() keywords to prefill the choices when there is no run.

    Raises:
        ValueError: `charts` is not one of the backends.
    """

    def __init__(
        self,
        run: Optional[Run] = None,
        charts: str = "auto",
        defaults: Optional[dict] = None,
    ) -> None:
        backend, self._rate = prepare_charts(charts)
        self._backend = backend
        if run is not None:
            config = run.config
            defaults = {
                name: getattr(config, name) for name in config.__dataclass_fields__
            }
        self.controls = Controls(
            defaults, num_classes=len(run.class_names) if run else 10
        )
        self.start_button = widgets.Button(
            description="Start", icon="play", button_style="success"
        )
        self.pause_button = widgets.Button(description="Pause", icon="pause")
        self.stop_button = widgets.Button(
            description="Stop", icon="stop", button_style="danger"
        )
        self.progress = widgets.IntProgress(
            min=0, max=1, layout=widgets.Layout(width="360px")
        )
        self.progress_text = widgets.Label()
        self.status = widgets.HTML()
        self.savings = widgets.HTML()  # time saved against the baseline
        self.message = widgets.HTML()  # a refused choice, in the API's words
        self.error = widgets.HTML(layout=widgets.Layout(display="none"))  # traceback
        self.chart = create_chart(backend)
        # Opened on demand: the run's training images as the model sees them (from its
        # start), and where the best weights go wrong (once it has ended).
        self.batch = LazySection("training batch: what the model sees")
        self.results = LazySection("where the model is wrong: validation images")
        self.audit = LazySection(
            "data audit: duplicates, leakage, likely mislabels, outliers"
        )
        self.ship = LazySection("ship: an int8 ONNX model, against float32")
        choices = widgets.Accordion(children=[self.controls.widget])
        choices.set_title(0, "choices")
        choices.selected_index = None if run else 0
        # The chart joins the panel with its first run (_follow): an idle panel shows
        # no empty axes, and a figure drawn into view gets the panel's full width.
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.start_button, self.pause_button, self.stop_button]),
                widgets.HBox([self.progress, self.progress_text]),
                self.status,
                self.savings,
                self.message,
                self.error,
                self.batch.widget,
                self.results.widget,
                self.audit.widget,
                self.ship.widget,
                choices,
            ]
        )
        self.start_button.on_click(lambda _: self.start())
        self.pause_button.on_click(lambda _: self.toggle_pause())
        self.stop_button.on_click(lambda _: self.stop())
        self.run: Optional[Run] = None
        self._reset()
        self._bridge = Bridge({}, self._update, self._rate)
        if run is not None:
            self._follow(run)

    def start(self) -> Optional[Run]:
        """Starts a run with the panel's choices (the Start button). A bad choice is refused
        in the message line with the API's own words, and no run starts."""
        self.message.value = ""
        if self.run is not None and self.run.status in ("pending", "running", "paused"):
            self._refuse("a run is in progress: press Stop before starting another")
            return None
        try:
            self.status.value = "preparing the data and the model…"
            run = start_run(TrainConfig(**self.controls.to_kwargs()))
        except ValueError as error:
            self._refuse(str(error))
            self._bridge.flush()
            return None
        self._follow(run)
        return run

    def toggle_pause(self) -> None:
        """Pauses a running run, resumes a paused one (the Pause/Resume button)."""
        if self.run is None:
            return
        if self.run.status == "paused":
            self.run.resume()
        else:
            self.run.pause()
        self._bridge.flush()

    def stop(self) -> None:
        """Asks the run to stop at the next step boundary (the Stop button); returns at once."""
        if self.run is None:
            return
        self._stop_requested = True
        self.run.stop(timeout=0)
        self._bridge.flush()

    def close(self) -> None:
        """Stops following the run (the run itself goes on)."""
        self._bridge.close()

    def _follow(self, run: Run) -> None:
        self._bridge.close()
        chart = self.chart.widget
        if chart is not None and chart not in self.widget.children:
            *above, choices = self.widget.children
            self.widget.children = (*above, chart, choices)
        self.run = run
        self._reset()
        self.batch.set_content(lambda: widgets.HTML(batch_html(run.show_batch())))
        self.results.set_content(None)
        self.audit.set_content(None)
        self.ship.set_content(None)
        self._bridge = Bridge({"run": run}, self._update, self._rate)

    # --- the run's state, and onto the widgets -----------------------------------------

    def _reset(self) -> None:
        """The view's own state for a new run (events apply to it; the rest is read from
        the run, whose reads take no lock)."""
        self._chart_data = ChartData()
        self._started: Optional[RunStarted] = None
        self._progress: Optional[Progress] = None  # the latest, for the progress bar
        self._ended: Optional[RunEnded] = None
        self._notes: list[str] = []  # changes of course (Progress.note)
        self._recall: dict[int, tuple[float, ...]] = {}  # per-class recall by epoch
        self._stop_requested = False

    def _update(self, events: list[tuple[str, Event]], redraw: bool) -> None:
        """The bridge's batch: apply the events, then render."""
        for _, event in events:
            if isinstance(event, Progress) and event.note:
                self._notes.append(event.note)  # not a point on the charts
                continue
            self._chart_data.add(event)
            if isinstance(event, RunStarted):
                self._started = event
            elif isinstance(event, Progress):
                self._progress = event
            elif isinstance(event, EpochEnded):
                self._recall[event.epoch] = event.class_recall
            elif isinstance(event, RunEnded):
                self._ended = event
                if self.run is not None and event.best_epoch is not None:
                    self.results.set_content(self._interpretation)
                    self.audit.set_content(self._audit)
                    self.ship.set_content(self._ship)
        self._render(redraw)

    def _audit(self) -> Any:
        """The ended run's data audit, with its model's features and predictions."""
        assert self.run is not None
        return AuditView(self.run.audit(), charts=self._backend).as_widget()

    def _ship(self) -> Any:
        """A path and a button: run.export(path, quantize="int8"), its report below."""
        assert self.run is not None
        run = self.run
        path = widgets.Text(
            value=f"{run.config.backbone}-int8.onnx",
            description="file",
            layout=widgets.Layout(width="420px"),
        )
        button = widgets.Button(description="Export int8", icon="download")
        report = widgets.HTML(
            "<small>static int8 quantization (onnxruntime), calibrated on training "
            "images; refused if validation accuracy drops by more than 0.01</small>"
        )

        def export(_: Any) -> None:
            button.disabled = True
            report.value = "<i>exporting and measuring…</i>"
            try:
                report.value = run.export(path.value, quantize="int8")._repr_html_()
            except (ValueError, ImportError, RuntimeError, OSError) as error:
                report.value = (
                    f"<span style='color:#b00020'>✗ {html.escape(str(error))}</span>"
                )
            finally:
                button.disabled = False

        button.on_click(export)
        return widgets.VBox([widgets.HBox([path, button]), report])

    def _interpretation(self) -> Any:
        """The ended run's interpretation view, as the panel's chart backend draws it."""
        assert self.run is not None
        view = InterpretationView(self.run.interpret(), charts=self._backend)
        return view.as_widget()

    def _render(self, redraw: bool) -> None:
        status = self.run.status if self.run else "idle"
        live = status in ("pending", "running", "paused")
        self.start_button.disabled = live
        self.pause_button.disabled = not live or self._stop_requested
        self.pause_button.description = "Resume" if status == "paused" else "Pause"
        self.pause_button.icon = "play" if status == "paused" else "pause"
        self.stop_button.disabled = not live or self._stop_requested
        self.controls.set_enabled(not live)
        self.status.value = (
            status_html(
                status,
                self._started,
                self._ended,
                self.run.best,
                self._stop_requested,
                self._notes,
                self._recall.get(self.run.best["epoch"], ()) if self.run.best else (),
            )
            if self.run
            else "Choose data and a backbone, then Start."
        )
        savings = self.run.savings if self.run else None
        best = self.run.best if self.run else None
        self.savings.value = savings_html(savings, self._progress, best)
        self._render_progress(status)
        failed = self._ended is not None and self._ended.status == "failed"
        self.error.value = (
            f"<pre style='white-space:pre-wrap;color:#b00020'>"
            f"{html.escape(self._ended.traceback or self._ended.reason)}</pre>"
            if failed and self._ended
            else ""
        )
        self.error.layout.display = None if failed else "none"
        if redraw:
            self.chart.draw(self._chart_data.points)

    def _render_progress(self, status: str) -> None:
        bar, label = self.progress, self.progress_text
        started, progress = self._started, self._progress
        if started is None:
            bar.value, label.value = 0, ""
            return
        total = started.epochs * started.steps_per_epoch
        done = (
            (progress.epoch - 1) * started.steps_per_epoch + progress.step
            if progress
            else 0
        )
        bar.max = total
        bar.value = min(done, total)
        bar.bar_style = {"finished": "success", "failed": "danger"}.get(status, "")
        if progress is None:
            label.value = f"epoch 1/{started.epochs} · starting"
            return
        where = (
            f"epoch {progress.epoch}/{started.epochs} · "
            f"step {progress.step}/{started.steps_per_epoch}"
        )
        if status == "running" and done:
            left = progress.elapsed_s * (total - done) / done
            where += f" · {format_seconds(left)} left at most"
        elif status == "paused":
            where += " · paused"
        label.value = where

    def _refuse(self, text: str) -> None:
        self.message.value = f"<span style='color:#b00020'>✗ {html.escape(text)}</span>"

    def _ipython_display_(self) -> None:
        display(self.widget)
        self.chart.show(empty=self.run is None)

    def __repr__(self) -> str:
        return f"<nbaccel Panel: {self.run!r}>"


def panel_for(run: Run, charts: str = "auto", **kwargs: Any) -> Panel:
    """A new panel following `run`: live while it trains, its whole history once it has ended."""
    return Panel(run, charts=charts, **kwargs)
