"""%fasttrain: parse the line, build a TrainConfig, start a Run, show its panel, return it.

%load_ext nbaccel
run = %fasttrain ./photos --backbone convnext_tiny --freeze 3 --stop patience:3
%fasttrain                      # no data: an idle panel with pickers
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Union

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from nbaccel.core import (
    Audit,
    BatchPreview,
    Comparison,
    Interpretation,
    Run,
    TrainConfig,
    current_run,
    list_options,
    prepare_comparison,
    prepare_run,
)
from nbaccel.core.openmp import release_thread_pool
from nbaccel.ui import AuditView, ComparisonPanel, InterpretationView, Panel
from nbaccel.ui.batch import show_batch
from nbaccel.ui.environment import CHART_BACKENDS


def _option_flags(function: Any) -> Any:
    """One flag per fasttrain() option (--batch-size for batch_size), with its help and
    default, from the option's one definition in TrainConfig."""
    for spec in reversed(list_options()):
        help_text = f"{spec.help} (default {_as_flag_text(spec.default)})".replace(
            "%", "%%"
        )  # argparse formats help with %
        function = argument(spec.flag, dest=spec.name, help=help_text)(function)
    return function


def _as_flag_text(value: Any) -> str:
    """A default as one would type it after the flag: True -> yes, None -> none."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "none" if value is None else str(value)


@magics_class
class FastTrainMagics(Magics):
    """The %fasttrain line magic and the display of a Run as its live panel."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        # (id of the run, execution count) whose panel %fasttrain has just shown, so the
        # same cell's Out does not show it twice.
        self._shown: Optional[tuple[int, int]] = None

    @magic_arguments()
    @argument(
        "data",
        nargs="?",
        help="an image folder (one subfolder per class, or train/ and val/), or the name of "
        "a variable holding (images, labels) or a torch Dataset. Leave out to open the "
        "panel and pick everything there.",
    )
    @_option_flags
    @argument(
        "--charts",
        default="auto",
        help="widget | html | off (default: widget in JupyterLab, html on Colab, Kaggle "
        "and VS Code)",
    )
    @argument(
        "--wait",
        action="store_true",
        help="block the cell until the run has ended (fasttrain(background=False))",
    )
    @argument(
        "--compare",
        action="store_true",
        help="also train the baseline (every layer, fp32, no early stop) for real, after "
        "this run, and show both: the projected saving against the measured one",
    )
    @line_magic
    def fasttrain(self, line: str = "") -> Union[Run, Comparison, None]:
        """Fine-tune a timm image model on DATA in the background, with a live panel.

        Returns the Run (run.wait(), run.stop(), run.history, run.model), or with
        --compare the Comparison (cmp.wait(), cmp.speedup, cmp.projection_error). The notebook
        stays usable while it trains; the panel's Stop button or run.stop() ends it.
        """
        args = parse_argstring(self.fasttrain, line)
        if args.charts not in CHART_BACKENDS:
            raise UsageError(
                f"--charts must be one of {', '.join(CHART_BACKENDS)}, got {args.charts!r}"
            )
        keywords = self._keywords(args)
        if args.data is None:
            display(Panel(charts=args.charts, defaults=keywords))
            return None
        try:
            data = self._data(args.data)
            if args.compare:
                run: Union[Run, Comparison] = prepare_comparison(data, **keywords)
            else:
                run = prepare_run(TrainConfig(data=data, **keywords), set(keywords))
        except ValueError as error:
            raise UsageError(str(error)) from None
        # The panel is drawn before training starts: drawing it holds the GIL for a
        # second or two, which would slow the first steps and the baseline's timing.
        view = ComparisonPanel if isinstance(run, Comparison) else Panel
        display(view(run, charts=args.charts))
        self._shown = (id(run), self.shell.execution_count)
        if isinstance(run, Run) and args.wait:
            # The cell blocks anyway: train on this thread (faster on a CPU, see
            # Run.start); Interrupt stops the run at the next step.
            return run.start(background=False).wait()
        run.start()
        if args.wait:
            try:
                run.wait()
            except KeyboardInterrupt:  # Interrupt does not reach the thread: stop it
                run.stop()
                raise
        return run

    def display_run(self, run: Union[Run, Comparison]) -> None:
        """Shows a Run or a Comparison as its live panel (the last line of a cell)."""
        if self._shown == (id(run), self.shell.execution_count):
            return  # %fasttrain in this very cell has shown it already
        display(ComparisonPanel(run) if isinstance(run, Comparison) else Panel(run))

    def _data(self, name: str) -> Any:
        namespace = self.shell.user_ns
        if name in namespace:
            return namespace[name]
        path = Path(name).expanduser()
        if name.isidentifier() and not path.exists():
            raise UsageError(
                f"DATA {name!r} is neither a variable in this notebook nor an existing "
                "folder: give the path of an image folder or the name of a variable "
                "holding (images, labels) or a Dataset"
            )
        return path

    def _keywords(self, args: Any) -> dict:
        """The flags given, as fasttrain() keywords: each option's text read the way its
        definition says; TrainConfig then checks the values."""
        keywords = {}
        for spec in list_options():
            text = getattr(args, spec.name)
            if text is not None:
                keywords[spec.name] = spec.parse(text)
        if isinstance(keywords.get("val"), str):
            keywords["val"] = self._data(keywords["val"])
        return keywords


