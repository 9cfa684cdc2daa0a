"""Resuming a saved run: which checkpoint, which options may change, and whether the data
is the one it trained on. All of it is checked on the caller's thread, before training.

fasttrain(data, resume=True)              # the latest run of this data and backbone
fasttrain(data, resume=path, epochs=30)   # a run from nbaccel.runs(), trained longer
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np

from nbaccel.core.checkpoint import (
    META,
    PREVIOUS,
    Checkpoint,
    default_checkpoint_dir,
    item_from_dict,
    read_checkpoint,
)
from nbaccel.core.config import OptionSpec, TrainConfig, _same, list_options
from nbaccel.core.events import Calibration, Measured, RunStarted

# Options a resumed run may change: its length and stopping, where and how fast it runs.
# Everything else must be the saved run's (left out, or given the same).
# Options newer than some checkpoints, and what a run saved before them did: a resumed or
# read-back run goes on as it trained (balance="auto" would weight a loss that was not).
BEFORE_IT_EXISTED = {"balance": "off"}


def saved_option(saved: dict, spec: OptionSpec) -> Any:
    """The option as a checkpoint's config has it; one newer than the checkpoint is what
    the run had before the option existed (BEFORE_IT_EXISTED), else its default."""
    return saved.get(spec.name, BEFORE_IT_EXISTED.get(spec.name, spec.default))


MAY_CHANGE = (
    "epochs",
    "stop",
    "device",
    "cache",
    "compile",
    "channels_last",
    "fused",
    "workers",
    "baseline",
    "log_dir",
    "checkpoint",
    "checkpoint_dir",
    "resume",
)
# Options whose "auto" the run settled: resumed at the settled value (RunStarted's field).
SETTLED = {
    "precision": "precision",
    "batch_size": "batch_size",
    "freeze": "freeze_depth",
    "augment": "augment",
}


@dataclasses.dataclass(frozen=True, eq=False)
class Resumed:
    """A checked checkpoint to go on from, with its tensors loaded."""

    checkpoint: Checkpoint
    tensors: dict  # the training state (training_state.TrainingState.capture)
    best: Optional[dict]  # the best epoch's weights
    items: tuple  # the events (and Measured records) so far, to publish again

    @property
    def meta(self) -> dict:
        return self.checkpoint.meta

    def load_weights(self, model: Any) -> None:
        """The checkpoint's weights into a freshly created model.

        Raises:
            ValueError: they do not fit it (another model under the same name).
        """
        try:
            model.load_state_dict(self.tensors["model"])
        except RuntimeError as error:
            raise ValueError(
                f"cannot resume {str(self.checkpoint.directory)!r}: its weights do not "
                f"fit this {self.meta['plan']['config']['backbone']} ({error})"
            ) from None

    @property
    def history(self) -> list[dict]:
        return [dict(row) for row in self.meta["history"]]

    @property
    def calibration(self) -> Optional[Calibration]:
        measured = [item for item in self.items if isinstance(item, Measured)]
        return measured[-1].calibration if measured else None


def describe_data(data: Any) -> str:
    """The data in a few words, for nbaccel.runs() and for resume=True's match."""
    if isinstance(data, (str, os.PathLike)):
        return str(Path(data).expanduser().resolve())
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return f"arrays: {len(data[1])} images"
    return f"{type(data).__name__}: {len(data) if hasattr(data, '__len__') else '?'} images"


def plain_config(config: TrainConfig) -> dict:
    """The options as JSON values: a data object given as `val` becomes its description."""
    plain = {}
    for spec in list_options():
        value = getattr(config, spec.name)
        if isinstance(value, os.PathLike):
            value = str(value)
        elif not isinstance(value, (str, int, float, bool, type(None))):
            value = describe_data(value)
        plain[spec.name] = value
    return dict(plain, data=describe_data(config.data))


def data_fingerprint(data: Any, train: Any, val: Any) -> dict:
    """What the data is: its description, classes, split sizes and a hash of the labels in
    order (the same split of the same data has the same hash)."""
    labels = np.concatenate([train.labels, val.labels]).astype(np.int64)
    return dict(
        description=describe_data(data),
        class_names=list(train.class_names),
        train_images=len(train),
        val_images=len(val),
        labels_sha256=hashlib.sha256(labels.tobytes()).hexdigest(),
    )


def open_resume(
    config: TrainConfig, given: Optional[Collection[str]] = None
) -> tuple[TrainConfig, Optional[Resumed]]:
    """The config to train with and the checkpoint to go on from (None: a new run).
    `given`: the options the caller set (fasttrain's keywords, the magic's flags); an
    option not given takes the saved run's value. Without it (a config built by hand),
    an option at its default counts as not given.

    Raises:
        ValueError: no such run, no intact checkpoint, an option that differs from the
            saved run's, or a run with nothing left to train.
    """
    if config.resume is None or config.resume is False:
        return config, None
    if config.resume is True:
        path = find_latest_run(config)
    else:
        path = Path(config.resume).expanduser()
    checkpoint = read_checkpoint(path)
    items = [item_from_dict(d) for d in checkpoint.meta["items"]]
    config = _merged_config(config, checkpoint, _started(items), given)
    items = [  # the budget and rule the run now goes on with
        dataclasses.replace(i, epochs=config.epochs, stop=config.stop_rule.text)
        if isinstance(i, RunStarted)
        else i
        for i in items
    ]
    history = checkpoint.meta["history"]
    if len(history) >= config.epochs:
        raise ValueError(
            f"the run in {str(checkpoint.directory)!r} has trained {len(history)} epochs, "
            f"its whole budget of {config.epochs}: pass a larger epochs= to train longer"
        )
    fired = config.stop_rule.check(history, checkpoint.meta["elapsed_s"])
    if fired:
        raise ValueError(
            f"the run in {str(checkpoint.directory)!r} already meets its stopping rule "
            f"{config.stop!r} ({fired}): pass another stop= to train longer"
        )
    best = checkpoint.load_best() if "best" in checkpoint.meta["files"] else None
    resumed = Resumed(checkpoint, checkpoint.load_state(), best, tuple(items))
    return config, resumed


