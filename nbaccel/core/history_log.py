"""The run's history on disk (issue #13): `history.csv`, rewritten atomically after each
epoch, and TensorBoard scalars when `tensorboard` is installed. A `HistoryLog` subscribes
to the run's events, so it writes on the publisher thread, never the training thread.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

from nbaccel.core.checkpoint import write_atomic
from nbaccel.core.events import EpochEnded, Progress, RunEnded

logger = logging.getLogger(__name__)

HISTORY_CSV = "history.csv"
STEP_TAG = "steps/train_loss"  # the epoch's running training loss, by global step


def plan_log_dir(
    log_dir: Optional[str], run_directory: Optional[Path]
) -> Optional[Path]:
    """Where a run's history goes: `log_dir`, else its run directory (None: nowhere, with
    checkpoint=False and no log_dir). A chosen folder is created and probed here.

    Raises:
        ValueError: the folder cannot be written, naming it and the fix.
    """
    if log_dir is None:
        return run_directory  # created with the first checkpoint, probed with it
    folder = Path(log_dir).expanduser().absolute()
    probe = folder / f".nbaccel-probe-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"x")
    except OSError as error:
        raise ValueError(
            f"cannot write the run's history to {str(folder)!r} "
            f"({error.strerror or error}): choose another log_dir="
        ) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return folder


def tensorboard_available() -> bool:
    """torch's SummaryWriter needs the `tensorboard` package (never a dependency)."""
    return importlib.util.find_spec("tensorboard") is not None


def after_earlier_files(directory: Path) -> None:
    """Waits (a second at most, and only then) until this second is later than those of
    the event files already in `directory`. TensorBoard reads a folder's event files in
    the order of their names, which begin with the second each was opened: a new file
    opened within the same second as an earlier session's may be read before it, and the
    earlier session's epochs would then come last, undoing the new file's restart."""
    names = os.listdir(directory) if directory.is_dir() else []
    stamps = [
        int(name.split(".")[3])
        for name in names
        if name.startswith("events.out.tfevents.") and name.split(".")[3].isdigit()
    ]
    deadline = (
        time.monotonic() + 1.1
    )  # a file stamped later still (another clock) waits no longer
    while stamps and int(time.time()) <= max(stamps) and time.monotonic() < deadline:
        time.sleep(0.05)


def history_csv(rows: list[dict]) -> bytes:
    """The rows as CSV: one column per key in the order first seen (test_loss and
    test_acc last, empty but in the best epoch's row), floats written exactly."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


class HistoryLog:
    """Writes a run's history into `directory` as its events arrive: `history.csv` after
    each epoch and at the end (the publisher's `history()`, so the file is run.history),
    and, with tensorboard, every number of each epoch's row at step = epoch, the running
    training loss at each Progress (STEP_TAG, step = global step) and the test score.

    Every event of the run passes here once, the replayed ones of a resumed run first:
    the CSV is rewritten whole, so an epoch is never in it twice, and the TensorBoard file
    starts with a restart at step 0 (purge_step), so TensorBoard hides what an earlier
    session wrote there and shows each epoch once. A failed write is logged once; the
    run goes on. The writer is closed at RunEnded, whatever the status."""

    def __init__(self, directory: Path, history: Callable[[], list[dict]]) -> None:
        self.directory = directory
        self._history = history
        self._written: Optional[list[dict]] = None  # the rows in the file now
        self._writer: Any = None  # a SummaryWriter, opened at the first event
        self._closed = False
        self._warned: set[str] = set()

    def __call__(self, event: Any) -> None:
        if self._closed:
            return
        if isinstance(event, Progress):
            self._scalars(self._progress, event)
        elif isinstance(event, EpochEnded):
            self._write_csv()
            self._scalars(self._epoch, event)
        elif isinstance(event, RunEnded):
            self.close(event)

    def close(self, ended: Optional[RunEnded] = None) -> None:
        """Writes the last rows (with the test score) and closes the TensorBoard writer:
        its file flushed, its thread joined. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._write_csv()
        if ended is not None and ended.test is not None and ended.test.error is None:
            self._scalars(self._test, ended.test)
        if self._writer is not None:
            writer, self._writer = self._writer, None
            self._guarded("tensorboard", writer.close)

    # --- CSV --------------------------------------------------------------------------

    def _write_csv(self) -> None:
        rows = self._history()
        if not rows or rows == self._written:  # replayed epochs: written once
            return
        text = history_csv(rows)

        def write() -> None:
            self.directory.mkdir(parents=True, exist_ok=True)
            if self._written is None:  # a write killed with its kernel left these
                for stale in self.directory.glob(f".{HISTORY_CSV}.*.tmp"):
                    stale.unlink()
            write_atomic(self.directory / HISTORY_CSV, lambda file: file.write(text))

        if self._guarded("csv", write):
            self._written = rows

    # --- TensorBoard ------------------------------------------------------------------

    def _scalars(self, add: Callable[[Any, Any], None], event: Any) -> None:
        writer = self._open_writer()
        if writer is not None:
            self._guarded("tensorboard", lambda: add(writer, event))

    def _open_writer(self) -> Any:
        if self._writer is None and "tensorboard" not in self._warned:
            if not tensorboard_available():
                self._warned.add("tensorboard")  # nothing to say: it is optional
                return None

            def open_writer() -> None:
                from torch.utils.tensorboard import SummaryWriter

                after_earlier_files(self.directory)
                self._writer = SummaryWriter(str(self.directory), purge_step=0)

            self._guarded("tensorboard", open_writer)
        return self._writer

    @staticmethod
    def _progress(writer: Any, event: Progress) -> None:
        if event.step == 0 or event.note is not None:  # no step yet, or a repeat
            return
        step = (event.epoch - 1) * event.steps_per_epoch + event.step
        writer.add_scalar(STEP_TAG, event.train_loss, step)

    @staticmethod
    def _epoch(writer: Any, event: EpochEnded) -> None:
        for name, value in event.as_row().items():
            if name != "epoch":
                writer.add_scalar(name, value, event.epoch)
        writer.flush()  # a lost kernel keeps every finished epoch

    @staticmethod
    def _test(writer: Any, test: Any) -> None:
        writer.add_scalar("test_loss", test.test_loss, test.epoch)
        writer.add_scalar("test_acc", test.test_acc, test.epoch)

    def _guarded(self, what: str, action: Callable[[], None]) -> bool:
        """Runs `action`; a failure is logged (once per kind), never raised: the history
        on disk must not stop the run or its other subscribers."""
        try:
            action()
            return True
        except Exception as error:  # noqa: BLE001
            if what not in self._warned:
                self._warned.add(what)
                logger.warning(
                    "nbaccel could not write the run's history (%s) to %s: %s",
                    what,
                    self.directory,
                    error,
                )
            return False
