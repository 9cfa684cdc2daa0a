"""nbaccel: fast, visible fine-tuning of timm image models from a notebook.

    import nbaccel
    run = nbaccel.fasttrain(nbaccel.datasets.digits(), backbone="resnet18", pretrained=False)
    run.wait().history

Importing nbaccel touches no GPU, downloads nothing and builds no widget.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names below load on first use (PEP 562): see __getattr__
    from nbaccel import datasets as datasets
    from nbaccel.core import (
        Audit,
        BatchPreview,
        Comparison,
        EpochEnded,
        Event,
        ExportReport,
        FreezeOption,
        Interpretation,
        LayerGroup,
        LoadedModel,
        OptionSpec,
        Predictions,
        Progress,
        Run,
        RunEnded,
        RunStarted,
        SavedRun,
        Savings,
        SavingsUpdated,
        TestScore,
        TrainConfig,
        TrainingFailed,
        audit,
        compare,
        current_run,
        fasttrain,
        list_freeze_options,
        list_layer_groups,
        list_options,
        load,
        load_run,
        parse_stop_rule,
        runs,
    )

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """The public names load on first use: `import nbaccel` and `%load_ext nbaccel` return
    at once (torch and timm take seconds to import, ten or more on Colab), and the
    extension can say so before the wait."""
    if name in ("core", "datasets", "ui", "magics"):  # the subpackages, as attributes
        return importlib.import_module(f"nbaccel.{name}")
    if name in __all__:
        value = getattr(importlib.import_module("nbaccel.core"), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module 'nbaccel' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def load_ipython_extension(ipython):  # noqa: ANN001, ANN201 - IPython's hook
    """`%load_ext nbaccel`: registers `%fasttrain` (the notebook libraries load only now).
    A line says what is loading at once, then that %fasttrain is ready."""
    from IPython.display import display

    handle = display(
        {"text/plain": "nbaccel: loading torch and timm…"}, raw=True, display_id=True
    )
    from nbaccel.magics import load_ipython_extension as load

    load(ipython)
    ready = "nbaccel: %fasttrain is ready (%fasttrain? lists its flags)"
    if handle is not None:
        handle.update({"text/plain": ready}, raw=True)


def unload_ipython_extension(ipython):  # noqa: ANN001, ANN201 - IPython's hook
    """`%unload_ext nbaccel`: stops a live run and removes `%fasttrain`."""
    from nbaccel.magics import unload_ipython_extension as unload

    unload(ipython)


__all__ = [
    "Audit",
    "BatchPreview",
    "Comparison",
    "EpochEnded",
    "Event",
    "ExportReport",
    "FreezeOption",
    "Interpretation",
    "LayerGroup",
    "LoadedModel",
    "OptionSpec",
    "Predictions",
    "Progress",
    "Run",
    "RunEnded",
    "RunStarted",
    "SavedRun",
    "Savings",
    "SavingsUpdated",
    "TestScore",
    "TrainConfig",
    "TrainingFailed",
    "audit",
    "compare",
    "current_run",
    "datasets",
    "fasttrain",
    "list_freeze_options",
    "list_layer_groups",
    "list_options",
    "load",
    "load_run",
    "parse_stop_rule",
    "runs",
]
