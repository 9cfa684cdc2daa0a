"""TrainConfig: every choice of a run in one frozen dataclass, each defined once.

Each field carries its default, its help, its choices and its check (`option()`).
fasttrain()'s signature and docs, the %fasttrain flags, the panel's controls and the
README's option table are all read from these fields (`list_options()`), so they cannot
drift apart.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from nbaccel.core.stopping import StopRule, parse_stop_rule

Pretrained = Union[bool, str, "os.PathLike[str]"]
Check = Callable[[str, Any], Optional[str]]  # (name, value) -> what is wrong, or None


def option(
    default: Any,
    help: str,
    check: Check,
    choices: tuple = (),
    parse: Optional[Callable[[str], Any]] = None,
) -> Any:
    """A TrainConfig field: its default, a one-line help, its check, the choices a picker
    offers (empty: free text) and how text (a flag, a text box) becomes a value."""
    metadata = dict(
        help=help, check=check, choices=choices, parse=parse or parse_number
    )
    return field(default=default, metadata=metadata)


def switch(help: str) -> Any:
    """An on/off option: "auto" (the default), True (insist) or False."""
    return option("auto", help, _switch, choices=SWITCHES, parse=parse_switch)


# --- text to values (flags and text boxes) ------------------------------------------------

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_WORDS = {
    "yes": True,
    "true": True,
    "on": True,
    "no": False,
    "false": False,
    "off": False,
}


def parse_number(text: str) -> Any:
    """ "3" -> 3, "3e-4" -> 0.0003, anything else stays text (and the check says why)."""
    text = str(text).strip()
    if not _NUMBER.fullmatch(text):
        return text
    return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)


def parse_switch(text: str) -> Any:
    """ "yes"/"no" (or true/false, on/off) -> True/False; "auto" and numbers as they are."""
    value = str(text).strip()
    return _WORDS.get(value.lower(), parse_number(value))


def parse_pretrained(text: Union[str, bool, os.PathLike]) -> Pretrained:
    """ "yes" -> True (timm's published weights), "no" -> False, anything else is a path."""
    if isinstance(text, bool):
        return text
    value = str(text).strip()
    words = {**_WORDS, "hub": True}
    return words.get(value.lower(), os.path.expanduser(value))


# --- checks --------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _same(value: Any, choice: Any) -> bool:
    """`value` is `choice`, without True == 1 or 1.0 == 1 passing for each other."""
    return type(value) is type(choice) and value == choice


def one_of(*choices: Any) -> Check:
    def check(name: str, value: Any) -> Optional[str]:
        if any(_same(value, c) for c in choices):
            return None
        return f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}"

    return check


def whole(minimum: int, auto: bool = False) -> Check:
    def check(name: str, value: Any) -> Optional[str]:
        if (auto and value == "auto") or (_is_int(value) and value >= minimum):
            return None
        prefix = "'auto' or " if auto else ""
        return f"{name} must be {prefix}a whole number >= {minimum}, got {value!r}"

    return check


def _switch(name: str, value: Any) -> Optional[str]:
    if value == "auto" or value is True or value is False:
        return None
    return f"{name} must be 'auto', True or False, got {value!r}"


def _backbone(name: str, value: Any) -> Optional[str]:
    if isinstance(value, str) and value:
        return None
    return "backbone must be a timm model name, e.g. 'resnet18'"


def _pretrained(name: str, value: Any) -> Optional[str]:
    if isinstance(value, (bool, str, os.PathLike)):
        return None
    return f"pretrained must be True, False or a weights file path, got {value!r}"


def _freeze(name: str, value: Any) -> Optional[str]:
    if value in ("auto", "all") or (_is_int(value) and value >= 0):
        return None
    return f"freeze must be a whole number >= 0, 'all' or 'auto', got {value!r}"


def _lr(name: str, value: Any) -> Optional[str]:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if value == "auto" or (number and value > 0):
        return None
    return f"lr must be 'auto' or a number > 0, got {value!r}"


