"""``evaluate``: the linear datamodeling score (LDS, Park et al. 2023, TRAK §2.2) of influence methods
on the user's own setup, measured by retraining on random subsets of the training set.

Notation: N training examples, M test examples (default: the first 100), S subsets S_1..S_S of
⌊α·N⌋ training examples drawn uniformly without replacement (seeded), each retrained by the user's
``train(indices, seed)``. τ [M, N] is a method's score matrix (``score(..., keep_matrix=True)``):
τ_ij is the influence of training example j on test example i, positive for proponents (examples
whose gradient step lowers the test loss). L_i(S) is test example i's loss, at its given label, under
the model trained on S (the recipe's model and loss, the session's forward code). Then::

    g_i(S) = Σ_{j∈S} τ_ij                                   predicted effect of training on S, [M, S]
    LDS_i  = Spearman_s( g_i(S_s), −L_i(S_s) )              rank correlation over the S subsets
    LDS    = (1/M) Σ_i LDS_i                                reported with the std of LDS_i over i

A larger g_i(S) predicts a lower loss, hence −L. Spearman uses average ranks for ties (as
``scipy.stats.spearmanr``); LDS_i is 0 when either side is constant over the subsets (no ranking).
Baselines (methods ``loss`` and ``random``): τ_ij = −ℓ(z_j) at the final checkpoint (the same for
every i: "subsets of easy examples help"), and τ_ij ~ N(0, 1) seeded (LDS ≈ 0 ± 1/√S per example).

Every subset is retrained with the same ``seed``, so subsets differ only in their data (the noise
of retraining from different initialisations is not averaged out, as in TRAK's multi-seed LDS).
Subset s depends only on (N, α, seed, s), so raising ``subsets`` later extends the same draws.

Memory: every method's τ is M × N numbers (float64 here), held one method at a time (all of them
with ``keep_scores``); the subset masks are S × N booleans. With ``out``, each subset's M losses are
written to ``out/lds-subsets/subset-<s>.json`` as soon as it is trained (atomically), so an
interrupted run resumes: a rerun with the same settings retrains only the missing subsets, and
other settings (α, seed, test examples, the train function's file, the model, data or loss) are
refused unless ``overwrite`` (which discards the stored subsets).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from influence_cli import distributed
from influence_cli.errors import DataError, InfluenceError, ParameterError, first_line
from influence_cli.files import atomic_write, write_json
from influence_cli.frames import ToPandas
from influence_cli.gradients.per_example import call_model
from influence_cli.loading.checkpoints import Checkpoint, fit_to_model
from influence_cli.loading.examples import Examples
from influence_cli.loading.inputs import content_digest, recipe_inputs
from influence_cli.methods import Method, TestLabels
from influence_cli.progress import ProgressLike, as_progress
from influence_cli.recipe import Recipe
from influence_cli.scoring import score
from influence_cli.selection import check_indices
from influence_cli.session import Session

#: The baselines: τ_ij = −ℓ(z_j) at the final checkpoint, and τ_ij ~ N(0, 1).
BASELINES = ("loss", "random")
#: Every name ``methods`` takes, in the order results are reported.
LDS_METHODS = (*(str(m) for m in Method), *BASELINES)
#: Test examples evaluated when ``test_indices`` is not given: the first this many.
DEFAULT_TEST_EXAMPLES = 100
#: Where the per-subset losses go, inside the output folder.
SUBSETS_FOLDER = "lds-subsets"
LDS_FILES = ("lds.json", "lds.md")

#: ``train(indices, seed) -> nn.Module | state dict``: indices [⌊α·N⌋] int64, sorted.
TrainFn = Callable[[torch.Tensor, int], Any]


# ---------------------------------------------------------------- the score itself


def spearman_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman correlation of each row of ``a`` [M, S] with the same row of ``b`` [M, S], float64 [M]:
    the Pearson correlation of their average ranks (ties share the mean of their ranks, as in
    ``scipy.stats.spearmanr``); 0 for a row where either side is constant."""
    from scipy.stats import rankdata

    ra = torch.from_numpy(rankdata(a.detach().cpu().double().numpy(), axis=-1))
    rb = torch.from_numpy(rankdata(b.detach().cpu().double().numpy(), axis=-1))
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    norm = ra.norm(dim=-1) * rb.norm(dim=-1)
    return torch.where(norm > 0, (ra * rb).sum(-1) / norm.clamp_min(1e-300), torch.zeros_like(norm))


