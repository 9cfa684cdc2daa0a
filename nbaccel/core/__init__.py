"""The training engine. Imports torch and timm only: no IPython, ipywidgets or plotly."""

from nbaccel.core.auditing import Audit as Audit
from nbaccel.core.auditing import audit as audit
from nbaccel.core.compare import Comparison as Comparison
from nbaccel.core.compare import compare as compare
from nbaccel.core.compare import prepare_comparison as prepare_comparison
from nbaccel.core.config import OptionSpec as OptionSpec
from nbaccel.core.config import TrainConfig as TrainConfig
from nbaccel.core.config import list_options as list_options
from nbaccel.core.events import EpochEnded as EpochEnded
from nbaccel.core.events import Event as Event
from nbaccel.core.events import Progress as Progress
from nbaccel.core.events import RunEnded as RunEnded
from nbaccel.core.events import RunStarted as RunStarted
from nbaccel.core.events import Savings as Savings
from nbaccel.core.events import SavingsUpdated as SavingsUpdated
from nbaccel.core.events import TestScore as TestScore
from nbaccel.core.interpret import Interpretation as Interpretation
from nbaccel.core.load_run import load_run as load_run
from nbaccel.core.model import FreezeOption as FreezeOption
from nbaccel.core.model import LayerGroup as LayerGroup
from nbaccel.core.model import list_freeze_options as list_freeze_options
from nbaccel.core.model import list_layer_groups as list_layer_groups
from nbaccel.core.predict import Predictions as Predictions
from nbaccel.core.preview import BatchPreview as BatchPreview
from nbaccel.core.quantize import ExportReport as ExportReport
from nbaccel.core.resume import SavedRun as SavedRun
from nbaccel.core.resume import runs as runs
from nbaccel.core.run import Run as Run
from nbaccel.core.run import TrainingFailed as TrainingFailed
from nbaccel.core.run import current_run as current_run
from nbaccel.core.saving import LoadedModel as LoadedModel
from nbaccel.core.saving import load as load
from nbaccel.core.start import fasttrain as fasttrain
from nbaccel.core.start import prepare_run as prepare_run
from nbaccel.core.start import start_run as start_run
from nbaccel.core.stopping import parse_stop_rule as parse_stop_rule

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
    "OptionSpec",
    "LoadedModel",
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
    "fasttrain",
    "list_freeze_options",
    "list_layer_groups",
    "list_options",
    "load",
    "load_run",
    "parse_stop_rule",
    "prepare_comparison",
    "prepare_run",
    "runs",
    "start_run",
]
