"""Writing a trained model to files: a checkpoint with its class names and data config
(`save`, read back by `load`), and ONNX / TorchScript / torch.export files (`export`), each
loaded back and checked against the model before it is handed over.

run.save("digits.pth")                 # nbaccel.load("digits.pth") gives it back
run.export("digits.onnx")              # or "digits.pt" (TorchScript), "digits.pt2"
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import NamedTuple, Union

import numpy as np
import timm
import torch
from torch import nn

EXPORTS = (".onnx", ".pt", ".pt2")


class LoadedModel(NamedTuple):
    """What nbaccel.load() returns: a model in eval mode and what it needs to predict."""

    model: nn.Module
    class_names: tuple[str, ...]
    data_config: dict


def save(
    model: nn.Module,
    path: Union[str, os.PathLike],
    backbone: str,
    class_names: tuple[str, ...],
    data_config: dict,
) -> Path:
    """Writes the weights with what is needed to use them. The file is also a weights file
    for `fasttrain(pretrained=path)` (timm reads its "state_dict")."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(
        dict(
            state_dict=state,
            backbone=backbone,
            class_names=list(class_names),
            data_config=dict(data_config),
            format="nbaccel-1",
        ),
        path,
    )
    return path


def load(path: Union[str, os.PathLike], device: str = "cpu") -> LoadedModel:
    """A model saved by `run.save()`, in eval mode on `device`.

    Raises:
        ValueError: the file is not an nbaccel checkpoint.
    """
    checkpoint = torch.load(Path(path).expanduser(), map_location="cpu")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != "nbaccel-1":
        raise ValueError(
            f"{str(path)!r} is not a file written by run.save(); a plain weights file "
            "goes to fasttrain(pretrained=path) instead"
        )
    names = tuple(checkpoint["class_names"])
    model = timm.create_model(checkpoint["backbone"], num_classes=len(names))
    model.load_state_dict(checkpoint["state_dict"])
    return LoadedModel(model.to(device).eval(), names, checkpoint["data_config"])


def export(model: nn.Module, path: Union[str, os.PathLike], data_config: dict) -> Path:
    """Exports to ONNX (".onnx"), TorchScript (".pt") or torch.export (".pt2") by extension,
    batch size free except in TorchScript, then
    loads the export back and checks that it gives the model's outputs.

    The exported model takes float32 N x 3 x H x W images normalised with
    data_config["mean"] and ["std"] and returns logits.

    Raises:
        ValueError: an unknown extension, or an export whose outputs differ.
        ImportError: ONNX export without the onnx packages (pip install nbaccel[export]).
    """
    path = Path(path).expanduser()
    if path.suffix not in EXPORTS:
        raise ValueError(
            f"cannot tell the export format from {path.name!r}: end the name with "
            ".onnx (ONNX), .pt (TorchScript) or .pt2 (torch.export)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).cpu().eval()  # exports are device-free
    example = torch.rand(2, *data_config["input_size"])
    with torch.no_grad():
        expected = model(example).numpy()
    if path.suffix == ".onnx":
        actual = _export_onnx(model, example, path)
    elif path.suffix == ".pt2":
        actual = _export_program(model, example, path)
    else:
        actual = _export_torchscript(model, example, path)
    if not np.allclose(actual, expected, rtol=1e-3, atol=1e-4):
        raise ValueError(
            f"the export {path.name!r} gives outputs that differ from the model's by up "
            f"to {np.abs(actual - expected).max():.3g}; it was written but should not be used"
        )
    return path


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> np.ndarray:
    try:
        import onnxruntime  # noqa: F401 - checked first, for one clear message
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"ONNX export needs the onnx packages ({error.name} is missing): "
            "pip install 'nbaccel[export]' (onnx, onnxscript, onnxruntime)"
        ) from error
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=True,
        dynamic_shapes=({0: batch},),
        input_names=["images"],
        output_names=["logits"],
        verbose=False,
    )
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(path), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"images": example.numpy()})[0]


def _export_program(model: nn.Module, example: torch.Tensor, path: Path) -> np.ndarray:
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    with torch.no_grad():
        return torch.export.load(str(path)).module()(example).numpy()


def _export_torchscript(
    model: nn.Module, example: torch.Tensor, path: Path
) -> np.ndarray:
    with warnings.catch_warnings():  # jit is deprecated (torch 2.11 says so with a
        warnings.simplefilter("ignore", FutureWarning)  # DeprecationWarning, later
        warnings.simplefilter("ignore", DeprecationWarning)  # ones a FutureWarning)
        traced = torch.jit.trace(model, example)
        traced.save(str(path))
        loaded = torch.jit.load(str(path))
    with torch.no_grad():
        return loaded(example).numpy()
