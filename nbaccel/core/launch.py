"""devices=N: the processes of a data-parallel run, started and watched from the notebook.

The Run's training thread (run.py) calls `train_on_ranks`, which starts one process per
device on torch.distributed (gloo on CPUs, NCCL on GPUs, rendezvous through a file), and
then only forwards: rank 0 sends the run's events on a multiprocessing queue, and this
thread puts each on the publisher's queue, exactly where a one-device run puts them. Stop
and pause travel the other way through the Run's Control, whose flags are that context's
Events. How a process starts:

- fork, where the kernel has not set up CUDA (a CPU run, on Linux): the processes inherit
  the prepared plan, data defined in the notebook included, as with Accelerate's
  notebook_launcher;
- spawn otherwise (the kernel uses CUDA, or no fork: macOS, Windows): the plan is pickled
  to each process, so a Dataset class defined in the notebook cannot travel, and is
  refused before any process starts.

No process outlives the run: each dies with the thread that started it (Linux's
PR_SET_PDEATHSIG), a failed rank's peers are terminated, and the thread joins them all.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import io
import multiprocessing
import os
import pickle
import queue as queues
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from nbaccel.core.checkpoint import open_checkpointer
from nbaccel.core.control import Control
from nbaccel.core.events import RunEnded, TestScore, failed_run
from nbaccel.core.loaders import unguarded_script
from nbaccel.core.openmp import cores, release_thread_pool
from nbaccel.core.plan import Plan
from nbaccel.core.predict import score_test
from nbaccel.core.ranks import ProcessGroupRanks

POLL_S = 0.1  # how often the notebook's thread looks at the processes between messages
JOIN_S = 30.0  # how long processes that ended their run get to exit before a kill
# A collective waits this long for a rank: pauses and rank 0's calibration fit in it; a
# rank that died is noticed by the notebook's thread long before.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=12)
# loop.run_training: (plan, emit, control, checkpoints) -> (status, reason, best epoch)
Train = Callable[..., tuple]


def start_method() -> str:
    """fork where it is safe (Linux, CUDA not set up in this process), else spawn."""
    if sys.platform.startswith("linux") and not torch.cuda.is_initialized():
        return "fork"
    return "spawn"


def check_can_start(plan: Plan, method: str) -> None:
    """Refuses, before any process starts, what the start method cannot carry.

    Raises:
        ValueError: spawn cannot pickle the plan (a class defined in the notebook).
    """
    if method == "fork":
        return
    script = unguarded_script()
    if script:
        raise ValueError(
            f"devices={plan.devices.value}: the processes start with spawn here and "
            f"re-import the script {script}, which would train again; put its code under "
            "`if __name__ == '__main__':`"
        )
    try:
        pickle.dumps(plan)
    except Exception as error:  # noqa: BLE001 - pickle raises many kinds
        devices = plan.devices.value
        raise ValueError(
            f"devices={devices}: the processes start with spawn here (CUDA is already "
            "set up in this kernel, or this system has no fork), and spawn cannot send "
            f"them the run's data ({error}). Move the Dataset class into a .py file "
            "next to the notebook and import it, or give a folder, a CSV or arrays; or "
            "restart the kernel and start this run before anything else uses the GPU"
        ) from None


@dataclass(frozen=True)
class RanksEnded:
    """What the processes left: rank 0's RunEnded, and the best weights (None if failed)."""

    ended: RunEnded
    best_weights: Optional[dict]