def _image_size(name: str, value: Any) -> Optional[str]:
    if value is None or (_is_int(value) and value >= 8):
        return None
    return f"image_size must be None or a whole number >= 8 pixels, got {value!r}"


def _devices(name: str, value: Any) -> Optional[str]:
    if value == "all" or (_is_int(value) and value >= 1):
        return None
    return f"devices must be a whole number >= 1 or 'all', got {value!r}"


def _device(name: str, value: Any) -> Optional[str]:
    if isinstance(value, str):
        return None
    return f"device must be a string like 'auto', 'cpu' or 'cuda', got {value!r}"


def _seed(name: str, value: Any) -> Optional[str]:
    return None if _is_int(value) else f"seed must be a whole number, got {value!r}"


def _val(name: str, value: Any) -> Optional[str]:
    fraction = "val must be a fraction between 0 and 1 (e.g. 0.2) or a data object"
    if value is None:
        return f"{fraction}, got None"
    number = isinstance(value, float) or _is_int(value)
    if number and not 0 < value < 1:
        return f"{fraction}, got {value!r}"
    return None


def _stop(name: str, value: Any) -> Optional[str]:
    parse_stop_rule(value)  # a bad rule raises here, naming the bad term
    return None


def _checkpoint(name: str, value: Any) -> Optional[str]:
    if value is True or value is False:
        return None
    return f"checkpoint must be True or False, got {value!r}"


def _checkpoint_dir(name: str, value: Any) -> Optional[str]:
    if value is None or (isinstance(value, (str, os.PathLike)) and str(value)):
        return None
    return f"checkpoint_dir must be None (the default) or a folder path, got {value!r}"


def _log_dir(name: str, value: Any) -> Optional[str]:
    if value is None or (isinstance(value, (str, os.PathLike)) and str(value)):
        return None
    return f"log_dir must be None (the default) or a folder path, got {value!r}"


def _resume(name: str, value: Any) -> Optional[str]:
    if value is None or value is True or isinstance(value, (str, os.PathLike)):
        return None
    return (
        "resume must be None, True (the latest run of the same data and backbone) or "
        f"a run directory from nbaccel.runs(), got {value!r}"
    )


def parse_path(text: Any) -> Any:
    """ "" or "none" -> None; anything else is a path (~ expanded)."""
    value = str(text).strip()
    return None if value.lower() in ("", "none") else os.path.expanduser(value)


def parse_resume(text: Any) -> Any:
    """ "yes"/"latest" -> True (the latest run), "no"/"none" -> None, else a path."""
    value = str(text).strip()
    if value.lower() in ("yes", "true", "on", "latest"):
        return True
    return None if value.lower() in ("no", "false", "off") else parse_path(value)


def _optional_int(text: str) -> Any:
    return (
        None if str(text).strip().lower() in ("", "none", "0") else parse_number(text)
    )


# --- the options ---------------------------------------------------------------------------

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# balance="auto" weights the loss past this largest / smallest class ratio (balance.py;
# docs/design.md has the measurement that chose it)
IMBALANCE_RATIO = 5.0
AUGMENTS = ("auto", "light", "flip", "none")
SWITCHES = ("auto", True, False)


