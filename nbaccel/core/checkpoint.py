"""Checkpoints: a run's state, written atomically after each epoch into its run directory,
and read back without ever executing code from a file.

A run directory holds `checkpoint.json` (plain metadata: the plan, history, events, RNG
states, and the name, size and SHA-256 of each tensor file), `checkpoint.prev.json` (the
one before it) and the tensor files the two name: `state-eNNNN.pt` (weights, optimizer,
schedule, scaler, weight average, torch RNG states) and `best-eNNNN.pt` (the best weights).
Every file is written to a temporary name, flushed, fsynced and renamed; the JSON's rename
is the commit. Files neither JSON names are deleted, so a run keeps at most two states and
two best-weights files whatever its length.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import pickle
import shutil
import uuid
from pathlib import Path
from typing import IO, Any, Callable, Optional

import torch

from nbaccel.core import events as ev

logger = logging.getLogger(__name__)

FORMAT = "nbaccel-checkpoint-1"
META, PREVIOUS = "checkpoint.json", "checkpoint.prev.json"
Emit = Callable[[Any], None]


def default_checkpoint_dir() -> Path:
    """$NBACCEL_CACHE/runs, else ~/.cache/nbaccel/runs (as nbaccel.datasets' cache)."""
    root = os.environ.get("NBACCEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "nbaccel"
    )
    return Path(root).expanduser() / "runs"


KEEP_RUNS = 10  # run directories the default checkpoint directory keeps


def prune_runs(root: Path, keep: int = KEEP_RUNS) -> list[Path]:
    """Makes room for one more run in the default checkpoint directory: removes all but
    the `keep` - 1 runs whose last checkpoint is newest, so the cache holds at most `keep`
    runs (a resnet18 run's directory is ~430 MB). Only nbaccel's own run directories
    (those with a checkpoint.json) are touched. Returns the ones removed."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if (p / META).is_file()]
    found.sort(key=lambda p: (p / META).stat().st_mtime)
    removed = found[: max(0, len(found) - (keep - 1))]
    for old in removed:
        shutil.rmtree(old, ignore_errors=True)
        logger.info("removed the old run %s (the cache keeps %d runs)", old, keep)
    return removed


def new_run_directory(root: Path, backbone: str, data_tag: str) -> Path:
    """A fresh, unique run directory name under `root` (created at the first write)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    tag = "".join(c if c.isalnum() or c in "-_." else "_" for c in data_tag)[:40]
    return root / f"{stamp}-{backbone}-{tag}-{uuid.uuid4().hex[:4]}"


def check_writable(root: Path, needed_bytes: int) -> None:
    """Refuses, before training, a checkpoint directory that cannot take this run's files.

    Raises:
        ValueError: naming the directory, the problem and the fixes.
    """
    fixes = "choose another checkpoint_dir=, or checkpoint=False to train without them"
    probe = root / f".nbaccel-probe-{uuid.uuid4().hex[:8]}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as file:
            file.write(b"x" * 4096)
            file.flush()
            os.fsync(file.fileno())
    except OSError as error:
        raise ValueError(
            f"cannot write checkpoints to {str(root)!r} ({error.strerror or error}): "
            f"{fixes}"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    free = shutil.disk_usage(root).free
    if free < needed_bytes:
        raise ValueError(
            f"checkpoint_dir {str(root)!r} has {free / 2**20:.0f} MiB free; this run's "
            f"checkpoints need about {needed_bytes / 2**20:.0f} MiB: free some space, "
            f"{fixes}"
        )


def checkpoint_bytes(model: torch.nn.Module, ema: bool) -> int:
    """What a run directory holds at most: two states (weights, AdamW's two moments for
    the trained weights, their average) and two best-weights files, plus a margin."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trained = sum(
        p.numel() * p.element_size() for p in model.parameters() if p.requires_grad
    )
    state = weights + trained * (3 if ema else 2)
    return 2 * state + 2 * weights + 2**20


# --- writing -----------------------------------------------------------------------------


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Writes `path` through a temporary file: flushed, fsynced, then renamed over it.
    On any failure the temporary file is removed and `path` is as it was."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    with contextlib.suppress(
        OSError
    ):  # the rename itself, on filesystems that allow it
        descriptor = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _file_entry(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(2**20), b""):
            digest.update(block)
    return dict(name=path.name, size=path.stat().st_size, sha256=digest.hexdigest())


def _save_tensors(path: Path, tensors: dict) -> dict:
    write_atomic(path, lambda file: torch.save(tensors, file))
    return _file_entry(path)


class Checkpointer:
    """Writes one run's checkpoints into `directory`. `record(put)` wraps the training
    thread's emit so that the events so far go into each checkpoint."""

    def __init__(
        self, directory: Path, plan_meta: dict, items: list, meta: dict
    ) -> None:
        self.directory, self.plan_meta = directory, plan_meta
        self.items = list(items)  # events (and Measured records) as plain dicts
        self.meta = dict(meta)  # the last one committed (empty before the first)
        self.previous: dict = {}  # the one before it

    def record(self, put: Emit) -> Emit:
        def emit(item: Any) -> None:
            self.items.append(item_to_dict(item))
            put(item)

        return emit

    def save(
        self, epoch: int, tensors: dict, best: Optional[dict], plain: dict
    ) -> None:
        """Commits the state after `epoch`: `tensors` (torch.save, weights_only-loadable),
        `best` (the best weights, when this epoch is the new best) and `plain` (history,
        best epoch, elapsed, Python and numpy RNG states: JSON).

        Raises:
            OSError: the write failed; the previous checkpoint is intact.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        files = dict(self.meta.get("files", {}))
        try:
            state = self.directory / f"state-e{epoch:04d}.pt"
            files["state"] = _save_tensors(state, tensors)
            if best is not None:
                path = self.directory / f"best-e{epoch:04d}.pt"
                files["best"] = _save_tensors(path, best)
        except BaseException:
            self._remove_unnamed()  # a file written before the failure takes space
            raise
        meta = dict(
            format=FORMAT,
            created=self.meta.get("created") or _now(),
            saved=_now(),
            epoch=epoch,
            ended=None,
            plan=self.plan_meta,
            files=files,
            items=self.items,
            **plain,
        )
        self._commit(meta)

    def end(self, ended: ev.RunEnded) -> None:
        """Records how the run ended in the last checkpoint (nothing if none was written).
        A write that fails (a full disk) is logged: it must not hide how the run ended."""
        if not self.meta:
            return
        meta = dict(self.meta, ended=dataclasses.asdict(ended), items=self.items)
        meta["ended"]["traceback"] = None
        try:
            self._commit(meta, rotate=False)
        except Exception:  # noqa: BLE001 - the run's end is published regardless
            logger.exception("nbaccel could not record the run's end")

    def _commit(self, meta: dict, rotate: bool = True) -> None:
        """Writes `meta` as the checkpoint; with `rotate`, the last one becomes the
        fallback first (`end` only adds to the last one, so the fallback stays)."""
        text = json.dumps(meta).encode()
        if self.meta and rotate:  # the one before stays as the fallback
            before = json.dumps(self.meta).encode()
            write_atomic(self.directory / PREVIOUS, lambda file: file.write(before))
            self.previous = self.meta
        write_atomic(self.directory / META, lambda file: file.write(text))
        self.meta = meta
        self._remove_unnamed()

    def _remove_unnamed(self) -> None:
        """Deletes the tensor files that neither the last checkpoint nor the one before
        it names, and the temporaries of writes killed mid-way (a lost Colab session)."""
        metas = (self.previous, self.meta)
        kept = {e["name"] for m in metas for e in m.get("files", {}).values()}
        # Its own temporaries only: history.csv's (history_log.py) may be in flight.
        own = ("*.pt", ".*.pt.*.tmp", ".checkpoint*.json.*.tmp")
        for path in [p for pattern in own for p in self.directory.glob(pattern)]:
            if path.name not in kept:
                with contextlib.suppress(OSError):
                    path.unlink()


def open_checkpointer(plan: Any) -> Optional[Checkpointer]:
    """The Checkpointer for a Plan: None with checkpoint=False; a resumed run goes on
    writing into its own directory, after its last checkpoint."""
    if plan.run_directory is None:
        return None
    resumed = plan.resumed
    return Checkpointer(
        plan.run_directory,
        plan.checkpoint_meta,
        [item_to_dict(item) for item in resumed.items] if resumed else [],
        resumed.meta if resumed else {},
    )


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


# --- events as plain dicts ---------------------------------------------------------------

_KINDS = {
    cls.__name__: cls
    for cls in (ev.RunStarted, ev.Progress, ev.EpochEnded, ev.RunEnded, ev.Measured)
}


def item_to_dict(item: Any) -> dict:
    return dict(kind=type(item).__name__, **dataclasses.asdict(item))


def item_from_dict(data: dict) -> Any:
    """The event (or Measured record) a dict from `item_to_dict` was made from."""
    fields = {k: _tuples(v) for k, v in data.items() if k != "kind"}
    kind = _KINDS[data["kind"]]
    if kind is ev.Measured:
        fields["calibration"] = ev.Calibration(
            **{k: _tuples(v) for k, v in data["calibration"].items()}
        )
        fields["acceleration"] = ev.Acceleration(**data["acceleration"])
    return kind(**fields)


def _tuples(value: Any) -> Any:
    """JSON's lists back to the tuples the frozen events hold."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


# --- reading -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A checked checkpoint: its metadata, and its tensor files on demand."""

    directory: Path
    meta: dict

    @property
    def epoch(self) -> int:
        return int(self.meta["epoch"])

    def load_state(self) -> dict:
        return self._load("state")

    def load_best(self) -> dict:
        return self._load("best")

    def _load(self, which: str) -> dict:
        path = self.directory / self.meta["files"][which]["name"]
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            first = str(error).strip().splitlines()[0]
            raise ValueError(
                f"refused to load {str(path)!r}: it holds objects other than tensors and "
                f"plain values, which could run code when loaded ({first}). It was not "
                "loaded; use a checkpoint nbaccel wrote"
            ) from None


def read_checkpoint(path: os.PathLike | str) -> Checkpoint:
    """The newest intact checkpoint of a run directory (or of its checkpoint.json):
    `checkpoint.json` if its files are whole, else `checkpoint.prev.json`.

    Raises:
        ValueError: neither is intact, saying what is wrong with each.
    """
    path = Path(path).expanduser()
    directory = path.parent if path.suffix == ".json" else path
    if not directory.is_dir():
        raise ValueError(
            f"no run directory at {str(directory)!r}: pass a path from nbaccel.runs()"
        )
    problems = []
    for name in (META, PREVIOUS):
        try:
            return Checkpoint(directory, _checked_meta(directory / name))
        except ValueError as problem:
            problems.append(f"{name}: {problem}")
    raise ValueError(
        f"no intact checkpoint in {str(directory)!r} ({'; '.join(problems)}); start a "
        "new run without resume="
    )


def _checked_meta(path: Path) -> dict:
    """The metadata at `path` once every file it names has its recorded size and hash."""
    if not path.exists():
        raise ValueError("missing")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"unreadable ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"not an nbaccel checkpoint (format {FORMAT!r})")
    for entry in meta["files"].values():
        file = path.parent / entry["name"]
        if not file.exists():
            raise ValueError(f"{entry['name']} is missing")
        if file.stat().st_size != entry["size"] or _file_entry(file) != entry:
            raise ValueError(f"{entry['name']} is incomplete or damaged")
    return meta