def train_on_ranks(
    plan: Plan,
    train: Train,
    emit: Callable[[Any], None],
    control: Control,
    method: str,
) -> RanksEnded:
    """Trains `plan` with `train` (the loop's run_training) in plan.devices processes,
    forwarding rank 0's events to `emit`; returns once every process has gone. A rank
    that fails ends the run as failed with that rank's traceback, its peers terminated."""
    count = plan.devices.value
    context = multiprocessing.get_context(method)
    inbox = context.Queue()
    rendezvous = Path(tempfile.mkdtemp(prefix="nbaccel-ranks-")) / "store"
    # fork: each process its copy of the plan. spawn: the plan as bytes, which Python's
    # pickle copies; multiprocessing's own pickler would put the model's tensors in
    # shared memory, and every rank would then train the one copy at once.
    sent = plan if method == "fork" else pickle.dumps(plan)
    processes = [
        context.Process(
            target=_rank_main,
            args=(
                sent,
                train,
                rank,
                count,
                str(rendezvous),
                inbox,
                control,
                os.getpid(),
            ),
            name=f"nbaccel-rank-{rank}",
        )
        for rank in range(count)
    ]
    ended: Optional[RanksEnded] = None
    if method == "fork":
        # GNU libgomp's worker pool does not survive a fork: a child that inherits this
        # thread's pool waits forever for its workers in its first parallel op.
        release_thread_pool()
    try:
        with _fork_warning_silenced():
            for process in processes:
                process.start()
        while ended is None:
            ended = _next(inbox, processes, emit, control)
    finally:
        _end_all(
            processes, patient=ended is not None and ended.ended.status != "failed"
        )
        inbox.close()
        with contextlib.suppress(OSError):
            rendezvous.unlink(missing_ok=True)
            rendezvous.parent.rmdir()
    return ended


def _next(
    inbox: Any,
    processes: list,
    emit: Callable[[Any], None],
    control: Control,
) -> Optional[RanksEnded]:
    """Forwards one message; the run's end once it has come (or a process died)."""
    try:
        kind, rank, payload = inbox.get(timeout=POLL_S)
    except queues.Empty:
        dead = [p for p in processes if p.exitcode not in (None, 0)]
        if dead:  # killed without a word (out of memory, a signal): say which and how
            rank = processes.index(dead[0])
            reason = f"rank {rank} exited with code {dead[0].exitcode}"
            text = (
                f"{reason} without a traceback (killed by the system, out of memory?)"
            )
        elif all(p.exitcode is not None for p in processes):
            reason = text = "every process exited without sending the run's end"
        else:
            return None
        ended = RunEnded("failed", reason, None, control.elapsed(), text)
        return RanksEnded(ended, None)
    if kind == "event":
        emit(payload)
        return None
    if kind == "failed":
        reason, text = f"rank {rank}: {payload.reason}", payload.traceback
        killed = _killed(processes)
        if killed is not None:  # the first cause: the others lost their peer
            reason, text = killed, f"{killed}\n\nthen {reason}\n{text}"
        ended = RunEnded("failed", reason, None, control.elapsed(), text)
        return RanksEnded(ended, None)
    ended, weights = payload  # on the CPU: this process need not set up CUDA
    best = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    return RanksEnded(ended, best)


def _killed(processes: list, wait_s: float = 1.0) -> Optional[str]:
    """A rank that the system killed (it exits non-zero: a rank that fails says so and
    exits), looked for up to `wait_s` after another rank failed; None if none was."""
    deadline = time.monotonic() + wait_s
    while True:
        for rank, process in enumerate(processes):
            if process.exitcode not in (None, 0):
                return f"rank {rank} exited with code {process.exitcode}"
        if time.monotonic() >= deadline or all(
            p.exitcode is not None for p in processes
        ):
            return None
        time.sleep(0.05)


def _end_all(processes: list, patient: bool) -> None:
    """Joins every process: those that ended their run get JOIN_S to exit, the others
    are terminated at once (a failed rank's peers wait in a collective forever)."""
    for process in processes:
        if process.pid is None:
            continue
        process.join(JOIN_S if patient else 0)
        if process.is_alive():
            process.terminate()
            process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
        process.close()