@dataclass(frozen=True, eq=False)
class TrainConfig:
    """What to train and how. Values equal to "auto" are resolved when the run is planned.

    Raises ValueError from the constructor when a value is malformed; choices that depend on
    the data, the model or the hardware are checked when the run is planned.
    """

    data: Any = field(repr=False, metadata=dict(help="the images (see fasttrain)"))
    val: Any = option(
        0.2,
        "fraction held out for validation (stratified, seeded) when the data has no "
        "validation split of its own, or a second data object",
        _val,
    )
    backbone: str = option(
        "resnet18",
        "any timm model name, e.g. resnet18, convnext_tiny, vit_small_patch16_224",
        _backbone,
    )
    pretrained: Pretrained = option(
        True,
        "True (timm's published weights), False (random init) or a weights file path",
        _pretrained,
        parse=parse_pretrained,
    )
    freeze: Union[int, str] = option(
        "auto",
        "k freezes layer groups 0..k-1; 0 trains all; 'all' the head only; 'auto' "
        "freezes a pretrained backbone's early layers (2% of its weights)",
        _freeze,
    )
    head_init: str = option(
        "auto",
        "a new head starts at 'zero' (BiT's fine-tuning init), or with 'timm''s own "
        "init; 'auto' is zero on pretrained weights",
        one_of("auto", "zero", "timm"),
        choices=("auto", "zero", "timm"),
    )
    bn_stats: Union[bool, str] = switch(
        "re-estimate the statistics of the BatchNorm layers that train from 256 training "
        "images before each evaluation: 'auto' (on), True, or False (the running "
        "averages as they trained)",
    )
    ema: Union[bool, str] = switch(
        "score and keep an exponential moving average of the weights (a half-life of "
        "half an epoch; BatchNorm statistics are those bn_stats gives): 'auto' (on), "
        "True, or False (the weights as they trained)",
    )
    precision: str = option(
        "auto",
        "'auto' is bf16 on CUDA >= 8.0, fp16 on older CUDA; on a CPU fp32, or bf16 where "
        "a timed step is faster (pin it for runs that repeat exactly)",
        one_of(*PRECISIONS),
        choices=PRECISIONS,
    )
    stop: str = option(
        "patience:3",
        "stopping rule, e.g. 'patience:3', 'target:val_acc>=0.95 | time:10m', 'none'",
        _stop,
    )
    epochs: int = option(
        20, "the epoch budget: the most epochs the run trains", whole(1)
    )
    batch_size: Union[int, str] = option(
        "auto",
        "images per step, or 'auto' (the largest that fits on CUDA; 32 on a CPU)",
        whole(1, auto=True),
    )
    lr: Union[float, str] = option(
        "auto",
        "learning rate of every layer that trains, or 'auto' (1e-3 when pretrained "
        "layers train, 3e-3 when only new weights do)",
        _lr,
    )
    image_size: Optional[int] = option(
        None,
        "square input size in pixels; None uses the backbone's default",
        _image_size,
        parse=_optional_int,
    )
    device: str = option("auto", "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'", _device)
    devices: Union[int, str] = option(
        1,
        "data-parallel processes, one per GPU (or sharing a CPU's cores), each with "
        "batch_size images per step; 'all': every GPU; 1: the training thread",
        _devices,
    )
    seed: int = option(
        0, "seeds the split, the new head, the shuffle and the augmentation", _seed
    )
    augment: str = option(
        "auto",
        "'light' (random crops of 80-100%), 'flip' (crops and horizontal flips), "
        "'none', or 'auto' (none for the head alone or up to 10 epochs, else light)",
        one_of(*AUGMENTS),
        choices=AUGMENTS,
    )
    balance: str = option(
        "auto",
        "class imbalance: 'weights' weights the training loss by 1/class count, 'off' "
        f"never, 'auto' when the largest class has over {IMBALANCE_RATIO:g}x the "
        "smallest's images",
        one_of("auto", "weights", "off"),
        choices=("auto", "weights", "off"),
    )
    baseline: str = option(
        "measure",
        "'measure' times a few baseline steps first, for run.savings; 'off' skips it",
        one_of("measure", "off"),
        choices=("measure", "off"),
    )
    cache: Union[bool, str] = switch(
        "keep decoded images and a frozen backbone's features in memory: 'auto' when "
        "they fit, True insists, False never",
    )
    compile: Union[bool, str] = switch(
        "torch.compile in the training thread: 'auto' on CUDA when the epoch budget "
        "repays it",
    )
    channels_last: Union[bool, str] = switch(
        "channels-last memory layout: 'auto' for convnets on GPUs with tensor cores",
    )
    fused: Union[bool, str] = switch(
        "AdamW's single-kernel update: 'auto' where torch has one",
    )
    workers: Union[int, str] = option(
        "auto",
        "DataLoader worker processes, or 'auto' (0 where loading in the training "
        "thread is faster)",
        whole(0, auto=True),
    )
    checkpoint: bool = option(
        True,
        "save the run after each epoch (atomically, the last and the best) so that "
        "resume= can continue it after a lost kernel; False turns it off",
        _checkpoint,
        choices=(True, False),
        parse=parse_switch,
    )
    checkpoint_dir: Optional[str] = option(
        None,
        "where run directories go: None is $NBACCEL_CACHE/runs or ~/.cache/nbaccel/runs; "
        "on Colab a Drive folder outlives the session",
        _checkpoint_dir,
        parse=parse_path,
    )
    log_dir: Optional[str] = option(
        None,
        "where the run's history goes, as history.csv and (with tensorboard installed) "
        "TensorBoard scalars: None is the run directory (nothing with checkpoint=False); "
        "a folder path: that folder, this run's",
        _log_dir,
        parse=parse_path,
    )
    resume: Union[bool, str, None] = option(
        None,
        "continue a saved run: its directory (nbaccel.runs()), or True for the latest "
        "run of the same data and backbone; epochs and stop may change",
        _resume,
        parse=parse_resume,
    )

    def __post_init__(self) -> None:
        if isinstance(self.freeze, str) and self.freeze.strip().isdigit():
            object.__setattr__(self, "freeze", int(self.freeze))
        for spec in list_options():
            problem = spec.check(spec.name, getattr(self, spec.name))
            if problem:
                raise ValueError(problem)
        if self.log_dir is not None:  # as a path from here: a resumed run, or one read
            # back from another working directory, writes and reads the same folder
            absolute = os.path.abspath(os.path.expanduser(str(self.log_dir)))
            object.__setattr__(self, "log_dir", absolute)

    @property
    def stop_rule(self) -> StopRule:
        return parse_stop_rule(self.stop)


