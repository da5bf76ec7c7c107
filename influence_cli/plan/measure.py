"""The passes a command runs (:func:`jobs`) and their cost measured on one batch per checkpoint
(:func:`measure`), with the engine's own per-batch work (:func:`~influence_cli.engine.weighted_batch`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence, TypeVar

import torch

from influence_cli.audits.check import Need, NoAttackTarget, watched_candidates, checks_of, rules_of
from influence_cli.audits.mislabel import COMBINED_SIGNALS, last_layer_session
from influence_cli.engine import weighted_batch
from influence_cli.errors import InfluenceError
from influence_cli.gradients.factorized import FactorizedGradients
from influence_cli.gradients.factors import Factors, LayerGrads
from influence_cli.gradients.per_example import GradientBatch, Inputs
from influence_cli.gradients.projection import ProjectedGradients
from influence_cli.methods import DEFAULT_MISLABEL_METHOD, DEFAULT_TARGET_K, Method, MislabelMethod
from influence_cli.plan.results import LayerPlan, Part, Stage
from influence_cli.selection import check_indices
from influence_cli.session import Session
from influence_cli.topk import StreamingTopK

T = TypeVar("T")


@dataclass(frozen=True)
class Job:
    """One library pass to measure."""

    label: str
    session: Session
    method: Method
    queries: torch.Tensor | None = None  # the test side's examples
    predict: bool = False                # the final model's predictions on them
    forward: bool = False                # C × N forward passes
    gradients: bool = True               # a training gradient pass


def _timed(session: Session, fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and its wall seconds; on CUDA the queued work is waited for, so the time is the work's."""
    cuda = session.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(session.device)
    start = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize(session.device)
    return out, time.perf_counter() - start


def per_example(batch: GradientBatch) -> list[tuple[int, int]]:
    """(numbers, bytes) one example holds in each layer of ``batch``: a factor pair's a and e, a dense
    or projected block's columns."""
    if isinstance(batch, LayerGrads):
        blocks = [(b.a, b.e) if isinstance(b, Factors) else (b,) for b in batch.blocks]
    else:
        blocks = [(batch.g[:, a:b],) for a, b in batch.layout.slices]
    return [(sum(t[0].numel() for t in ts), sum(t[0].numel() * t.element_size() for t in ts)) for ts in blocks]


def _layers(session: Session, feats: GradientBatch) -> tuple[LayerPlan, ...]:
    """Each selected layer's path, as the session's gradient computer took it for ``feats``."""
    computer = session.gradients.inner
    projector = computer if isinstance(computer, ProjectedGradients) else None
    base = computer if projector is None else projector.inner
    blocks = feats.blocks if isinstance(feats, LayerGrads) else [None] * len(session.layout.slices)
    out = []
    for l, (name, (a, b), block, (numbers, nbytes)) in enumerate(
            zip(session.layout.layer_names, session.layout.slices, blocks, per_example(feats))):
        path = base.path(l, block) if isinstance(base, FactorizedGradients) else "torch.func"
        out.append(LayerPlan(name or "(model)", b - a, path, None if projector is None else projector.path(l),
                             numbers, nbytes))
    return tuple(out)


def _total(times: list[float]) -> float:
    """C × the least of the C checkpoints' times: the work is the same at every checkpoint (same
    model, same batch), so the least time is its steadiest measure on shared cores (``timeit``'s rule)."""
    return len(times) * min(times)


def _query_side(job: Job) -> tuple[list[GradientBatch], list[Stage]]:
    """The first test batch's weighted gradients at every checkpoint, and the test side's stages."""
    s, queries = job.session, job.queries
    assert s.test is not None and queries is not None
    m, idx = len(queries), queries[:s.recipe.batch_size]
    stages = []
    if job.predict:
        (labels, _), secs = _timed(s, partial(s.predict, s.test, idx))
        stages.append(Stage("predictions", m, 1, secs * m / len(idx)))
    else:
        labels = s.test.labels[idx]
    (x, y), load = _timed(s, lambda: s.to_device(s.test.batch(idx)[0], labels))
    weighted_batch(s, job.method, 0, x, y)  # warm-up
    timed = [_timed(s, partial(weighted_batch, s, job.method, c, x, y)) for c in range(len(s.weights))]
    secs = _total([load + t for _, t in timed])  # the engine reads the batch again at every checkpoint
    stages.append(Stage("test gradients", m, len(s.weights), secs * m / len(idx)))
    return [f[0] for f, _ in timed], stages


def _merges(session: Session, block: torch.Tensor) -> float:
    """Seconds of merging one [b_q, B] score block into the streaming top-k and bottom-k lists (two
    stable sorts of [b_q, k+B] each; k ≪ B hardly matters, so k is target-identify's)."""
    cols = torch.arange(block.shape[1], device=session.device)
    lists = [StreamingTopK(len(block), DEFAULT_TARGET_K, largest=largest, device=session.device,
                           dtype=session.score_dtype) for largest in (True, False)]
    return _timed(session, lambda: [t.update(block, cols) for t in lists])[1]