@contextlib.contextmanager
def _fork_warning_silenced() -> Any:
    """Python 3.12 warns at every fork from a process with threads (a kernel always has
    some); forking here is the documented choice, the processes touch none of them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "This process .* is multi-threaded")
        yield


# --- in each process ------------------------------------------------------------------------


def _rank_main(
    sent: Union[Plan, bytes],
    train: Train,
    rank: int,
    count: int,
    rendezvous: str,
    outbox: Any,
    control: Control,
    parent: int,
) -> None:
    """One rank: joins the process group, trains its shard, and (rank 0) sends the events,
    the run's end and the best weights. Any failure is sent with its traceback."""
    _die_with_parent(parent)
    # The kernel's Interrupt reaches its whole process group: a rank ignores it. The
    # run's Stop (which Ctrl-C on a run trained in the foreground also asks for) ends it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch.distributed as dist

    try:
        plan = pickle.loads(sent) if isinstance(sent, bytes) else sent
        device = plan.device
        if device.type == "cuda":
            device = torch.device("cuda", rank)
            torch.cuda.set_device(device)
        else:  # the CPU's cores shared out, as one process would use them all
            torch.set_num_threads(max(1, cores() // count))
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            init_method=f"file://{rendezvous}",
            rank=rank,
            world_size=count,
            timeout=COLLECTIVE_TIMEOUT,
        )
        control.ranks = ProcessGroupRanks(rank, count, device)
        plan = replace(plan, device=device)
        ended = _train_rank(plan, train, rank, outbox, control)
        if rank == 0:
            weights = io.BytesIO()
            torch.save(plan.model.state_dict(), weights)
            outbox.put(("ended", rank, (ended, weights.getvalue())))
    except BaseException as error:  # noqa: BLE001 - every failure reaches the notebook
        failed = failed_run(error, control.elapsed(), traceback.format_exc())
        outbox.put(("failed", rank, failed))
    finally:
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        outbox.close()
        outbox.join_thread()  # every message sent before the process goes


def _train_rank(
    plan: Plan, train: Train, rank: int, outbox: Any, control: Control
) -> RunEnded:
    """The training thread's work (run.py) on one rank: rank 0 sends the events and
    writes the checkpoints; the others train in silence."""

    def send(item: Any) -> None:
        outbox.put(("event", rank, item))

    checkpoints = open_checkpointer(plan) if rank == 0 else None
    try:
        status, reason, best_epoch = train(
            plan, send if rank == 0 else _nowhere, control, checkpoints
        )
        elapsed = control.elapsed()
        check_same_weights(plan.model, control.ranks)
        test: Optional[TestScore] = None
        if rank == 0 and plan.test is not None and best_epoch:
            test = score_test(plan.model, plan.test, plan.precision, best_epoch)
        ended = RunEnded(status, reason, best_epoch, elapsed, test=test)
    except BaseException as error:
        ended = failed_run(error, control.elapsed())
        raise
    finally:
        if checkpoints is not None:  # how it ended, for load_run() and runs()
            checkpoints.end(ended)
    return ended


def check_same_weights(model: torch.nn.Module, ranks: ProcessGroupRanks) -> None:
    """Every rank must end with rank 0's weights, as DistributedDataParallel keeps them:
    a run whose processes drifted apart fails, rather than return one shard's model.

    Raises:
        RuntimeError: this rank's weights (or any other's) differ from rank 0's.
    """
    # Parameters only: BatchNorm statistics re-estimated on a GPU may differ in the last
    # bits between ranks (each picks its own kernels); the run keeps rank 0's.
    state = dict(model.named_parameters())
    mine = torch.stack([t.detach().double().sum().cpu() for t in state.values()])
    differ = (mine != ranks.agree(mine)).tolist()
    if ranks.any(any(differ)):
        first = next((k for k, d in zip(state, differ) if d), "on another rank")
        raise RuntimeError(
            f"the {ranks.count} processes ended with different weights ({first}), so "
            "DistributedDataParallel did not keep them in step; please report this "
            "with the run's settings, and use devices=1 meanwhile"
        )


def _nowhere(item: Any) -> None:
    """Ranks other than 0 publish nothing: their events are rank 0's, on another shard."""


def _die_with_parent(parent: int) -> None:
    """This process ends when the notebook's (`parent`) does, a kernel shut down or
    killed, so that no rank outlives it: on Linux the kernel sends SIGKILL when the
    thread that started it ends; elsewhere a watchdog thread sees the parent change."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_PDEATHSIG = 1
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent != os.getppid():  # the parent went before the call took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="nbaccel-parent-watch", daemon=True).start()


__all__ = ["RanksEnded", "check_can_start", "start_method", "train_on_ranks"]
