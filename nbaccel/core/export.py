"""Using a trained model: predictions, a saved checkpoint, and ONNX / TorchScript exports.

labels, probabilities = run.predict(["a.png", "b.png"])
run.save("digits.pth")                 # nbaccel.load("digits.pth") gives it back
run.export("digits.onnx")              # or "digits.pt" (TorchScript), checked on export
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple, Union

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import create_transform
from torch import nn

from nbaccel.core.data import IMAGE_EXTENSIONS, to_pil
from nbaccel.core.steps import eval_step

PREDICT_BATCH = 64
EXPORTS = (".onnx", ".pt", ".pt2")


class Predictions(NamedTuple):
    """One label and one row of class probabilities per image, in input order."""

    labels: list[str]
    probabilities: np.ndarray  # N x classes, rows sum to 1


class LoadedModel(NamedTuple):
    """What nbaccel.load() returns: a model in eval mode and what it needs to predict."""

    model: nn.Module
    class_names: tuple[str, ...]
    data_config: dict


def predict(
    model: nn.Module,
    images: Any,
    class_names: tuple[str, ...],
    data_config: dict,
    precision: str = "fp32",
) -> Predictions:
    """Classifies `images` with the eval transform of `data_config`.

    Args:
        images: a path (an image, or a folder of images), a list of paths or PIL images,
            an N x H x W x C uint8 array, an N x C x H x W tensor in [0, 1], or one image.
    """
    pictures = _as_pictures(images)
    transform = create_transform(**data_config, is_training=False)
    device = next(model.parameters()).device
    model.eval()
    chunks = []
    for start in range(0, len(pictures), PREDICT_BATCH):
        batch = torch.stack(
            [transform(p) for p in pictures[start : start + PREDICT_BATCH]]
        )
        logits = eval_step(model, batch, device, precision)
        chunks.append(logits.float().softmax(dim=1).cpu())
    probabilities = torch.cat(chunks).numpy()
    labels = [class_names[i] for i in probabilities.argmax(axis=1)]
    return Predictions(labels, probabilities)


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
    with (
        warnings.catch_warnings()
    ):  # torch 2.9+ marks jit as deprecated; it still works
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example)
        traced.save(str(path))
        loaded = torch.jit.load(str(path))
    with torch.no_grad():
        return loaded(example).numpy()


def _as_pictures(images: Any) -> list[Image.Image]:
    """A list of RGB PIL images from any of predict()'s inputs."""
    if isinstance(images, (str, os.PathLike)):
        path = Path(images).expanduser()
        return (
            [to_pil(p) for p in _image_files(path)] if path.is_dir() else [to_pil(path)]
        )
    if isinstance(images, (np.ndarray, torch.Tensor)):
        one = images.ndim == 2 or (
            images.ndim == 3
            and (images.shape[-1] in (1, 3, 4) or images.shape[0] in (1, 3, 4))
        )
        return [to_pil(images)] if one else [to_pil(image) for image in images]
    if isinstance(images, (list, tuple)):
        return [to_pil(image) for image in images]
    return [to_pil(images)]


def _image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(
            f"no images in {str(folder)!r}: predict() takes image files, a folder of "
            "them, arrays or tensors"
        )
    return files


class UsingTheResult:
    """Run's predict(), save() and export(): each on the ended run's best model."""

    config: Any
    class_names: tuple[str, ...]
    data_config: dict
    precision: str

    def _ended_model(self, what: str) -> nn.Module:
        raise NotImplementedError

    def predict(self, images: Any) -> Predictions:
        """Labels and class probabilities for images: paths (a file or a folder), PIL
        images, an N x H x W x C uint8 array or an N x C x H x W tensor in [0, 1].

        Raises:
            RuntimeError: the run is still training, or failed (it has no model).
        """
        return predict(
            self._ended_model("predict"),
            images,
            self.class_names,
            self.data_config,
            self.precision,
        )

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Writes the best weights with the class names and data config; `nbaccel.load(path)`
        reads it back, and `fasttrain(pretrained=path)` fine-tunes from it."""
        model = self._ended_model("save")
        return save(
            model, path, self.config.backbone, self.class_names, self.data_config
        )

    def export(self, path: Union[str, os.PathLike]) -> Path:
        """Exports the best model to ONNX ("x.onnx"), TorchScript ("x.pt") or torch.export
        ("x.pt2"), then loads the export back and checks its outputs against the model's."""
        return export(self._ended_model("export"), path, self.data_config)
