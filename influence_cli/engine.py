"""The gradient passes: query (test) side once per checkpoint, then one streaming training pass.

Order of work, for C checkpoints, M query and N training examples:

1. ``query_features``: for each checkpoint c, the M query gradients g_c(z′), already weighted by
   the estimator's w (see :mod:`influence_cli.estimators`): C × M × D numbers, held once. When
   they exceed the memory budget (``memory_gb``, default half the free memory) :func:`explain`
   splits the M queries into chunks, one training pass each (training gradients come from the
   store when ``cache_dir`` is set), with results identical to one pass.
2. ``train_pass``: for each training batch of B examples and each checkpoint c, the batch's
   gradients g_c(z) are computed once and used for both the score block
   Σ_c η_c ⟨w·g_c(z′), w·g_c(z)⟩ ([M, B]) and the self-influence Σ_c η_c Σ_l w_l²‖g_c^l(z)‖² ([B]).
   Blocks are merged into streaming top-k lists and dropped: memory is C×M×D + M×k + N,
   never M×N (unless the full matrix is asked for).

The training-batch loop is outside the checkpoint loop so that the sum over checkpoints is
complete before top-k selection; every checkpoint's weights therefore stay loaded.

The influence functions ``ekfac`` and ``arnoldi`` use the final checkpoint (or every checkpoint with
weight η_c, ``curvature: {checkpoints: all}``; :func:`checkpoint_terms`): their preconditioner
P_c ≈ (G_c + λI)⁻¹ is fitted once per session and checkpoint (:func:`curvature`; kept in the gradient
store with ``cache_dir``), the query side holds P_c g_c(z′), the training side g_c(z), and the
self-influence is g_c(z)ᵀ P_c g_c(z).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from influence_cli import distributed
from influence_cli.curvature.arnoldi import Arnoldi, fit_arnoldi
from influence_cli.curvature.ekfac import EKFAC, fit_ekfac
from influence_cli.curvature.sums import Reduce, Sums, in_process, total
from influence_cli.errors import GradientError, InfluenceError, ParameterError
from influence_cli.estimators import layer_weights, self_influence_term
from influence_cli.gradients.per_example import FlatGrads, GradientBatch
from influence_cli.loading.examples import Examples
from influence_cli.methods import CURVATURE_METHODS, Method
from influence_cli.progress import NoProgress, Progress
from influence_cli.recipe import CurvatureSpec
from influence_cli.session import Session
from influence_cli.topk import StreamingTopK, merge_topk


@dataclass
class QueryFeatures:
    """Weighted query gradients w·g_c(z′), one batch of M per checkpoint term of :func:`checkpoint_terms`
    (flat [M, D] or factorised; ``ekfac``: the preconditioned P g(z′) at the final checkpoint)."""

    indices: torch.Tensor
    labels: torch.Tensor
    per_checkpoint: list[GradientBatch]


@dataclass
class TrainPassResult:
    """What one pass over (a shard of) the training set produced, on the CPU."""

    indices: torch.Tensor                                  # [N'] training indices covered
    self_influence: torch.Tensor                           # [N'] Σ_c η_c Σ_l w_l²‖g_c^l‖²
    proponents: tuple[torch.Tensor, torch.Tensor] | None   # ([M, k] scores, [M, k] indices)
    opponents: tuple[torch.Tensor, torch.Tensor] | None
    matrix: torch.Tensor | None                            # [M, N'] when asked for
    column_best: tuple[torch.Tensor, torch.Tensor] | None = None  # ([N', r] scores, [N', r] query rows)
    checkpoint_mass: torch.Tensor | None = None  # [terms] η_c Σ_i s_c(z_i): each checkpoint term's part of the sum

    @classmethod
    def merge(cls, parts: list["TrainPassResult | None"], k: int) -> "TrainPassResult":
        """One result from results over disjoint, consecutive shards, in order (``None``: an empty shard).

        indices, self-influence, column_best (per training example) and the matrix (along the
        training axis): concatenated; checkpoint_mass: added; proponents/opponents: the k
        largest/smallest of the per-shard top-k lists (:func:`~influence_cli.topk.merge_topk`, ties to the smaller index), which is
        exactly the top-k over all columns.
        """
        present = [p for p in parts if p is not None]
        first = present[0]
        indices = torch.cat([p.indices for p in present])
        k = min(k, len(indices))

        def side(name: str, largest: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
            return None if getattr(first, name) is None else merge_topk([getattr(p, name) for p in present], k,
                                                                         largest=largest)

        def rows(name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
            pairs = [getattr(p, name) for p in present]
            return None if pairs[0] is None else (torch.cat([v for v, _ in pairs]), torch.cat([i for _, i in pairs]))

        return cls(indices=indices, self_influence=torch.cat([p.self_influence for p in present]),
                   proponents=side("proponents", True), opponents=side("opponents", False),
                   matrix=None if first.matrix is None else torch.cat([p.matrix for p in present], dim=1),
                   column_best=rows("column_best"),
                   checkpoint_mass=None if first.checkpoint_mass is None else
                   torch.stack([p.checkpoint_mass for p in present]).sum(0))


    @classmethod
    def stack(cls, parts: list["TrainPassResult"], column_best: int, rows: int) -> "TrainPassResult":
        """One result from passes over the same training examples for consecutive chunks of ``rows``
        query examples: top-k lists and matrix stacked along the queries; ``column_best`` (each training
        example's r best query rows) re-selected over all chunks, its rows offset by each chunk's start."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        pairs = lambda name: [getattr(p, name) for p in parts]  # noqa: E731
        side = lambda name: (torch.cat([v for v, _ in pairs(name)]), torch.cat([i for _, i in pairs(name)]))  # noqa: E731
        best = None
        if column_best:
            values = torch.cat([v for v, _ in pairs("column_best")], dim=1)
            where = torch.cat([i + n * rows for n, (_, i) in enumerate(pairs("column_best"))], dim=1)
            top = values.topk(min(column_best, values.shape[1]), dim=1)
            best = (top.values, where.gather(1, top.indices))
        return cls(indices=first.indices, self_influence=first.self_influence, proponents=side("proponents"),
                   opponents=side("opponents"),
                   matrix=None if first.matrix is None else torch.cat(pairs("matrix")), column_best=best,
                   checkpoint_mass=first.checkpoint_mass)


def _raise_non_finite(session: Session, split: Examples, idx: torch.Tensor,
                      finite: list[tuple[int, torch.Tensor]]) -> None:
    """Name the first example and checkpoint whose gradient is NaN or infinite.

    ``finite`` pairs a checkpoint number with the batch's per-example finiteness flags there.
    """
    for c, ok in finite:
        bad = (~ok).nonzero()
        if len(bad):
            i = int(idx[int(bad[0])])
            raise GradientError(f"{split.name}: the gradient of example {i} at checkpoint "
                                f"{session.checkpoints[c].path} is not finite (NaN or inf loss); "
                                "check that example's inputs and label")


def checkpoint_terms(session: Session, method: Method) -> list[tuple[int, float]]:
    """The (checkpoint c, weight) pairs a method sums over: every c with η_c; ``ekfac``, ``arnoldi``: the
    final checkpoint with weight 1 (its curvature is the final model's), or every c with η_c when the
    recipe sets ``curvature: {checkpoints: all}``."""
    if method in CURVATURE_METHODS and curvature_spec(session).checkpoints == "last":
        return [(len(session.weights) - 1, 1.0)]
    return list(enumerate(session.learning_rates))


def curvature_spec(session: Session) -> CurvatureSpec:
    """The recipe's ``curvature:`` settings (defaults when absent)."""
    return session.recipe.curvature or CurvatureSpec()


def _reduce() -> Reduce:
    """Sums over the whole training set: in this process, or under ``torchrun`` every rank's local sums
    (computed inside :func:`~influence_cli.distributed.on_every_rank`, so a failing rank stops all) added
    in rank order on the CPU, then moved back to where they were computed."""
    if distributed.world_size() == 1:
        return in_process

    def across_ranks(local: Callable[[], Sums]) -> Sums:
        where: dict[str, torch.device] = {}

        def on_cpu() -> Sums:
            sums = local()
            where.update({k: v.device for k, v in sums.items()})
            return {k: v.cpu() for k, v in sums.items()}

        summed = total(distributed.on_every_rank(on_cpu, "fitting the curvature"))
        device = next(iter(where.values()), torch.device("cpu"))
        return {k: v.to(where.get(k, device)) for k, v in summed.items()}
    return across_ranks


def _fit_key(session: Session, method: Method) -> str:
    """What a fit depends on beyond the store's recipe key and the checkpoint: the method, its settings, the
    batch boundaries (which seed ekfac's sampled labels) and the layer selection."""
    spec = curvature_spec(session).model_dump(mode="json", include={"damping", "seed", "eigenpairs", "iterations"})
    return json.dumps({"method": str(method), **spec, "batch_size": session.recipe.batch_size,
                       "layers": session.layout.names}, sort_keys=True)


def _fit(session: Session, method: Method, c: int) -> EKFAC | Arnoldi:
    """Fit ``method``'s preconditioner at checkpoint c over the training set (this rank's batches under
    ``torchrun``, the sums added across ranks)."""
    s, spec = session, curvature_spec(session)
    w = distributed.world_size()
    mine = torch.arange(len(s.train))
    if w > 1:
        mine = distributed.shard(mine, s.recipe.batch_size, distributed.rank(), w)

    def batches() -> Iterator[tuple[int, object, torch.Tensor]]:
        for idx, x, y in s.train.batches(s.recipe.batch_size, mine):
            yield (int(idx[0]), *s.to_device(x, y))

    if method is Method.ARNOLDI:
        return fit_arnoldi(s.model, s.weights[c], s.layout, s.loss_fn, lambda: ((x, y) for _, x, y in batches()),
                           len(s.train), eigenpairs=spec.eigenpairs, iterations=spec.iterations or 2 * spec.eigenpairs,
                           seed=spec.seed, reduce=_reduce())
    if not s.is_classifier:
        raise ParameterError("method", f"ekfac samples labels from the model's softmax and needs a "
                                       f"classification loss, not {s.recipe.loss!r}")
    return fit_ekfac(s.model, s.weights[c], s.layout, s.loss_fn, lambda: ((i, x) for i, x, _ in batches()),
                     damping=spec.damping, seed=spec.seed, reduce=_reduce())


def _curvature_key(session: Session, method: Method, c: int) -> str:
    return f"{method}:{c}:{','.join(session.layout.names)}"


def fit_curvatures(session: Session, method: Method, progress: Progress | None = None) -> None:
    """Fit (or read from the gradient store) the preconditioner of every checkpoint term of ``method``
    not fitted yet in this session, as its own progress task (nothing for the first-order methods)."""
    if method not in CURVATURE_METHODS:
        return
    todo = [c for c, _ in checkpoint_terms(session, method)
            if _curvature_key(session, method, c) not in session.curvature]
    if todo:
        with (progress or NoProgress()).task(f"curvature fit ({method})", total=len(todo)) as advance:
            for c in todo:
                curvature(session, method, c)
                advance(1)


def curvature(session: Session, method: Method, c: int = -1) -> EKFAC | Arnoldi:
    """The session's preconditioner P ≈ (G_c + λI)⁻¹ for ``ekfac`` or ``arnoldi`` at checkpoint c (default
    the final one), fitted over the training set on first use (see :mod:`influence_cli.curvature`) and kept
    per method, checkpoint and layer selection; with ``cache_dir``, kept in the gradient store too and
    read back by later runs."""
    c = c % len(session.weights)
    key = _curvature_key(session, method, c)
    if key not in session.curvature:
        if session.recipe.projection is not None:
            raise ParameterError("method", f"{method} needs exact gradients; remove the `projection:` section "
                                           "from the recipe")
        kind = Arnoldi if method is Method.ARNOLDI else EKFAC
        sha, name = session.checkpoints[c].sha256, _fit_key(session, method)
        state = None if session.store is None else session.store.load_fit(sha, name, session.device)
        if state is not None:
            session.curvature[key] = kind.from_state(state, session.layout)
        else:
            session.curvature[key] = _fit(session, method, c)
            if session.store is not None and distributed.is_main():
                session.store.save_fit(sha, name, session.curvature[key].state())
    return session.curvature[key]


def weighted_batch(session: Session, method: Method, c: int, x: object, y: torch.Tensor,
                   train_idx: torch.Tensor | None = None) -> tuple[GradientBatch, torch.Tensor, torch.Tensor]:
    """(w·g_c, Σ_l w_l²‖g^l‖², finite flags) for one batch at checkpoint c; a training batch
    (``train_idx`` given) goes through the session's gradient store. ``ekfac``, ``arnoldi``: (P g for a
    query batch, g for a training batch; gᵀ P g; finite flags), P the preconditioner of :func:`curvature`
    at c; with ``curvature: {renormalize: true}`` both sides divided by √(gᵀPg), so the product is a
    cosine in the metric P and the self-influence 1."""
    if train_idx is None:
        g = session.gradients(session.weights[c], x, y)
    else:
        g = session.train_gradients(c, train_idx, x, y)
    if method in CURVATURE_METHODS:
        flat = FlatGrads(g.g, g.layout)  # type: ignore[attr-defined]
        pg = curvature(session, method, c).precondition(flat)
        self_term = (pg.g * flat.g).sum(1).to(session.score_dtype)
        side = pg if train_idx is None else flat
        if curvature_spec(session).renormalize:
            scale = self_term.clamp_min(torch.finfo(self_term.dtype).tiny).rsqrt()
            side = FlatGrads(side.g * scale[:, None].to(side.g.dtype), side.layout)
            self_term = torch.where(torch.isfinite(self_term), torch.ones_like(self_term), self_term)
        return side, self_term, torch.isfinite(self_term)
    sq = g.layer_sq_norms().to(session.score_dtype)
    w = layer_weights(sq, method)
    scaled = g if method is Method.TRACIN else g.scaled(w)  # TracIn's w_l = 1: no copy of the batch
    return scaled, self_influence_term(sq, w), torch.isfinite(sq).all(1)


def nbytes(obj: object) -> int:
    """Bytes of the tensors held by a gradient batch (any representation)."""
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return sum(nbytes(v) for v in vars(obj).values()) if hasattr(obj, "__dict__") else 0


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` (CUDA: ``mem_get_info``; CPU: Linux ``MemAvailable``), or ``None``."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as fh:
            line = next(l for l in fh if l.startswith("MemAvailable:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration, ValueError):
        return None


def query_budget(session: Session) -> float | None:
    """Bytes the query side may hold: the recipe's ``memory_gb``, else half the free memory of the
    device (``None`` when that cannot be read)."""
    if session.recipe.memory_gb is not None:
        return session.recipe.memory_gb * 2**30
    free = available_memory(session.device)
    return None if free is None else 0.5 * free


def query_example_bytes(session: Session, method: Method, indices: torch.Tensor, labels: torch.Tensor) -> float:
    """Bytes one query example's weighted gradients take over all C checkpoints, measured on the first
    batch at the first checkpoint (the representation, factors or dense, is the same at every c)."""
    idx = indices[:session.recipe.batch_size]
    x, _ = session.test.batch(idx)  # type: ignore[union-attr]
    x, y = session.to_device(x, labels[:len(idx)])
    feats, _, _ = weighted_batch(session, method, 0, x, y)
    return nbytes(feats) / len(idx) * len(checkpoint_terms(session, method))


def _dense_bytes(session: Session) -> int:
    """An upper bound on one query example's bytes over all C checkpoints: its gradient fully
    materialised (factors are kept only when smaller, projections are smaller), C·D·itemsize."""
    itemsize = max(torch.empty(0, dtype=session.dtype).element_size(),
                   torch.empty(0, dtype=session.score_dtype).element_size())
    return len(session.weights) * sum(session.layout.sizes) * itemsize


def examples_per_pass(budget: float | None, m: int, per_example: float) -> int:
    """Query examples one training pass holds: all ``m`` when m·``per_example`` bytes fit ``budget`` (or
    there is none), else ⌊budget / per_example⌋ (0: not even one fits)."""
    if budget is None or per_example <= 0 or m * per_example <= budget:
        return m
    return min(m, int(budget // per_example))


def query_chunk(session: Session, method: Method, indices: torch.Tensor, labels: torch.Tensor) -> int:
    """How many query examples one chunk holds: all M when C·M·d bytes fit :func:`query_budget`, else
    ⌊budget / (C·d)⌋, said once in a warning; not even one fitting is an error."""
    budget, m = query_budget(session), len(indices)
    if budget is None or m == 0 or m * _dense_bytes(session) <= budget:  # fits even fully materialised
        return m
    per_example = query_example_bytes(session, method, indices, labels)
    chunk = examples_per_pass(budget, m, per_example)
    if chunk >= m:
        return m
    gib = lambda n: f"{n / 2**30:.2f} GiB"  # noqa: E731
    where = "`memory_gb`" if session.recipe.memory_gb is not None else f"half the free memory of {session.device}"
    if chunk == 0:
        raise InfluenceError(
            f"one test example's gradients over {len(session.weights)} checkpoints take {gib(per_example)}, more "
            f"than the test side's budget ({gib(budget)}: {where}); raise `memory_gb`, select fewer `layers`, or set "
            "`projection: {dim: K}`")
    passes = -(-m // chunk)
    source = "read from the gradient store" if session.store is not None else "recomputed"
    warnings.warn(f"the test side needs about {gib(per_example * m)} ({len(session.weights)} checkpoints × {m} test "
                  f"examples), more than its budget ({gib(budget)}: {where}): explaining them in {passes} chunks "
                  f"of at most {chunk}, one training pass each (training gradients {source} per chunk)", stacklevel=3)
    return chunk


def query_features(session: Session, method: Method, indices: torch.Tensor, labels: torch.Tensor,
                   progress: Progress | None = None) -> QueryFeatures:
    """Weighted gradients of the query examples ``indices`` (test split) at ``labels``."""
    assert session.test is not None
    progress = progress or NoProgress()
    bs = session.recipe.batch_size
    per_checkpoint = []
    terms = checkpoint_terms(session, method)
    with progress.task("test gradients", total=len(indices) * len(terms)) as advance:
        for c, _ in terms:
            parts = []
            for start in range(0, len(indices), bs):
                idx = indices[start:start + bs]
                x, _ = session.test.batch(idx)
                x, y = session.to_device(x, labels[start:start + bs])
                feats, _, finite = weighted_batch(session, method, c, x, y)
                if not bool(finite.all()):
                    _raise_non_finite(session, session.test, idx, [(c, finite)])
                parts.append(feats)
                advance(len(idx))
            per_checkpoint.append(type(parts[0]).cat(parts))
    return QueryFeatures(indices, labels, per_checkpoint)


def train_pass(session: Session, method: Method, query: QueryFeatures | None = None, *, k: int = 10,
               keep_matrix: bool = False, indices: torch.Tensor | None = None,
               progress: Progress | None = None, column_best: int = 0) -> TrainPassResult:
    """Stream over the training examples ``indices`` (default all), scoring against ``query``.

    ``column_best`` = r > 0 also keeps, for every training example, its r largest scores over the
    query examples and their query rows (``column_best``: [N', r] each; memory N'×r).

    Under ``torchrun`` (W > 1 ranks) rank r streams its :func:`~influence_cli.distributed.shard`
    (whole batches, so every example is computed in the same batch as in one process) and every
    rank gets the merged result (:meth:`TrainPassResult.merge`)."""
    indices = torch.arange(len(session.train)) if indices is None else indices
    fit_curvatures(session, method, progress)
    w = distributed.world_size()
    if w == 1:
        return local_train_pass(session, method, query, k=k, keep_matrix=keep_matrix, indices=indices,
                                progress=progress, column_best=column_best)
    r = distributed.rank()
    mine = distributed.shard(indices, session.recipe.batch_size, r, w)
    label = f"rank {r} of {w}: {len(mine)} of {len(indices)}"
    shard_progress = distributed.ShardProgress(progress or NoProgress(), label)
    parts = distributed.on_every_rank(
        lambda: local_train_pass(session, method, query, k=k, keep_matrix=keep_matrix, indices=mine,
                                 progress=shard_progress, column_best=column_best) if len(mine) else None,
        "merging the training pass")
    return TrainPassResult.merge(parts, k)


def local_train_pass(session: Session, method: Method, query: QueryFeatures | None, *, k: int,
                     keep_matrix: bool, indices: torch.Tensor, progress: Progress | None,
                     column_best: int) -> TrainPassResult:
    """:func:`train_pass` in this process only, over ``indices``."""
    progress = progress or NoProgress()
    m = 0 if query is None else len(query.indices)
    k = min(k, len(indices))
    top = StreamingTopK(m, k, largest=True, device=session.device, dtype=session.score_dtype)
    bottom = StreamingTopK(m, k, largest=False, device=session.device, dtype=session.score_dtype)
    r = min(column_best, m)
    self_parts, blocks, col_parts = [], [], []
    terms = checkpoint_terms(session, method)
    mass = torch.zeros(len(terms), dtype=torch.float64, device=session.device)
    with progress.task("train gradients", total=len(indices)) as advance:
        for idx, x, y in session.train.batches(session.recipe.batch_size, indices):
            x, y = session.to_device(x, y)
            block = torch.zeros(m, len(idx), device=session.device, dtype=session.score_dtype)
            self_inf = torch.zeros(len(idx), device=session.device, dtype=session.score_dtype)
            finite = []
            for j, (c, lr) in enumerate(terms):
                feats, self_term, ok = weighted_batch(session, method, c, x, y, idx)
                self_inf += lr * self_term
                mass[j] += lr * self_term.double().sum()
                finite.append((c, ok))
                if query is not None:
                    block += lr * query.per_checkpoint[j].dot(feats)
            self_cpu = self_inf.cpu()  # the batch's one host sync; the check below reads the copy
            if not bool(torch.isfinite(self_cpu).all()):
                _raise_non_finite(session, session.train, idx, finite)
            cols = idx.to(session.device)
            if m:
                top.update(block, cols)
                bottom.update(block, cols)
                if keep_matrix:
                    blocks.append(block.cpu())
                if r:
                    best = block.topk(r, dim=0)
                    col_parts.append((best.values.T.cpu(), best.indices.T.cpu()))
            self_parts.append(self_cpu)
            advance(len(idx))
    cpu = lambda pair: (pair[0].cpu(), pair[1].cpu())  # noqa: E731
    return TrainPassResult(
        indices=indices,
        self_influence=torch.cat(self_parts),
        proponents=cpu(top.result()) if m else None,
        opponents=cpu(bottom.result()) if m else None,
        matrix=torch.cat(blocks, dim=1) if keep_matrix and m else None,
        column_best=(torch.cat([v for v, _ in col_parts]), torch.cat([i for _, i in col_parts])) if r else None,
        checkpoint_mass=mass.cpu(),
    )


def explain(session: Session, method: Method, indices: torch.Tensor, labels: torch.Tensor, *, k: int = 10,
            keep_matrix: bool = False, column_best: int = 0, progress: Progress | None = None) -> TrainPassResult:
    """Score every training example against the query examples ``indices`` (test split, losses at
    ``labels``): :func:`query_features` then :func:`train_pass`, in chunks of queries when the query
    side C·M·d exceeds :func:`query_budget` (:func:`query_chunk`). Rows are independent, so the
    top-k lists and the matrix equal one unchunked pass; ``column_best`` is merged over chunks."""
    fit_curvatures(session, method, progress)
    chunk = query_chunk(session, method, indices, labels)
    parts = []
    for start in range(0, len(indices), chunk):
        query = query_features(session, method, indices[start:start + chunk], labels[start:start + chunk], progress)
        parts.append(train_pass(session, method, query, k=k, keep_matrix=keep_matrix, progress=progress,
                                column_best=column_best))
    return TrainPassResult.stack(parts, column_best, chunk)
