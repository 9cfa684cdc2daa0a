"""Shared fixtures: the bundled digits written once per session, and a local weights file made
by pretraining on digits 0-4 (standing in for hub weights, which cannot be downloaded here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import nbaccel

SMALL = dict(
    backbone="test_resnet", image_size=32
)  # a tiny timm model: CPU seconds per run


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nbaccel-cache")


@pytest.fixture(scope="session")
def digits_folder(cache: Path) -> Path:
    return nbaccel.datasets.digits(root=cache)


@pytest.fixture(scope="session")
def digits_high(cache: Path) -> Path:
    """Digits 5-9: the transfer target."""
    return nbaccel.datasets.digits(range(5, 10), root=cache)


@pytest.fixture(scope="session")
def source_weights(cache: Path) -> Path:
    """test_resnet weights pretrained on digits 0-4, saved as a plain state dict."""
    low = nbaccel.datasets.digits(range(5), root=cache)
    run = nbaccel.fasttrain(
        low, pretrained=False, epochs=5, stop="none", background=False, **SMALL
    )
    assert run.history[-1]["val_acc"] > 0.9, run.history
    path = cache / "test_resnet_digits0-4.pth"
    torch.save(run.model.state_dict(), path)
    return path
