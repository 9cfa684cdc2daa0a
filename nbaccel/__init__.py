"""nbaccel: fast, visible fine-tuning of timm image models from a notebook.

    import nbaccel
    run = nbaccel.fasttrain(nbaccel.datasets.digits(), backbone="resnet18", pretrained=False)
    run.wait().history

Importing nbaccel touches no GPU, downloads nothing and builds no widget.
"""

from nbaccel import datasets as datasets
from nbaccel.core import (
    Comparison,
    EpochEnded,
    Event,
    FreezeOption,
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
    TrainConfig,
    TrainingFailed,
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


def load_ipython_extension(ipython):  # noqa: ANN001, ANN201 - IPython's hook
    """`%load_ext nbaccel`: registers `%fasttrain` (the notebook libraries load only now)."""
    from nbaccel.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython):  # noqa: ANN001, ANN201 - IPython's hook
    """`%unload_ext nbaccel`: stops a live run and removes `%fasttrain`."""
    from nbaccel.magics import unload_ipython_extension as unload

    unload(ipython)


__all__ = [
    "Comparison",
    "EpochEnded",
    "Event",
    "FreezeOption",
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
    "TrainConfig",
    "TrainingFailed",
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
