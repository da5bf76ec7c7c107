"""What :func:`~influence_cli.plan.plan` returns: per layer, per pass and in total, with the memory
formulas of :mod:`influence_cli.plan` as properties (so a changed part recomputes its totals)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import yaml

GIB = 2**30


@dataclass(frozen=True)
class LayerPlan:
    """One selected layer: D_l parameters, how its per-example gradient is computed (``path``; then
    ``projection``: ``TensorSketch``, ``CountSketch`` or ``exact``, ``None`` without one) and what one
    example holds (``numbers``, ``bytes``)."""

    name: str
    parameters: int
    path: str
    projection: str | None
    numbers: int
    bytes: int


@dataclass(frozen=True)
class Stage:
    """``passes`` passes of the run over ``examples`` × ``checkpoints``, estimated to take ``seconds``."""

    name: str
    examples: int
    checkpoints: int
    seconds: float
    passes: int = 1


@dataclass(frozen=True)
class Fit:
    """The curvature fit of ``ekfac`` or ``arnoldi``: ``passes`` passes over the N training examples
    at each of the C′ checkpoint terms, measured on one batch of b, and the ``numbers`` it holds per
    term (``memory``: their formula), each of ``itemsize`` bytes."""

    method: str
    terms: int             # C′ (the final checkpoint only: 1)
    train: int             # N
    batch: int             # b
    passes: int            # ekfac: 2; arnoldi: its iterations
    batch_seconds: float   # one batch in one pass, its reading included (ekfac: the mean of its two passes)
    fixed_seconds: float   # per term, outside the passes (ekfac: eigendecompositions; arnoldi: Gram-Schmidt)
    numbers: int           # held per term
    itemsize: int          # s (arnoldi: at least float32's 4)
    memory: str            # the formula of ``numbers``

    @property
    def seconds(self) -> float:
        """C′ · ((N / b) · passes · t_batch + t_fixed)."""
        return self.terms * (self.train / self.batch * self.passes * self.batch_seconds + self.fixed_seconds)

    @property
    def bytes(self) -> int:
        """C′ · numbers · s."""
        return self.terms * self.numbers * self.itemsize

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": self.seconds, "bytes": self.bytes}


@dataclass(frozen=True)
class Part:
    """What one library pass costs (``score``'s; mislabel-detect's last-layer pass; ...)."""

    label: str
    method: str
    layers: tuple[LayerPlan, ...]    # empty: forward passes only
    checkpoints: int                 # C
    queries: int                     # M
    train: int                       # N
    batch: int                       # B (at most N)
    query_example_bytes: int         # d of a test example (differs from d only with padded text)
    score_itemsize: int              # s′
    stored: bool                     # the training gradients go to the store (cache_dir)
    stages: tuple[Stage, ...]
    fit: Fit | None = None           # ekfac, arnoldi: the curvature fit (its time is the stage "curvature fit")
    chunk: int = 0                   # test examples per training pass when C·M·d exceeds the budget (0: all M)

    @property
    def example_bytes(self) -> int:
        """d = Σ_l d_l."""
        return sum(layer.bytes for layer in self.layers)

    @property
    def held_queries(self) -> int:
        """The test examples held at once: M, or the chunk when the test side is split."""
        return min(self.queries, self.chunk) if self.chunk else self.queries

    @property
    def query_bytes(self) -> int:
        """C·M·d (M: :attr:`held_queries`)."""
        return self.checkpoints * self.held_queries * self.query_example_bytes

    @property
    def batch_bytes(self) -> int:
        """B·d + M·B·s′."""
        return self.batch * self.example_bytes + self.held_queries * self.batch * self.score_itemsize

    @property
    def fit_bytes(self) -> int:
        """The curvature fit's C′ · numbers · s (0 without one): held through the whole pass."""
        return 0 if self.fit is None else self.fit.bytes

    @property
    def memory_bytes(self) -> int:
        """fit + query + batch: what the pass holds besides the weights."""
        return self.fit_bytes + self.query_bytes + self.batch_bytes

    @property
    def store_bytes(self) -> int:
        """C·N·d with a store, else 0."""
        return self.checkpoints * self.train * self.example_bytes if self.stored else 0

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        totals = ("example_bytes", "query_bytes", "batch_bytes", "fit_bytes", "store_bytes", "seconds")
        return {**asdict(self), **{k: getattr(self, k) for k in totals},
                "fit": None if self.fit is None else self.fit.to_dict()}


@dataclass(frozen=True)
class Suggestion:
    """Recipe ``settings`` that cut the cost, and the cost measured with them."""

    settings: dict[str, Any]     # {"layers": [...]} or {"projection": {"dim": K}}
    seconds: float
    memory_bytes: int
    store_bytes: int
    over_budget: tuple[str, ...]  # what still exceeds the budget (see Plan.over_budget)

    @property
    def fits(self) -> bool:
        return not self.over_budget

    @property
    def yaml(self) -> str:
        """The settings as recipe YAML to paste (block style: one short line per entry)."""
        return yaml.safe_dump(self.settings, sort_keys=False)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fits": self.fits, "yaml": self.yaml}


@dataclass(frozen=True)
class Plan:
    """The estimated cost of ``command`` on a recipe (:mod:`influence_cli.plan`: the formulas)."""

    command: str
    checkpoints: int
    batch_size: int
    device: str
    dtype: str
    weights_bytes: int                # C·P·s
    parts: tuple[Part, ...]
    available_bytes: int | None       # free memory on the device now
    load_seconds: float | None        # loading the recipe (None: a session was given)
    budget_seconds: float | None = None
    budget_bytes: float | None = None
    suggestions: tuple[Suggestion, ...] = ()

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.parts)

    @property
    def memory_bytes(self) -> int:
        """weights + the largest fit + query + batch of the passes (they run one after another)."""
        return self.weights_bytes + max((p.memory_bytes for p in self.parts), default=0)

    @property
    def store_bytes(self) -> int:
        return sum(p.store_bytes for p in self.parts)

    @property
    def over_budget(self) -> list[str]:
        """What exceeds the budget: ``time``, ``memory`` (in memory), ``store`` (on disk)."""
        limits = (("time", self.seconds, self.budget_seconds), ("memory", self.memory_bytes, self.budget_bytes),
                  ("store", self.store_bytes, self.budget_bytes))
        return [name for name, value, limit in limits if limit is not None and value > limit]

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain JSON data (``influence-cli plan --format json``)."""
        head = ("command", "checkpoints", "batch_size", "device", "dtype", "load_seconds", "seconds",
                "weights_bytes", "memory_bytes", "available_bytes", "store_bytes", "budget_seconds", "budget_bytes",
                "over_budget")
        return {**{k: getattr(self, k) for k in head}, "parts": [p.to_dict() for p in self.parts],
                "suggestions": [s.to_dict() for s in self.suggestions]}
