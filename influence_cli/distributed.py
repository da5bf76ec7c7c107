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
- :func:`train_pass` runs the engine's pass on this rank's shard and gathers every rank's
  :class:`~influence_cli.engine.TrainPassResult` on every rank (so all ranks continue with the
  same numbers): self-influence [N] and the [M, N] matrix are concatenated in rank order (= the
  original order); the per-query top-k lists, each over disjoint columns, are merged by
  :func:`~influence_cli.topk.merge_topk` (ties broken by the smaller index), which is exactly the
  top-k over all N columns.
- Only rank 0 writes report files (:func:`is_main`; see :func:`influence_cli.reports.files.atomic_write`)
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
from dataclasses import fields
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from influence_cli.errors import InfluenceError, first_line
from influence_cli.progress import NoProgress, Progress
from influence_cli.topk import merge_topk

if TYPE_CHECKING:
    from influence_cli.engine import QueryFeatures, TrainPassResult
    from influence_cli.estimators import Method
    from influence_cli.session import Session

TIMEOUT_ENV = "INFLUENCE_CLI_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
_in_shard = False  # True while this rank runs its own shard: the engine must not delegate again


class DistributedError(InfluenceError):
    """A rank failed, died, hung past the timeout, or the process group could not be joined."""

    def __init__(self, message: str, exit_code: int = 3) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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


def sharding() -> bool:
    """Whether a training pass should be sharded: W > 1 and not already running this rank's shard."""
    return world_size() > 1 and not _in_shard


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


def train_pass(session: "Session", method: "Method", query: "QueryFeatures | None" = None, *, k: int = 10,
               keep_matrix: bool = False, indices: torch.Tensor | None = None,
               progress: Progress | None = None, column_best: int = 0) -> "TrainPassResult":
    """:func:`influence_cli.engine.train_pass` over this rank's :func:`shard`, merged on every rank.

    Same arguments and result as the engine's pass; the progress bar counts this rank's shard.
    """
    from influence_cli import engine

    global _in_shard
    init()
    indices = torch.arange(len(session.train)) if indices is None else indices
    mine = shard(indices, session.recipe.batch_size, rank(), world_size())
    local, error = None, None
    _in_shard = True
    try:
        if len(mine):
            label = f"rank {rank()} of {world_size()}: {len(mine)} of {len(indices)}"
            local = engine.train_pass(session, method, query, k=k, keep_matrix=keep_matrix, indices=mine,
                                      progress=_ShardProgress(progress or NoProgress(), label),
                                      column_best=column_best)
    except Exception as exc:  # shared with the other ranks below, then re-raised here
        error = exc
    finally:
        _in_shard = False
    status = None if error is None else _describe(error)
    parts = _all_gather((status, local), "merging the training pass")
    if error is not None:
        raise error
    for r, (failure, _) in enumerate(parts):
        if failure is not None:
            message, code = failure
            raise DistributedError(f"rank {r} of {len(parts)} failed: {message}", exit_code=code)
    return merge([part for _, part in parts], k)


class _ShardProgress:
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


def merge(parts: list["TrainPassResult | None"], k: int) -> "TrainPassResult":
    """One result from per-rank results over disjoint, consecutive shards (``None``: an empty shard).

    indices, self-influence, column_best (per training example): concatenated; proponents/opponents:
    the k largest/smallest of the per-shard top-k lists (:func:`merge_topk`); matrix: concatenated
    along the training axis.
    """
    from influence_cli.engine import TrainPassResult

    known = {"indices", "self_influence", "proponents", "opponents", "matrix", "column_best"}
    assert {f.name for f in fields(TrainPassResult)} == known, "TrainPassResult changed: teach merge() its new fields"
    present = [p for p in parts if p is not None]
    first = present[0]
    indices = torch.cat([p.indices for p in present])
    k = min(k, len(indices))

    def side(name: str, largest: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        if getattr(first, name) is None:
            return None
        return merge_topk([getattr(p, name) for p in present], k, largest=largest)

    def rows(name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        if getattr(first, name) is None:
            return None
        pairs = [getattr(p, name) for p in present]
        return torch.cat([v for v, _ in pairs]), torch.cat([i for _, i in pairs])

    return TrainPassResult(
        indices=indices,
        self_influence=torch.cat([p.self_influence for p in present]),
        proponents=side("proponents", True),
        opponents=side("opponents", False),
        matrix=None if first.matrix is None else torch.cat([p.matrix for p in present], dim=1),
        column_best=rows("column_best"),
    )
