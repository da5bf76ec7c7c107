"""Scale-out on ``torch.distributed``: one audit sharded across processes, GPUs and machines.

``torchrun --nproc_per_node=W -m influence_cli score RECIPE`` (or ``python -m torch.distributed.run``)
starts W processes and gives each the environment ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``. With W > 1:

- :func:`init` joins the process group: NCCL when CUDA is available (rank r on ``cuda:LOCAL_RANK``),
  gloo otherwise; every collective times out after ``INFLUENCE_CLI_DIST_TIMEOUT`` seconds
  (default 1800).
- Every rank loads the recipe and computes the query side (test gradients, once per checkpoint)
  itself; :func:`shard` gives rank r a contiguous run of whole training batches, the N training
  indices cut at multiples of ``batch_size`` into W runs whose batch counts differ by at most one
  (N need not be divisible by W). Each example is therefore computed in the same batch as in a
  single-process run.
- :func:`on_every_rank` runs a function (the engine's pass over this rank's shard, see
  :func:`influence_cli.engine.train_pass`) and gathers every rank's result on every rank, so all
  ranks continue with the same numbers; the engine merges them
  (:meth:`~influence_cli.engine.TrainPassResult.merge`).
- Only rank 0 writes report files (:func:`is_main`; see :func:`influence_cli.files.atomic_write`)
  and prints tables.

Failures: an exception on one rank during its shard travels with the results, so every rank
raises with the failing rank's message; a rank that dies makes the others' collective fail (gloo
notices the closed connection at once, ``torchrun`` also stops the remaining ranks with SIGTERM,
which :func:`init` turns into a one-line error); a rank that hangs makes the others fail at the
timeout. No rank waits forever.
"""

from __future__ import annotations

import atexit
import math
import os
import signal
import threading
from datetime import timedelta
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from influence_cli.errors import DistributedError, InfluenceError, first_line
from influence_cli.progress import Progress

TIMEOUT_ENV = "INFLUENCE_CLI_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
T = TypeVar("T")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"{name}={value!r}: expected an integer (set by torchrun)", exit_code=2) from None


def world_size() -> int:
    """W: the process group's size once joined, else ``WORLD_SIZE`` (1 without torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else _env_int("WORLD_SIZE", 1)


def rank() -> int:
    """This process's rank r ∈ [0, W): the process group's once joined, else ``RANK`` (0 without torchrun)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else _env_int("RANK", 0)


def is_main() -> bool:
    """Rank 0: the one that writes reports and prints (True in a single-process run)."""
    return rank() == 0


def timeout_seconds() -> float:
    """The collective timeout: ``INFLUENCE_CLI_DIST_TIMEOUT`` seconds, default 1800."""
    value = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(value) if value else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or math.isinf(seconds):
        raise DistributedError(f"{TIMEOUT_ENV}={value!r}: expected a positive number of seconds", exit_code=2)
    return seconds


def init() -> bool:
    """Join the process group that torchrun's environment describes; returns whether W > 1.

    Idempotent, and a no-op without torchrun (``WORLD_SIZE`` unset or 1) or when the caller has
    already initialised ``torch.distributed``. NCCL when CUDA is available (this rank then uses
    ``cuda:LOCAL_RANK``, so ``device: auto`` or ``cuda`` spreads the ranks over the GPUs), gloo otherwise.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    w = _env_int("WORLD_SIZE", 1)
    if w <= 1:
        return False
    r = _env_int("RANK", 0)
    if not dist.is_available():
        raise DistributedError(f"WORLD_SIZE={w} but this PyTorch build has no torch.distributed", exit_code=2)
    timeout = timeout_seconds()
    backend = "gloo"
    if torch.cuda.is_available():
        local, gpus = _env_int("LOCAL_RANK", 0), torch.cuda.device_count()
        if local >= gpus:
            raise DistributedError(f"rank {r}: LOCAL_RANK={local} but this machine has {gpus} GPU(s); "
                                   f"start at most {gpus} processes per node", exit_code=2)
        torch.cuda.set_device(local)
        backend = "nccl"
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    except (RuntimeError, ValueError, TimeoutError) as exc:
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        raise DistributedError(f"rank {r} of {w}: cannot join the {backend} process group at {where}: "
                               f"{first_line(exc)}") from None
    atexit.register(_leave)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)  # torchrun's SIGTERM to the survivors becomes a message
    return True


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _on_sigterm(signum: int, frame: Any) -> None:
    raise DistributedError(f"rank {rank()} of {world_size()}: stopped by SIGTERM; torchrun stops every rank when "
                           "one fails: see that rank's message", exit_code=128 + signum)


def shard(indices: torch.Tensor, batch_size: int, r: int, w: int) -> torch.Tensor:
    """Rank r's part of ``indices``: of the B = ⌈N/batch_size⌉ batches, the first B mod W ranks get
    ⌊B/W⌋ + 1 consecutive batches and the others ⌊B/W⌋ (as ``torch.tensor_split``), so the W parts
    are contiguous, cover ``indices`` in order and keep the single-process batch boundaries."""
    batches = -(-len(indices) // batch_size)
    lo, hi = ((q * (batches // w) + min(q, batches % w)) * batch_size for q in (r, r + 1))
    return indices[lo:hi]


def _all_gather(obj: Any, what: str) -> list[Any]:
    """Every rank's ``obj``, in rank order; a dead, failed or hung peer becomes a DistributedError."""
    parts: list[Any] = [None] * dist.get_world_size()
    try:
        dist.all_gather_object(parts, obj)
    except RuntimeError as exc:  # DistBackendError, DistNetworkError, timeouts
        raise DistributedError(f"rank {rank()} of {world_size()}: lost the other ranks while {what} (one probably "
                               f"failed or hung, see its message; timeout {timeout_seconds():g} s from "
                               f"{TIMEOUT_ENV}): {first_line(exc)}") from None
    return parts


def on_every_rank(fn: Callable[[], T], what: str) -> list[T]:
    """Run ``fn`` on this rank and return every rank's result, in rank order, on every rank.

    A failure on any rank is raised on every rank: here with its own exception, elsewhere as a
    :class:`DistributedError` with the failing rank's message and exit code.
    """
    init()
    local, error = None, None
    try:
        local = fn()
    except Exception as exc:  # shared with the other ranks below, then re-raised here
        error = exc
    status = None if error is None else _describe(error)
    parts = _all_gather((status, local), what)
    if error is not None:
        raise error
    for r, (failure, _) in enumerate(parts):
        if failure is not None:
            message, code = failure
            raise DistributedError(f"rank {r} of {len(parts)} failed: {message}", exit_code=code)
    return [part for _, part in parts]


class ShardProgress:
    """A :class:`~influence_cli.progress.Progress` whose task names say which shard is counted."""

    def __init__(self, inner: Progress, label: str) -> None:
        self.inner, self.label = inner, label

    def task(self, description: str, total: int) -> Any:
        return self.inner.task(f"{description} ({self.label})", total)


def _describe(exc: Exception) -> tuple[str, int]:
    """(message, exit code) of a rank's failure, for the other ranks to report."""
    if isinstance(exc, InfluenceError):
        return exc.message, exc.exit_code
    return f"{type(exc).__name__}: {first_line(exc)}", 3