def release_openmp_after_cell(*_: Any) -> None:
    """After each cell, while a run trains on the CPU, frees the OpenMP workers the cell
    made for the main thread, so the training thread's pool stays the only one (see
    nbaccel.core.openmp: two pools on the same cores slow training down by a third)."""
    run = current_run()
    if run is not None and run.device == "cpu" and run.status in ("running", "paused"):
        release_thread_pool()


def show_interpretation(interp: Interpretation) -> None:
    """run.interpret() as a cell's last line: its view (heatmaps, table, images)."""
    display(InterpretationView(interp))


def show_audit(audit: Audit) -> None:
    """nbaccel.audit(...) or run.audit() as a cell's last line: its view (thumbnails)."""
    display(AuditView(audit))


# What a result shows as when it is a cell's last line (registered by %load_ext).
VIEWS: dict[type, Callable[[Any], None]] = {
    Interpretation: show_interpretation,
    BatchPreview: show_batch,
    Audit: show_audit,
}


def load_ipython_extension(shell: Any) -> None:
    """%load_ext nbaccel: registers %fasttrain and shows a Run as its panel. Idempotent."""
    _warn_about_broken_ipykernel()
    if release_openmp_after_cell not in shell.events.callbacks["post_run_cell"]:
        shell.events.register("post_run_cell", release_openmp_after_cell)
    magics = FastTrainMagics(shell)
    shell.register_magics(magics)
    formatter = shell.display_formatter.ipython_display_formatter
    formatter.for_type(Run, magics.display_run)
    formatter.for_type(Comparison, magics.display_run)
    for kind, view in VIEWS.items():
        formatter.for_type(kind, view)


def unload_ipython_extension(shell: Any) -> None:
    """Stops a live run, then removes %fasttrain and the Run display."""
    run = current_run()
    if run is not None and run.status in ("running", "paused"):
        run.stop()
    if release_openmp_after_cell in shell.events.callbacks["post_run_cell"]:
        shell.events.unregister("post_run_cell", release_openmp_after_cell)
    formatter = shell.display_formatter.ipython_display_formatter
    formatter.pop(Run, None)
    formatter.pop(Comparison, None)
    for kind in VIEWS:
        formatter.pop(kind, None)
    shell.magics_manager.magics["line"].pop("fasttrain", None)
    shell.magics_manager.registry.pop(FastTrainMagics.__name__, None)


def _warn_about_broken_ipykernel() -> None:
    version = getattr(sys.modules.get("ipykernel"), "__version__", "")
    if version in ("7.0.0", "7.0.1"):
        warnings.warn(
            f"ipykernel {version} drops widget updates sent from threads, so the panel "
            "will not update while training; upgrade with: pip install 'ipykernel>=7.1'",
            stacklevel=3,
        )


__all__ = ["FastTrainMagics", "load_ipython_extension", "unload_ipython_extension"]
