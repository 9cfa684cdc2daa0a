"""Shared fixtures: the bundled digits written once per session, and a local weights file made
by pretraining on digits 0-4 (standing in for hub weights, which cannot be downloaded here)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

import nbaccel

# A tiny timm model: CPU seconds per run. fp32: on a CPU with bf16, precision="auto" times
# bf16 against fp32 on every run, and a timing can flip between two runs that a test
# compares number for number.
SMALL = dict(backbone="test_resnet", image_size=32, precision="fp32")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The browser test runs last, after the notebooks: their quickstart leaves
    digits0-4.pth, which the browser's copy of the quickstart then reuses (its source
    model cell trains only where the file is missing), so the test command trains that
    source model once."""
    items.sort(key=lambda item: item.path.name == "test_browser.py")


@pytest.fixture(scope="session", autouse=True)
def checkpoint_home(tmp_path_factory: pytest.TempPathFactory):
    """Runs save their checkpoints (on by default, #14) under a temporary
    $NBACCEL_CACHE, never in the user's ~/.cache."""
    before = os.environ.get("NBACCEL_CACHE")
    os.environ["NBACCEL_CACHE"] = str(tmp_path_factory.mktemp("nbaccel-home"))
    yield Path(os.environ["NBACCEL_CACHE"])
    if before is None:
        del os.environ["NBACCEL_CACHE"]
    else:
        os.environ["NBACCEL_CACHE"] = before


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
def trained(digits_high: Path) -> nbaccel.Run:
    """test_resnet trained 3 epochs on digits 5-9, ended: the run that the tests of a
    result (predict, save, export, interpret) read and never change."""
    return nbaccel.fasttrain(
        digits_high, pretrained=False, epochs=3, stop="none", background=False, **SMALL
    )


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


@pytest.fixture
def broken_folder(tmp_path: Path, digits_high: Path) -> Path:
    """40 real digits per split and one file that is not an image: a run on it fails."""
    for split in ("train", "val"):
        for label in ("5", "6"):
            target = tmp_path / split / label
            target.mkdir(parents=True)
            for source in sorted((digits_high / split / label).iterdir())[:20]:
                (target / source.name).write_bytes(source.read_bytes())
    (tmp_path / "train" / "6" / "broken.png").write_bytes(b"not a png at all")
    return tmp_path


@pytest.fixture
def shell(monkeypatch: pytest.MonkeyPatch):
    """IPython's test shell, displaying objects as a kernel's shell does.

    IPython 7 (Colab's 7.34) turns `_ipython_display_` and the formatters registered with
    `for_type` off in its terminal shell, which is the test shell; ipykernel's shell keeps
    them on, so a notebook's `run` and `panel` show their panels there (issue #12).
    """
    from IPython.testing import globalipapp

    shell = globalipapp.get_ipython()  # starts the shell once, then returns it
    formatter = shell.display_formatter.ipython_display_formatter
    monkeypatch.setattr(formatter, "enabled", True)
    return shell


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)
