"""fasttrain(): the one-call entry point, and the two steps it is made of (prepare, start)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Optional

from nbaccel.core.config import (
    TrainConfig,
    check_option_names,
    options_doc,
    signature_with_options,
)
from nbaccel.core.prepare import prepare_plan
from nbaccel.core.resume import open_resume
from nbaccel.core.run import Run


def fasttrain(data: Any, *, background: bool = True, **options: Any) -> Run:
    """Fine-tunes a timm backbone on `data` in a background thread.

    Every choice is checked here, before any thread starts: bad input raises ValueError.

    Args:
        data: a folder (class subfolders, or split folders train/, val/, test/ holding
            class subfolders), a .csv file or a DataFrame of image paths and labels, an
            (images, labels) pair of arrays or tensors, or a torch Dataset yielding
            (image, label). A test split is scored once at the end (run.test).
        {options}
        background: False trains on this thread and returns the ended run (scripts;
            Ctrl-C stops it at the next step).

    Returns:
        The Run, already started.
    """
    check_option_names(options)
    config = TrainConfig(data=data, **options)
    return start_run(config, background=background, given=set(options))


fasttrain.__signature__ = signature_with_options(fasttrain)  # type: ignore[attr-defined]
fasttrain.__doc__ = (fasttrain.__doc__ or "").replace(
    "        {options}", options_doc(indent=" " * 8)
)


def prepare_run(config: TrainConfig, given: Optional[Collection[str]] = None) -> Run:
    """A Run for `config`, checked and prepared but not started: a panel can subscribe to
    it and be drawn before training competes with the notebook for the CPU. `given`: the
    options the caller set, which a resumed run takes over the saved run's."""
    config, resumed = open_resume(config, given)
    return Run(config, prepare_plan(config, resumed))


def start_run(
    config: TrainConfig,
    background: bool = True,
    given: Optional[Collection[str]] = None,
) -> Run:
    """Prepares and starts a Run for `config` (what fasttrain() and the panel call).
    background=False trains on this thread and returns the ended run (Ctrl-C stops it)."""
    run = prepare_run(config, given).start(background)
    return run if background else run.wait()
