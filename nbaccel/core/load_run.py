"""nbaccel.load_run(path): a saved run, ended, without training: its history, events,
savings, panel, predictions, save and export, from the checkpoint's best weights.

run = nbaccel.load_run(nbaccel.runs()[0].path)
run.history, run.predict(images), run.export("model.onnx")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import timm

from nbaccel.core.checkpoint import item_from_dict, read_checkpoint
from nbaccel.core.config import TrainConfig, list_options
from nbaccel.core.events import RunEnded, TestScore
from nbaccel.core.history_log import HISTORY_CSV
from nbaccel.core.resume import saved_option
from nbaccel.core.run import Run


def load_run(path: Union[str, os.PathLike]) -> Run:
    """The run saved in `path` (a directory from nbaccel.runs()), ended: status "finished",
    "stopped" or "failed" as it ended, or "stopped" with reason "interrupted" when its
    process died (fasttrain(data, resume=path) goes on with it). Its model holds the best
    epoch's weights, on the CPU. Nothing is executed from the files (weights_only).

    Raises:
        ValueError: no intact checkpoint there, or one holding more than tensors.
    """
    checkpoint = read_checkpoint(path)
    meta = checkpoint.meta
    plan = meta["plan"]
    class_names = tuple(plan["data"]["class_names"])
    saved = plan["config"]
    options = {spec.name: saved_option(saved, spec) for spec in list_options()}
    config = TrainConfig(data=plan["config"]["data"], **options)
    model = timm.create_model(
        config.backbone, pretrained=False, num_classes=len(class_names)
    )
    weights = "best" if "best" in meta["files"] else "state"
    loaded = checkpoint.load_best() if weights == "best" else checkpoint.load_state()
    model.load_state_dict(loaded if weights == "best" else loaded["model"])
    items = [item_from_dict(d) for d in meta["items"]]
    ended = meta.get("ended")
    if ended and ended.get("test"):  # the test split's score, a nested record
        ended = dict(ended, test=TestScore(**ended["test"]))
    items.append(
        RunEnded(**ended)
        if ended
        else RunEnded("stopped", "interrupted", meta["best_epoch"], meta["elapsed_s"])
    )
    data_config = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in plan["data_config"].items()
    }
    device = next((i.device for i in items if hasattr(i, "device")), "cpu")
    folder = Path(config.log_dir or checkpoint.directory).expanduser().absolute()
    log_dir = folder if (folder / HISTORY_CSV).is_file() else None
    return Run._saved(
        config, model.eval(), class_names, data_config, device, items, log_dir
    )
