"""The passes a command runs (:func:`jobs`) and their cost measured on one batch per checkpoint
(:func:`measure`), with the engine's own per-batch work (:func:`~influence_cli.engine.weighted_batch`).

``ekfac`` and ``arnoldi`` first fit their curvature (:func:`_fit`), measured with the fitting code of
:mod:`influence_cli.curvature` on the one measured batch; the passes after it are measured with a
preconditioner fitted on that batch only (never over all N, never kept in ``session.curvature``)."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, Sequence, TypeVar

import torch

from influence_cli.audits.check import Need, NoAttackTarget, watched_candidates, checks_of, rules_of
from influence_cli.audits.mislabel import COMBINED_SIGNALS, last_layer_session
from influence_cli.curvature.arnoldi import Arnoldi, gauss_newton_product
from influence_cli.curvature.ekfac import EKFAC, KroneckerBlock, fit_ekfac
from influence_cli.engine import checkpoint_terms, curvature_spec, examples_per_pass, query_budget, weighted_batch
from influence_cli.errors import InfluenceError, ParameterError
from influence_cli.gradients.factorized import FactorizedGradients
from influence_cli.gradients.factors import Factors, LayerGrads
from influence_cli.gradients.per_example import GradientBatch, Inputs
from influence_cli.gradients.projection import ProjectedGradients
from influence_cli.methods import CURVATURE_METHODS, DEFAULT_MISLABEL_METHOD, DEFAULT_TARGET_K, Method, MislabelMethod
from influence_cli.plan.results import Fit, LayerPlan, Part, Stage
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


def _clock(session: Session) -> float:
    """Wall seconds (``perf_counter``) once the queued CUDA work is done, so that an interval is the work's."""
    if session.device.type == "cuda":
        torch.cuda.synchronize(session.device)
    return time.perf_counter()