def _started(items: list) -> RunStarted:
    return next(item for item in items if isinstance(item, RunStarted))


def _merged_config(
    config: TrainConfig,
    checkpoint: Checkpoint,
    started: RunStarted,
    names_given: Optional[Collection[str]],
) -> TrainConfig:
    """`config` with the saved run's choices: an option left out takes the saved value;
    one that must not change (not in MAY_CHANGE), given differently, is refused."""
    saved = checkpoint.meta["plan"]["config"]
    updates, differences = {}, []
    for spec in list_options():
        if spec.name in ("checkpoint", "checkpoint_dir", "resume"):
            continue
        given, before = getattr(config, spec.name), saved_option(saved, spec)
        left_out = (
            spec.name not in names_given
            if names_given is not None
            else _same(given, spec.default)
        )
        if spec.name in MAY_CHANGE:  # left out: as the run had it
            if left_out:
                updates[spec.name] = before
            continue
        settled = (
            getattr(started, SETTLED[spec.name]) if spec.name in SETTLED else before
        )
        if spec.name == "val" and isinstance(before, str):  # a data object
            if left_out:
                differences.append(f"val was a data object ({before}): pass it again")
            continue
        given_text = str(given) if isinstance(given, os.PathLike) else given
        if left_out or given_text in (before, settled):
            updates[spec.name] = settled
        else:
            differences.append(f"{spec.name} was {before!r}, now {given!r}")
    if differences:
        raise ValueError(
            f"cannot resume {str(checkpoint.directory)!r} with other choices: "
            f"{'; '.join(differences)}. Only {', '.join(MAY_CHANGE[:-3])} may change; "
            "leave the others out to keep the run's, or start a new run"
        )
    return dataclasses.replace(config, **updates)


def check_same_data(resumed: Resumed, fingerprint: dict) -> None:
    """Refuses data other than the saved run's, naming the difference."""
    saved = resumed.meta["plan"]["data"]
    where = f"cannot resume {str(resumed.checkpoint.directory)!r}"
    if saved["class_names"] != fingerprint["class_names"]:
        before, now = saved["class_names"], fingerprint["class_names"]
        missing = [c for c in before if c not in now]
        extra = [c for c in now if c not in before]
        detail = f"missing {missing}" if missing else ""
        detail += ("; " if detail and extra else "") + (f"new {extra}" if extra else "")
        raise ValueError(
            f"{where}: its classes were {before}, this data has {now} "
            f"({detail or 'another order'}); a checkpoint fits only its own class list"
        )
    for key in ("train_images", "val_images", "labels_sha256"):
        if saved[key] != fingerprint[key]:
            raise ValueError(
                f"{where}: this is not the data it trained on ({key} was {saved[key]}, "
                f"now {fingerprint[key]}); pass the same data, val and seed"
            )


# --- the saved runs ----------------------------------------------------------------------


class SavedRun(NamedTuple):
    """One run directory, as nbaccel.runs() lists it."""

    path: str
    date: str
    data: str
    backbone: str
    epochs: int
    best_val_acc: Optional[float]
    status: str  # "finished", "stopped", "failed", or "interrupted" (the kernel died)


def runs(checkpoint_dir: Optional[os.PathLike | str] = None) -> list[SavedRun]:
    """The saved runs under `checkpoint_dir` (default: where runs are saved), newest
    first. `fasttrain(data, resume=run.path)` goes on with one, `nbaccel.load_run(
    run.path)` looks at it."""
    root = (
        Path(checkpoint_dir).expanduser()
        if checkpoint_dir
        else default_checkpoint_dir()
    )
    found = []
    for directory in root.glob("*/"):
        meta = _quick_meta(directory)
        if meta is None:
            continue
        history = meta["history"]
        ended = meta.get("ended")
        found.append(
            SavedRun(
                path=str(directory),
                date=meta["saved"],
                data=meta["plan"]["data"]["description"],
                backbone=meta["plan"]["config"]["backbone"],
                epochs=len(history),
                best_val_acc=max((row["val_acc"] for row in history), default=None),
                status=ended["status"] if ended else "interrupted",
            )
        )
    return sorted(found, key=lambda run: run.date, reverse=True)


def _quick_meta(directory: Path) -> Optional[dict]:
    """A run directory's metadata, read without checking its tensor files."""
    for name in (META, PREVIOUS):
        try:
            return json.loads((directory / name).read_text())
        except (OSError, ValueError):
            continue
    return None


def find_latest_run(config: TrainConfig) -> Path:
    """resume=True: the newest run of the same backbone on the same data."""
    root = Path(config.checkpoint_dir or default_checkpoint_dir()).expanduser()
    description = describe_data(config.data)
    for run in runs(root):
        if run.backbone == config.backbone and run.data == description:
            return Path(run.path)
    raise ValueError(
        f"resume=True: no saved {config.backbone} run on {description} in {str(root)!r}; "
        "nbaccel.runs() lists the saved runs (pass one's path, or the backbone it used)"
    )