@dataclass(frozen=True)
class OptionSpec:
    """One option as the front ends read it."""

    name: str
    default: Any
    help: str
    choices: tuple
    check: Check
    parse: Callable[[str], Any]

    @property
    def flag(self) -> str:
        """The %fasttrain flag: batch_size -> --batch-size."""
        return "--" + self.name.replace("_", "-")


def list_options() -> list[OptionSpec]:
    """Every option of TrainConfig but `data`, in the order defined."""
    return [
        OptionSpec(
            f.name,
            f.default,
            f.metadata["help"],
            f.metadata["choices"],
            f.metadata["check"],
            f.metadata["parse"],
        )
        for f in dataclasses.fields(TrainConfig)
        if f.name != "data"
    ]


def check_option_names(names: Any) -> None:
    """Raises TypeError naming an unknown keyword (and the closest option), as Python does."""
    known = {spec.name for spec in list_options()}
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"unknown option {name!r}{hint}")


def signature_with_options(
    function: Callable[..., Any], before: tuple[str, ...] = ("data",)
) -> inspect.Signature:
    """`function`'s signature with `**options` spelled out, one keyword per option, so that
    help(), IDEs and `fasttrain?` show every option with its default."""
    own = inspect.signature(function)
    params = [p for p in own.parameters.values() if p.kind != p.VAR_KEYWORD]
    leading = [p for p in params if p.name in before]
    rest = [p.replace(kind=p.KEYWORD_ONLY) for p in params if p.name not in before]
    options = [
        inspect.Parameter(
            spec.name, inspect.Parameter.KEYWORD_ONLY, default=spec.default
        )
        for spec in list_options()
    ]
    return own.replace(parameters=[*leading, *options, *rest])


def options_doc(indent: str = "        ") -> str:
    """The options as Google-style `Args:` lines, from their one definition."""
    lines = []
    for spec in list_options():
        lines.append(f"{indent}{spec.name}: {spec.help} (default {spec.default!r}).")
    return "\n".join(lines)