def lds(tau: torch.Tensor, masks: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """LDS_i [M]: Spearman over subsets of g_i(S) = Σ_{j∈S} τ_ij against −L_i(S).

    ``tau`` [M, N] scores, ``masks`` [S, N] bool (row s: the training examples of subset s),
    ``losses`` [S, M] (L_i(S_s)). See the module docstring."""
    if tau.dim() != 2 or masks.shape != (losses.shape[0], tau.shape[1]) or losses.shape[1] != tau.shape[0]:
        raise ParameterError("tau", f"shapes do not match: tau {tuple(tau.shape)}, masks {tuple(masks.shape)}, "
                             f"losses {tuple(losses.shape)} (expected [M, N], [S, N], [S, M])")
    predicted = tau.detach().cpu().double() @ masks.cpu().double().T   # [M, S]
    return spearman_rows(predicted, -losses.T.cpu().double())


def subset_draws(n: int, subsets: int, fraction: float, seed: int) -> list[torch.Tensor]:
    """The S subsets: each ⌊α·N⌋ sorted training indices drawn without replacement from a generator
    seeded with 1000 + ``seed``, in order (subset s is the same whatever S is)."""
    gen = torch.Generator().manual_seed(1000 + seed)
    size = int(fraction * n)
    return [torch.randperm(n, generator=gen)[:size].sort().values for _ in range(subsets)]


# ---------------------------------------------------------------- results


@dataclass
class MethodLDS:
    """One method's LDS: per test example (``None`` when skipped, with the reason)."""

    method: str
    per_test: torch.Tensor | None   # [M] float64
    seconds: float
    skipped: str | None = None

    @property
    def mean(self) -> float | None:
        return None if self.per_test is None else float(self.per_test.mean())

    @property
    def std(self) -> float | None:
        """Standard deviation of LDS_i over the test examples (0 for one example)."""
        if self.per_test is None:
            return None
        return float(self.per_test.std()) if len(self.per_test) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "mean_lds": self.mean, "std_lds": self.std, "seconds": round(self.seconds, 3),
                "skipped": self.skipped, "lds": None if self.per_test is None else self.per_test.tolist()}


