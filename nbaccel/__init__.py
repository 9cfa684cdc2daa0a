"""nbaccel: fast, visible fine-tuning of timm image models from a notebook.

    import nbaccel
    run = nbaccel.fasttrain(nbaccel.datasets.digits(), backbone="resnet18", pretrained=False)
    run.wait().history

Importing nbaccel touches no GPU, downloads nothing and builds no widget.
"""

from nbaccel import datasets as datasets
from nbaccel.core import (
    EpochEnded,
    Event,
    FreezeOption,
    LayerGroup,
    Progress,
    Run,
    RunEnded,
    RunStarted,
    TrainConfig,
    TrainingFailed,
    fasttrain,
    list_freeze_options,
    list_layer_groups,
    parse_stop_rule,
)

__version__ = "0.1.0"

__all__ = [
    "EpochEnded",
    "Event",
    "FreezeOption",
    "LayerGroup",
    "Progress",
    "Run",
    "RunEnded",
    "RunStarted",
    "TrainConfig",
    "TrainingFailed",
    "datasets",
    "fasttrain",
    "list_freeze_options",
    "list_layer_groups",
    "parse_stop_rule",
]