def _timed(session: Session, fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and its wall seconds."""
    start = _clock(session)
    out = fn()
    return out, _clock(session) - start


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


def _terms(job: Job) -> list[int]:
    """The checkpoints the method's gradient passes sum over (``ekfac``, ``arnoldi``: the final one)."""
    return [c for c, _ in checkpoint_terms(job.session, job.method)]


def _query_side(job: Job) -> tuple[list[GradientBatch], list[Stage]]:
    """The first test batch's weighted gradients at every checkpoint term, and the test side's stages."""
    s, queries, terms = job.session, job.queries, _terms(job)
    assert s.test is not None and queries is not None
    m, idx = len(queries), queries[:s.recipe.batch_size]
    stages = []
    if job.predict:
        (labels, _), secs = _timed(s, partial(s.predict, s.test, idx))
        stages.append(Stage("predictions", m, 1, secs * m / len(idx)))
    else:
        labels = s.test.labels[idx]
    (x, y), load = _timed(s, lambda: s.to_device(s.test.batch(idx)[0], labels))
    weighted_batch(s, job.method, terms[0], x, y)  # warm-up
    timed = [_timed(s, partial(weighted_batch, s, job.method, c, x, y)) for c in terms]
    secs = _total([load + t for _, t in timed])  # the engine reads the batch again at every checkpoint
    stages.append(Stage("test gradients", m, len(terms), secs * m / len(idx)))
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
    batch at all checkpoint terms without its reading: Σ_c (t_c + (M / b_q) · t_c(dot)) + (M / b_q) · t(merges)."""
    s, m = job.session, 0 if job.queries is None else len(job.queries)
    terms = _terms(job)
    weighted_batch(s, job.method, terms[0], x, y)  # warm-up: first-call costs are not the steady rate
    grads, dots = [], []
    for j, c in enumerate(terms):  # one checkpoint's gradients at a time, as in the engine
        (feats, *_), t = _timed(s, partial(weighted_batch, s, job.method, c, x, y))
        grads.append(t)
        if queries:
            block, t = _timed(s, partial(queries[j].dot, feats))
            dots.append(t)
    if not queries:
        return feats, _total(grads)
    return feats, _total(grads) + (_total(dots) + _merges(s, block.to(s.score_dtype))) * m / len(queries[0])


#: Times a fit's work on the measured batch is run; each part's least time is taken (the first run
#: pays the first-call costs, like the warm-up batch of the other passes).
FIT_RUNS = 2


class _OneBatch:
    """``batches()`` for a fit on one batch: every call (a pass of the fit) yields ``item`` once and
    records the pass's seconds on it in ``spans``, from the yield to the fit's next request."""

    def __init__(self, session: Session, item: object) -> None:
        self.session, self.item, self.spans = session, item, []

    def __call__(self) -> Iterator[object]:
        start = _clock(self.session)
        yield self.item
        self.spans.append(_clock(self.session) - start)


class _Fitted(dict):  # type: ignore[type-arg]
    """``session.curvature`` while measuring: every key holds the one-batch fit, so the engine's
    :func:`~influence_cli.engine.curvature` neither fits over all N nor keeps anything."""

    def __init__(self, fit: EKFAC | Arnoldi) -> None:
        super().__init__()
        self.fit = fit

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: object) -> EKFAC | Arnoldi:
        return self.fit


def _ekfac_fit(s: Session, x: Inputs, y: torch.Tensor, load: float, terms: int,
               weights: dict[str, torch.Tensor]) -> tuple[Fit, EKFAC]:
    """:func:`~influence_cli.curvature.ekfac.fit_ekfac` on the batch, :data:`FIT_RUNS` times: its passes
    timed one by one (:class:`_OneBatch`); the rest (eigendecompositions of the factors, the damping) is
    per term. Holds p² + q² + q·p numbers per factored layer (Q_A, Q_S, Λ*), D_l per diagonal one."""
    if not s.is_classifier:
        raise ParameterError("method", f"ekfac samples labels from the model's softmax and needs a "
                                       f"classification loss, not {s.recipe.loss!r}")
    spec = curvature_spec(s)
    fit = partial(fit_ekfac, s.model, weights, s.layout, s.loss_fn, damping=spec.damping, seed=spec.seed)
    item = (0, x)  # the batch and its first training index (which seeds its sampled labels)
    runs = []
    for _ in range(FIT_RUNS):
        one = _OneBatch(s, item)
        pre, total = _timed(s, partial(fit, one))
        runs.append((one.spans, total - sum(one.spans)))
    passes = len(runs[0][0])
    spans = [min(r[0][i] for r in runs) for i in range(passes)]  # each pass's steadiest time
    fixed = min(rest for _, rest in runs)
    numbers = sum(b.qa.numel() + b.qs.numel() + b.eigenvalues.numel() if isinstance(b, KroneckerBlock)
                  else b.eigenvalues.numel() for b in pre.blocks)
    return Fit(str(Method.EKFAC), terms, len(s.train), len(y), passes, load + sum(spans) / passes, fixed,
               numbers, s.dtype.itemsize, "Σ_l (p_l² + q_l² + q_l·p_l) + Σ_l′ D_l′"), pre


#: Gram-Schmidt steps timed (then divided) for arnoldi's orthogonalisation.
GRAM_SCHMIDT_STEPS = 8


def _gram_schmidt_step(s: Session, v: torch.Tensor) -> float:
    """Seconds of one step of :func:`~influence_cli.curvature.arnoldi.arnoldi`'s orthogonalisation
    (h_jk = b_jᵀw, w ← w − h_jk b_j) on D numbers, timed over :data:`GRAM_SCHMIDT_STEPS` steps."""
    b = v / v.norm()
    h = v.new_zeros(GRAM_SCHMIDT_STEPS)

    def steps() -> torch.Tensor:
        w = v
        for j in range(GRAM_SCHMIDT_STEPS):
            h[j] = b @ w
            w = w - h[j] * b
        return w

    steps()  # warm-up
    return _timed(s, steps)[1] / GRAM_SCHMIDT_STEPS


def _arnoldi_fit(s: Session, x: Inputs, y: torch.Tensor, load: float, terms: int,
                 weights: dict[str, torch.Tensor]) -> tuple[Fit, Arnoldi]:
    """One Gauss-Newton-vector product (:func:`~influence_cli.curvature.arnoldi.gauss_newton_product`)
    over the batch, timed (the least of :data:`FIT_RUNS`): ``iterations`` passes of it; the Gram-Schmidt
    of iteration k has k + 1 steps, iterations · (iterations + 1) / 2 in all, per term. Holds the Krylov
    basis, D · (iterations + 1) numbers in at least float32. The preconditioner to measure with:
    p = min(eigenpairs, iterations) unit-norm directions (its cost is its shape's, D × p; a fit on one
    batch may keep fewer)."""
    spec = curvature_spec(s)
    iterations = spec.iterations or 2 * spec.eigenpairs
    dtype = torch.promote_types(s.dtype, torch.float32)
    d, gen = s.layout.dim, torch.Generator().manual_seed(spec.seed)
    v = torch.randn(d, generator=gen, dtype=torch.float64).to(s.device, dtype)
    product = gauss_newton_product(s.model, weights, s.layout, s.loss_fn, lambda: iter([(x, y)]), len(y))
    secs = min(_timed(s, partial(product, v))[1] for _ in range(FIT_RUNS))
    fixed = iterations * (iterations + 1) / 2 * _gram_schmidt_step(s, v)
    p = min(spec.eigenpairs, iterations)
    vectors = torch.randn(d, p, generator=gen, dtype=torch.float64).to(s.device, dtype)
    pre = Arnoldi(torch.ones(p, device=s.device, dtype=dtype), vectors / vectors.norm(dim=0), s.layout)
    return Fit(str(Method.ARNOLDI), terms, len(s.train), len(y), iterations, load + secs, fixed,
               d * (iterations + 1), dtype.itemsize, "D·(iterations + 1)"), pre


def _fit(job: Job, x: Inputs, y: torch.Tensor, load: float) -> tuple[Fit, Job]:
    """The curvature fit of ``ekfac``/``arnoldi`` measured on the batch (x, y) (read in ``load``
    seconds), and the job measuring with its one-batch preconditioner."""
    s, terms = job.session, _terms(job)
    if s.recipe.projection is not None:
        raise ParameterError("method", f"{job.method} needs exact gradients; remove the `projection:` section "
                                       "from the recipe")
    weights = s.weights[terms[-1]]  # every term's fit does the same work
    if job.method is Method.ARNOLDI:
        fit, pre = _arnoldi_fit(s, x, y, load, len(terms), weights)
    else:
        fit, pre = _ekfac_fit(s, x, y, load, len(terms), weights)
    measuring = copy.copy(s)
    measuring.curvature = _Fitted(pre)
    return fit, replace(job, session=measuring)


def measure(job: Job) -> Part:
    """Time one batch per checkpoint term and side, after a warm-up batch, and read the sizes off them
    (``ekfac``, ``arnoldi``: after the curvature fit, :func:`_fit`)."""
    s = job.session
    c_count, n, terms = len(s.weights), len(s.train), len(_terms(job))
    idx = torch.arange(min(s.recipe.batch_size, n))
    (x, y), load = _timed(s, lambda: s.to_device(*s.train.batch(idx)))
    stages = []
    if job.forward:
        secs = _total([_timed(s, partial(s.outputs, s.train, idx, c))[1] for c in range(c_count)])
        stages.append(Stage("forward passes", n, c_count, secs * n / len(idx)))
    part = partial(Part, job.label, str(job.method), checkpoints=terms, train=n, batch=len(idx),
                   score_itemsize=s.score_dtype.itemsize)
    if not job.gradients:
        return part(layers=(), queries=0, query_example_bytes=0, stored=False, stages=tuple(stages))
    fit = None
    if job.method in CURVATURE_METHODS:
        fit, job = _fit(job, x, y, load)
        stages.append(Stage("curvature fit", n, terms, fit.seconds, fit.passes))
    queries: list[GradientBatch] = []
    if job.queries is not None:
        queries, query_stages = _query_side(job)
        stages += query_stages
    feats, secs = _train_side(job, x, y, queries)
    example_bytes = sum(b for _, b in per_example(queries[0])) if queries else 0
    m = 0 if job.queries is None else len(job.queries)
    chunk = _chunk(s, m, terms * example_bytes)
    passes = -(-m // chunk) if chunk else 1
    stages.append(Stage("train gradients", n, terms, passes * (load + secs) * n / len(idx), passes))
    return part(layers=_layers(s, feats), queries=m, query_example_bytes=example_bytes,
                stored=s.store is not None, stages=tuple(stages), fit=fit, chunk=chunk)


def _chunk(session: Session, m: int, example_bytes: int) -> int:
    """The engine's split of the test side (:func:`~influence_cli.engine.query_chunk`): 0 when C·M·d fits the
    budget, else ⌊budget / (C·d)⌋ test examples per training pass (at least 1)."""
    chunk = examples_per_pass(query_budget(session), m, example_bytes)
    return 0 if chunk >= m else max(1, chunk)


def _queries(session: Session, test_indices: Sequence[int] | None) -> torch.Tensor:
    if session.test is None:
        raise InfluenceError("data.test: this command needs a test split; add it to the recipe")
    every = range(len(session.test))
    return check_indices(every if test_indices is None else test_indices, len(session.test), "test_indices")


def _mislabel_job(session: Session, method: MislabelMethod) -> Job:
    """Forward passes for the margins and losses, and the self-influence pass ``method`` needs:
    all layers for ``tracin`` and the curvature methods (``ekfac``: gᵀPg after its fit), the last
    layer for ``tracin-last``, none otherwise (``combined``: none)."""
    signals = set(COMBINED_SIGNALS) if method is MislabelMethod.COMBINED else {method}
    label = f"mislabel-detect ({method})"
    curvature = sorted(m.value for m in signals if m.value in {c.value for c in CURVATURE_METHODS})
    if curvature:
        return Job(label, session, Method(curvature[0]), forward=True)
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