@dataclass
class LDSResult(ToPandas, records="methods"):
    """The LDS of each method (``to_pandas()``: one row per method), with the subsets it was measured on."""

    session: Session
    train_function: str
    test_indices: torch.Tensor          # [M]
    masks: torch.Tensor                 # [S, N] bool
    losses: torch.Tensor                # [S, M] float64: L_i(S_s)
    methods: dict[str, MethodLDS]
    fraction: float
    seed: int
    trained: int                        # subsets retrained by this call (the others were read from `out`)
    retrain_seconds: float
    scores: dict[str, torch.Tensor] = field(default_factory=dict)  # τ [M, N] per method, with keep_scores

    @property
    def subsets(self) -> int:
        return int(self.masks.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """The layout written to ``lds.json``."""
        return {
            "recipe": self.session.recipe.to_dict(),
            "checkpoints": [c.to_dict() for c in self.session.checkpoints],
            "train_function": self.train_function,
            "subsets": self.subsets, "fraction": self.fraction, "subset_size": int(self.masks[0].sum()),
            "seed": self.seed, "n_train": int(self.masks.shape[1]), "test_indices": self.test_indices.tolist(),
            "retrain": {"trained": self.trained, "reused": self.subsets - self.trained,
                        "seconds": round(self.retrain_seconds, 3),
                        "mean_test_loss": float(self.losses.mean()),
                        "std_over_subsets": float(self.losses.std(0).mean()) if self.subsets > 1 else 0.0},
            "methods": [m.to_dict() for m in self.methods.values()],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)

    def markdown(self) -> str:
        """``lds.md``: the table and the setting in a few lines."""
        d = self.to_dict()
        lines = ["# Linear datamodeling score", "",
                 f"S = {d['subsets']} subsets of α·N = {d['subset_size']} of N = {d['n_train']} training examples "
                 f"(α = {d['fraction']}, seed {d['seed']}), retrained by `{d['train_function']}`; "
                 f"M = {len(d['test_indices'])} test examples. Std error of a mean LDS ≈ std/√M.", "",
                 "| method | mean LDS | std over test examples | seconds |", "|---|---|---|---|"]
        for m in d["methods"]:
            if m["skipped"] is None:
                lines.append(f"| {m['method']} | {m['mean_lds']:.3f} | {m['std_lds']:.3f} | {m['seconds']:.1f} |")
            else:
                lines.append(f"| {m['method']} | skipped: {m['skipped'].replace('|', '/')} | | {m['seconds']:.1f} |")
        return "\n".join(lines) + "\n"

    def write(self, out: Path | str) -> list[Path]:
        """Write ``out/lds.json`` and ``out/lds.md`` (atomically); returns their paths."""
        out = Path(out)
        return [write_json(out / "lds.json", self.to_dict()), atomic_write(out / "lds.md", self.markdown())]


# ---------------------------------------------------------------- retraining


@torch.no_grad()
def example_losses(session: Session, weights: dict[str, torch.Tensor], examples: Examples,
                   indices: torch.Tensor) -> torch.Tensor:
    """ℓ(f_θ(x), y) of ``examples[indices]`` at their given labels with ``weights`` swapped into the
    session's model (its forward code and loss), float64 [len(indices)] on the CPU."""
    parts = []
    for _, x, y in examples.batches(session.recipe.batch_size, indices):
        x, y = session.to_device(x, y)
        parts.append(session.loss_fn(call_model(session.model, weights, x), y).double().cpu())
    return torch.cat(parts)


def trained_weights(session: Session, trained: Any, where: str) -> dict[str, torch.Tensor]:
    """What ``train`` returned (a model or a state dict) fitted to the recipe's model like a checkpoint
    (:func:`~influence_cli.loading.checkpoints.fit_to_model`), on the session's device and dtype."""
    if isinstance(trained, nn.Module):
        state = trained.state_dict()
    elif isinstance(trained, Mapping) and all(isinstance(v, torch.Tensor) for v in trained.values()):
        state = dict(trained)
    else:
        raise InfluenceError(f"{where}: returned a {type(trained).__name__}; return the trained nn.Module or its "
                             "state dict")
    if state and all(k.startswith("module.") for k in state):  # DataParallel / DDP
        state = {k.removeprefix("module."): v for k, v in state.items()}
    fitted = fit_to_model(session.model, Checkpoint(Path(where), 0.0, state, ""), where)
    return {k: (v.detach().to(session.device, session.dtype) if v.is_floating_point() else v.to(session.device))
            for k, v in fitted.items()}


def _function_name(train: TrainFn) -> str:
    """``file.py:qualname`` when the function comes from a file, else its qualified name."""
    name = getattr(train, "__qualname__", None) or getattr(train, "__name__", None) or repr(train)
    try:
        return f"{Path(inspect.getfile(train)).name}:{name}"
    except (TypeError, OSError):
        return name


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _settings(session: Session, train: TrainFn, fraction: float, seed: int, test_indices: torch.Tensor) -> dict:
    """What the stored subset losses depend on (not S: more subsets extend the same draws)."""
    recipe = session.recipe.to_dict()
    try:
        code = _sha256(Path(inspect.getfile(train)).read_bytes())
    except (TypeError, OSError):
        code = None
    items = [i for i in recipe_inputs(session.recipe) if i.what not in ("the recipe", "a checkpoint", "the baseline")]
    return {"fraction": fraction, "seed": seed, "n_train": len(session.train), "test_indices": test_indices.tolist(),
            "train_function": {"name": _function_name(train), "module": getattr(train, "__module__", None),
                               "file_sha256": code},
            "recipe": {k: _sha256(json.dumps(recipe.get(k), sort_keys=True).encode())
                       for k in ("model", "data", "loss", "dtype")},
            "files": {i.what: content_digest(i) for i in items}}


class SubsetStore:
    """``out/lds-subsets/``: ``settings.json`` and one ``subset-<s>.json`` ({"subset", "losses"}) per
    trained subset, each written atomically."""

    def __init__(self, folder: Path, settings: dict, m: int, *, overwrite: bool) -> None:
        self.folder, self.m = folder, m
        path = folder / "settings.json"
        if path.is_file():
            try:
                before = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise DataError(f"{path}: cannot read: {exc}; delete {folder} to start over") from None
            if before != settings:
                if not overwrite:
                    keys = sorted(k for k in {*before, *settings} if before.get(k) != settings.get(k))
                    raise InfluenceError(f"{folder}: holds subsets retrained with other settings (different: "
                                         f"{', '.join(keys)}); give another folder, or --overwrite to discard them")
                self.clear()
        elif self.done() and not overwrite:
            raise InfluenceError(f"{folder}: holds subset losses without settings.json; give another folder, "
                                 "or --overwrite to discard them")
        else:
            self.clear()
        write_json(path, settings)

    def _path(self, s: int) -> Path:
        return self.folder / f"subset-{s:05d}.json"

    def done(self) -> list[int]:
        return sorted(int(p.stem[7:]) for p in self.folder.glob("subset-*.json") if p.stem[7:].isdigit())

    def clear(self) -> None:
        for p in self.folder.glob("subset-*.json"):
            p.unlink()

    def load(self, s: int) -> torch.Tensor | None:
        path = self._path(s)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            losses = torch.tensor(data["losses"], dtype=torch.float64)
            ok = data["subset"] == s and losses.shape == (self.m,)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: cannot read: {exc}; delete it to retrain that subset") from None
        if not ok:
            raise DataError(f"{path}: not the losses of subset {s} on {self.m} test examples; delete it to retrain "
                            "that subset")
        return losses

    def save(self, s: int, losses: torch.Tensor) -> None:
        write_json(self._path(s), {"subset": s, "losses": losses.tolist()})


def retrain(session: Session, train: TrainFn, draws: Sequence[torch.Tensor], test_indices: torch.Tensor,
            seed: int, store: SubsetStore | None = None, progress: ProgressLike | None = None
            ) -> tuple[torch.Tensor, int]:
    """(losses [S, M] float64, subsets trained now): L_i(S_s) for each draw, read from ``store`` when it
    holds them, else from the model ``train(indices, seed)`` returns (then stored)."""
    assert session.test is not None
    name, progress = _function_name(train), as_progress(progress)
    losses: list[torch.Tensor | None] = [store.load(s) if store is not None else None for s in range(len(draws))]
    todo = [s for s, loss in enumerate(losses) if loss is None]
    with progress.task("retrained subsets", total=len(todo)) if todo else nullcontext(lambda n: None) as advance:
        for s in todo:
            where = f"train function {name!r}, subset {s}"
            try:
                trained = train(draws[s].clone(), seed)
            except InfluenceError as exc:
                raise InfluenceError(f"{where}: {exc.message}") from exc
            except Exception as exc:  # the user's code: one line naming it and the subset
                raise InfluenceError(f"{where}: {type(exc).__name__}: {first_line(exc)}") from exc
            loss = example_losses(session, trained_weights(session, trained, where), session.test, test_indices)
            bad = (~torch.isfinite(loss)).nonzero()
            if len(bad):
                raise InfluenceError(f"{where}: the trained model's loss on test example "
                                     f"{int(test_indices[int(bad[0])])} is {float(loss[int(bad[0])])}")
            if store is not None:
                store.save(s, loss)
            losses[s] = loss
            advance(1)
    return torch.stack([loss for loss in losses if loss is not None]), len(todo)


# ---------------------------------------------------------------- the entry point


def _check_methods(methods: Sequence[str] | str) -> list[str]:
    names = [methods] if isinstance(methods, str) else list(methods)
    names = list(dict.fromkeys(str(m).strip() for m in names))
    if not names:
        raise ParameterError("methods", f"no method given (choose from {', '.join(LDS_METHODS)})")
    for m in names:
        if m not in LDS_METHODS:
            raise ParameterError("methods", f"unknown choice {m!r} (choose from {', '.join(LDS_METHODS)})")
    return names


def method_scores(session: Session, method: str, test_indices: torch.Tensor, seed: int,
                  progress: ProgressLike | None = None) -> torch.Tensor:
    """τ [M, N] of ``method`` (an estimator, or a baseline of :data:`BASELINES`) at the given test labels."""
    n = len(session.train)
    if method == "loss":
        train_loss = example_losses(session, session.weights[-1], session.train, torch.arange(n))
        return -train_loss.expand(len(test_indices), -1)
    if method == "random":
        return torch.randn(len(test_indices), n, generator=torch.Generator().manual_seed(seed)).double()
    result = score(session, method=method, test_indices=test_indices.tolist(), test_labels=TestLabels.GIVEN, k=1,
                   keep_matrix=True, progress=progress)
    return result.matrix.detach().cpu().double()


def evaluate(recipe_or_session: Recipe | Session, train: TrainFn, *, methods: Sequence[str] | str = LDS_METHODS,
             subsets: int = 50, fraction: float = 0.5, test_indices: Sequence[int] | None = None, seed: int = 0,
             out: Path | str | None = None, overwrite: bool = False, keep_scores: bool = False,
             progress: ProgressLike | None = None) -> LDSResult:
    """Measure the LDS of each of ``methods`` by retraining on ``subsets`` random subsets (see the module
    docstring for the formula).

    ``train(indices, seed)`` gets the sorted int64 training indices [⌊α·N⌋] of a subset and ``seed``
    (the same for every subset) and returns the trained ``nn.Module`` or its state dict; it is loaded
    into the recipe's model like a checkpoint. ``test_indices`` default to the first 100 test examples.
    ``out``: a folder where each subset's losses are stored as soon as they are known, so that a rerun
    resumes (see the module docstring; the reports themselves: :meth:`LDSResult.write`). A method
    that fails (e.g. ``ekfac`` without a classification loss) is reported as skipped with the reason.
    ``keep_scores`` keeps every τ [M, N] in :attr:`LDSResult.scores`.
    """
    names = _check_methods(methods)
    if distributed.world_size() > 1:  # every rank would retrain every subset
        raise InfluenceError("evaluate retrains the model itself and runs in one process; start it without torchrun")
    if not callable(train):
        raise ParameterError("train", f"must be a callable train(indices, seed), got a {type(train).__name__}")
    if isinstance(subsets, bool) or not isinstance(subsets, int) or subsets < 3:
        raise ParameterError("subsets", f"must be an integer of at least 3 (a rank correlation needs them), "
                             f"got {subsets!r}")
    if not (isinstance(fraction, (int, float)) and math.isfinite(fraction) and 0 < fraction < 1):
        raise ParameterError("fraction", f"must lie strictly between 0 and 1, got {fraction!r}")
    progress = as_progress(progress)
    session = Session.of(recipe_or_session, need_test=True)
    if session.test is None:
        raise InfluenceError("data.test: evaluate needs a test split; add it to the recipe")
    if not session.test.labeled:
        raise InfluenceError(f"data.test: evaluate takes each test loss at its given label, but "
                             f"{session.test.name} has no labels")
    n = len(session.train)
    if int(fraction * n) < 1 or int(fraction * n) >= n:
        raise ParameterError("fraction", f"{fraction} of {n} training examples is {int(fraction * n)}; "
                             "a subset needs at least 1 and fewer than all")
    idx = check_indices(range(min(DEFAULT_TEST_EXAMPLES, len(session.test))) if test_indices is None
                        else test_indices, len(session.test), "test_indices")
    draws = subset_draws(n, subsets, fraction, seed)
    store = None
    if out is not None:
        store = SubsetStore(Path(out) / SUBSETS_FOLDER, _settings(session, train, fraction, seed, idx), len(idx),
                            overwrite=overwrite)
    t0 = time.perf_counter()
    losses, trained = retrain(session, train, draws, idx, seed, store, progress)
    retrain_seconds = time.perf_counter() - t0
    masks = torch.zeros(subsets, n, dtype=torch.bool)
    for s, d in enumerate(draws):
        masks[s, d] = True
    results: dict[str, MethodLDS] = {}
    kept: dict[str, torch.Tensor] = {}
    for name in sorted(names, key=LDS_METHODS.index):
        t = time.perf_counter()
        try:
            tau = method_scores(session, name, idx, seed, progress)
        except InfluenceError as exc:
            results[name] = MethodLDS(name, None, time.perf_counter() - t, exc.message)
            continue
        except Exception as exc:  # noqa: BLE001 (reported in the table, never silently dropped)
            results[name] = MethodLDS(name, None, time.perf_counter() - t, f"{type(exc).__name__}: {first_line(exc)}")
            continue
        seconds = time.perf_counter() - t
        results[name] = MethodLDS(name, lds(tau, masks, losses), seconds)
        if keep_scores:
            kept[name] = tau
    return LDSResult(session, _function_name(train), idx, masks, losses, results, float(fraction), seed, trained,
                     retrain_seconds, kept)