def _train_side(job: Job, x: Inputs, y: torch.Tensor, queries: list[GradientBatch]) -> tuple[GradientBatch, float]:
    """The last checkpoint's weighted gradients of the batch (x, y), and the seconds of one training
    batch at all checkpoints without its reading: Σ_c (t_c + (M / b_q) · t_c(dot)) + (M / b_q) · t(merges)."""
    s, m = job.session, 0 if job.queries is None else len(job.queries)
    weighted_batch(s, job.method, 0, x, y)  # warm-up: first-call costs are not the steady rate
    grads, dots = [], []
    for c in range(len(s.weights)):  # one checkpoint's gradients at a time, as in the engine
        (feats, *_), t = _timed(s, partial(weighted_batch, s, job.method, c, x, y))
        grads.append(t)
        if queries:
            block, t = _timed(s, partial(queries[c].dot, feats))
            dots.append(t)
    if not queries:
        return feats, _total(grads)
    return feats, _total(grads) + (_total(dots) + _merges(s, block.to(s.score_dtype))) * m / len(queries[0])


def measure(job: Job) -> Part:
    """Time one batch per checkpoint and side, after a warm-up batch, and read the sizes off them."""
    s = job.session
    c_count, n = len(s.weights), len(s.train)
    idx = torch.arange(min(s.recipe.batch_size, n))
    (x, y), load = _timed(s, lambda: s.to_device(*s.train.batch(idx)))
    stages = []
    if job.forward:
        secs = _total([_timed(s, partial(s.outputs, s.train, idx, c))[1] for c in range(c_count)])
        stages.append(Stage("forward passes", n, c_count, secs * n / len(idx)))
    part = partial(Part, job.label, str(job.method), checkpoints=c_count, train=n, batch=len(idx),
                   score_itemsize=s.score_dtype.itemsize)
    if not job.gradients:
        return part(layers=(), queries=0, query_example_bytes=0, stored=False, stages=tuple(stages))
    queries: list[GradientBatch] = []
    if job.queries is not None:
        queries, query_stages = _query_side(job)
        stages += query_stages
    feats, secs = _train_side(job, x, y, queries)
    stages.append(Stage("train gradients", n, c_count, (load + secs) * n / len(idx)))
    return part(layers=_layers(s, feats), queries=0 if job.queries is None else len(job.queries),
                query_example_bytes=sum(b for _, b in per_example(queries[0])) if queries else 0,
                stored=s.store is not None, stages=tuple(stages))


def _queries(session: Session, test_indices: Sequence[int] | None) -> torch.Tensor:
    if session.test is None:
        raise InfluenceError("data.test: this command needs a test split; add it to the recipe")
    every = range(len(session.test))
    return check_indices(every if test_indices is None else test_indices, len(session.test), "test_indices")


def _mislabel_job(session: Session, method: MislabelMethod) -> Job:
    """Forward passes for the margins and losses, and the self-influence pass ``method`` needs:
    all layers for ``tracin``, the last layer for ``tracin-last``, none otherwise (``combined``: none)."""
    signals = set(COMBINED_SIGNALS) if method is MislabelMethod.COMBINED else {method}
    label = f"mislabel-detect ({method})"
    if MislabelMethod.TRACIN in signals:
        return Job(label, session, Method.TRACIN, forward=True)
    if MislabelMethod.TRACIN_LAST in signals:
        return Job(f"{label}, last layer", last_layer_session(session), Method.TRACIN, forward=True)
    return Job(label, session, Method.TRACIN, forward=True, gradients=False)


def _check_jobs(session: Session) -> list[Job]:
    """The passes the recipe's ``checks:`` rules need, as ``check`` runs them."""
    spec = checks_of(session.recipe)
    rules = rules_of(spec)
    found = []
    if any(Need.MISLABEL in r.needs for r in rules):
        found.append(_mislabel_job(session, spec.mislabel_method or DEFAULT_MISLABEL_METHOD))
    for rule in [r for r in rules if isinstance(r, NoAttackTarget)][:1]:
        queries = _queries(session, watched_candidates(session, rule.spec))
        found.append(Job(f"target-identify ({rule.spec.method})", session, rule.spec.method, queries, predict=True))
    return found


def jobs(session: Session, command: str, method: Method | MislabelMethod | None,
         test_indices: Sequence[int] | None) -> list[Job]:
    """The passes ``command`` runs on ``session`` (``method``: the command's estimator; ``None`` for check)."""
    if command == "check":
        return _check_jobs(session)
    if isinstance(method, MislabelMethod):
        return [_mislabel_job(session, method)]
    assert method is not None
    return [Job(f"{command} ({method})", session, method, _queries(session, test_indices),
                predict=session.is_classifier)]
