"""The built-in demo: a real digits run with planted label noise and a backdoor, audited like a user's recipe.

:func:`make_digits_run` takes scikit-learn's bundled digits (1,797 8×8 images, no download),
flips a fraction of the training labels with a fixed seed, plants a pixel-trigger backdoor
(:func:`plant_backdoor`: a 3×3 checkerboard stamped on a few dozen training images of a source
class s, relabelled to a class t), trains a small model with SGD while saving checkpoints *with
their learning rates*, appends a triggered test image of class s (the attack's target) to the
test split, and writes data files plus a ``recipe.yaml`` into a folder. :func:`run_demo` then
audits that recipe through the public library paths
(:func:`~influence_cli.audits.mislabel.mislabel_detect`, :func:`~influence_cli.scoring.score`
and :func:`~influence_cli.audits.target.target_identify`) and reports how many planted flips,
and whether the target and its poison, were found.

The models live here (``influence_cli.demo:build_digits_cnn``) so that the written recipe works
from any folder.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import nn

from influence_cli.errors import InfluenceError
from influence_cli.progress import NoProgress, Progress
from influence_cli.files import atomic_write, write_json

Noise = Literal["uniform", "pairs"]
Arch = Literal["cnn", "mlp"]

#: Class pairs swapped by ``noise="pairs"`` (look-alike digits): 1↔7, 3↔8, 4↔9, 2↔5, 0↔6.
DIGIT_PAIRS = ((1, 7), (3, 8), (4, 9), (2, 5), (0, 6))


def build_digits_cnn(num_classes: int = 10, channels: int = 16) -> nn.Module:
    """Conv(1→c,3)·ReLU·Conv(c→2c,3)·ReLU·AvgPool(2)·Linear(2c·16→classes) on 1×8×8 images."""
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(2 * channels * 16, num_classes),
    )


def build_digits_mlp(num_classes: int = 10, hidden: int = 128) -> nn.Module:
    """Flatten·Linear(64→h)·ReLU·Linear(h→h)·ReLU·Linear(h→classes) on 1×8×8 images."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


FACTORIES = {"cnn": "influence_cli.demo:build_digits_cnn", "mlp": "influence_cli.demo:build_digits_mlp"}


@dataclass(frozen=True)
class DigitsData:
    """Digits split into train/test; ``labels`` are the (partly flipped) training labels."""

    train_x: torch.Tensor       # [N, 1, 8, 8] in [0, 1]
    labels: torch.Tensor        # [N] given labels, some flipped
    clean_labels: torch.Tensor  # [N] the original labels
    test_x: torch.Tensor
    test_y: torch.Tensor
    poison: torch.Tensor = torch.empty(0, dtype=torch.long)  # [P] backdoor training indices (relabelled)

    @property
    def flipped(self) -> torch.Tensor:
        """Indices of the training examples whose label was flipped by the label noise (the backdoor
        poison, also mislabelled, is kept apart in ``poison``)."""
        wrong = self.labels != self.clean_labels
        wrong[self.poison] = False
        return wrong.nonzero().flatten()


#: The backdoor trigger: a 3×3 checkerboard stamped in the bottom-right corner (pixels in [0, 1]).
TRIGGER = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])


def stamp_trigger(images: torch.Tensor) -> torch.Tensor:
    """A copy of ``images`` [B, 1, 8, 8] with :data:`TRIGGER` on pixels [5:8, 5:8]."""
    out = images.clone()
    out[:, 0, 5:8, 5:8] = TRIGGER
    return out


@dataclass(frozen=True)
class Backdoor:
    """A planted backdoor: ``n_poison`` training images of class ``source`` stamped and relabelled ``target``."""

    n_poison: int = 40
    source: int = 2
    target: int = 7


def plant_backdoor(data: DigitsData, backdoor: Backdoor, *, seed: int) -> DigitsData:
    """Stamp the trigger on ``backdoor.n_poison`` training images whose true and given label are
    ``source`` (seeded choice, label-noise flips left alone) and relabel them ``target``."""
    pool = ((data.clean_labels == backdoor.source) & (data.labels == backdoor.source)).nonzero().flatten()
    if backdoor.n_poison > len(pool) // 2:
        raise InfluenceError(f"--n-poison: at most {len(pool) // 2} (half the clean training images of digit "
                             f"{backdoor.source}), got {backdoor.n_poison}")
    gen = torch.Generator().manual_seed(seed + 1)
    poison = pool[torch.randperm(len(pool), generator=gen)[:backdoor.n_poison]].sort().values
    train_x, labels = data.train_x.clone(), data.labels.clone()
    train_x[poison] = stamp_trigger(train_x[poison])
    labels[poison] = backdoor.target
    return replace(data, train_x=train_x, labels=labels, poison=poison)


def digits_data(*, seed: int = 0, noise: Noise = "pairs", noise_rate: float = 0.1, n_train: int = 1500,
                n_test: int = 297) -> DigitsData:
    """Split the 1,797 digits (seeded), then flip ``noise_rate`` of the training labels.

    ``uniform``: a flipped label becomes one of the 9 other classes at random; ``pairs``: it
    becomes its partner in :data:`DIGIT_PAIRS`.
    """
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=gen)
    x = torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8)[order] / 16.0
    y = torch.as_tensor(y, dtype=torch.long)[order]
    tr, te = order.new_tensor(range(n_train)), order.new_tensor(range(n_train, min(n_train + n_test, len(y))))
    clean = y[tr]
    labels = clean.clone()
    flip = torch.randperm(n_train, generator=gen)[: round(noise_rate * n_train)]
    if noise == "uniform":
        shift = torch.randint(1, 10, (len(flip),), generator=gen)
        labels[flip] = (clean[flip] + shift) % 10
    else:
        partner = torch.arange(10)
        for a, b in DIGIT_PAIRS:
            partner[a], partner[b] = b, a
        labels[flip] = partner[clean[flip]]
    return DigitsData(x[tr], labels, clean, x[te], y[te])


@dataclass(frozen=True)
class TrainSchedule:
    """SGD with momentum; a checkpoint every ``every`` epochs (η_c is the rate of the epochs it closes)."""

    epochs: int = 30
    every: int = 5
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 32
    decay_at: int = 20        # the learning rate is divided by 10 after this epoch

    @classmethod
    def for_epochs(cls, epochs: int) -> "TrainSchedule":
        """The default schedule stretched to ``epochs``: 6 checkpoints, decay after 2/3 of the epochs."""
        return cls(epochs=epochs, every=max(1, epochs // 6), decay_at=2 * epochs // 3)


def train_model(arch: Arch, x: torch.Tensor, y: torch.Tensor, *, seed: int, schedule: TrainSchedule,
                on_checkpoint: Any = None) -> nn.Module:
    """Train ``arch`` on (x, y); call ``on_checkpoint(epoch, model, lr)`` every ``schedule.every`` epochs.
    Runs on one CPU thread (faster for a model this small than several threads contending)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(arch, x, y, seed=seed, schedule=schedule, on_checkpoint=on_checkpoint)
    finally:
        torch.set_num_threads(threads)


def _train(arch: Arch, x: torch.Tensor, y: torch.Tensor, *, seed: int, schedule: TrainSchedule,
           on_checkpoint: Any) -> nn.Module:
    torch.manual_seed(seed)
    model = build_digits_cnn() if arch == "cnn" else build_digits_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=schedule.lr, momentum=schedule.momentum)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(1, schedule.epochs + 1):
        lr = schedule.lr * (0.1 if epoch > schedule.decay_at else 1.0)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        for batch in torch.randperm(len(y), generator=gen).split(schedule.batch_size):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
        if on_checkpoint is not None and epoch % schedule.every == 0:
            on_checkpoint(epoch, model.eval(), lr)
    return model.eval()


def make_digits_run(out: Path, *, seed: int = 0, arch: Arch = "cnn", noise: Noise = "pairs",
                    noise_rate: float = 0.1, n_train: int = 1500, schedule: TrainSchedule = TrainSchedule(),
                    backdoor: Backdoor | None = None) -> tuple[Path, DigitsData]:
    """Write a complete audited run into ``out``: ``data/{train,test}.pt``, ``checkpoints/epochN.pt``
    (``model_state_dict`` + ``learning_rate``), ``planted_noise.json`` and ``recipe.yaml``.

    With a ``backdoor`` (:func:`plant_backdoor`), the test split gets one more example at its end:
    the first test image of class ``source`` that, stamped with the trigger, the trained model
    predicts as ``target`` (else the first one), labelled ``source``; its index is
    ``len(data.test_y) - 1``. Returns the recipe path and the data (with the planted flips)."""
    out = Path(out)
    data = digits_data(seed=seed, noise=noise, noise_rate=noise_rate, n_train=n_train)
    if backdoor is not None and backdoor.n_poison > 0:
        data = plant_backdoor(data, backdoor, seed=seed)
    (out / "data").mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save({"inputs": data.train_x, "labels": data.labels}, out / "data" / "train.pt")

    def save(epoch: int, model: nn.Module, lr: float) -> None:
        torch.save({"model_state_dict": model.state_dict(), "learning_rate": lr, "epoch": epoch},
                   out / "checkpoints" / f"epoch{epoch}.pt")

    model = train_model(arch, data.train_x, data.labels, seed=seed, schedule=schedule, on_checkpoint=save)
    if len(data.poison):
        assert backdoor is not None
        pool = (data.test_y == backdoor.source).nonzero().flatten()
        with torch.no_grad():
            hits = (model(stamp_trigger(data.test_x[pool])).argmax(1) == backdoor.target).nonzero().flatten()
        pick = pool[int(hits[0]) if len(hits) else 0]
        data = replace(data, test_x=torch.cat([data.test_x, stamp_trigger(data.test_x[pick:pick + 1])]),
                       test_y=torch.cat([data.test_y, data.test_y[pick:pick + 1]]))
    torch.save({"inputs": data.test_x, "labels": data.test_y}, out / "data" / "test.pt")
    write_json(out / "planted_noise.json", {
        "noise": noise, "rate": noise_rate, "seed": seed,
        "flipped": [{"train_index": int(i), "given_label": int(data.labels[i]),
                     "true_label": int(data.clean_labels[i])} for i in data.flipped],
        "backdoor": None if not len(data.poison) else {
            "source": backdoor.source, "target": backdoor.target, "trigger": "3x3 checkerboard, pixels [5:8, 5:8]",
            "poison_train_indices": data.poison.tolist(), "target_test_index": len(data.test_y) - 1}})
    recipe = {
        "model": {"factory": FACTORIES[arch]},
        "checkpoints": {"glob": "checkpoints/epoch*.pt", "learning_rate": "auto"},
        "data": {"train": {"format": "tensors", "path": "data/train.pt"},
                 "test": {"format": "tensors", "path": "data/test.pt"}},
        "loss": "cross_entropy",
        "batch_size": 256,
        "device": "cpu",
        "output": "audit",
    }
    attack = (f"# plus a backdoor: {len(data.poison)} images of digit {backdoor.source} with a corner trigger "
              f"relabelled {backdoor.target}\n" if backdoor is not None and len(data.poison) else "")
    header = ("# Written by `influence-cli demo`: a digits CNN trained with SGD on labels of which\n"
              f"# {noise_rate:.0%} were flipped ({noise}, seed {seed}); copy it as a template.\n" + attack)
    path = atomic_write(out / "recipe.yaml", header + yaml.safe_dump(recipe, sort_keys=False))
    return path, data


def recall_at(ranking: list[int], positives: set[int], fraction: float, n: int) -> float:
    """Share of ``positives`` among the first ``round(fraction·n)`` entries of ``ranking``."""
    k = round(fraction * n)
    return len(positives.intersection(ranking[:k])) / max(len(positives), 1)


@dataclass
class DemoResult:
    """What the demo found."""

    recipe: Path
    audit: Path                         # where the reports went (the recipe's ``output``)
    n_train: int
    flipped: list[int]                  # label-noise flips (the poison excluded)
    recall: dict[float, float]          # fraction inspected → recall of the planted flips
    flagged: int
    flagged_flipped: int
    mislabels: Any                      # MislabelResult
    influence: Any                      # InfluenceResult (one test example)
    written: list[Path]                 # the report files
    poison: list[int]                   # backdoor training indices (mislabelled too)
    poison_in_top: int                  # poison among the first 10% of the mislabel ranking
    target: int | None                  # the triggered test example (None without a backdoor)
    targets: Any                        # TargetResult (None without a backdoor)

    @property
    def target_row(self) -> dict[str, Any] | None:
        """The target's entry of ``targets.json`` (rank, flagged, suspects)."""
        if self.targets is None:
            return None
        return next(t for t in self.targets.to_dict()["test"] if t["test_index"] == self.target)


def run_demo(out: Path, *, seed: int = 0, n_train: int = 1500, schedule: TrainSchedule = TrainSchedule(),
             backdoor: Backdoor | None = Backdoor(), test_index: int = 0, progress: Progress | None = None
             ) -> DemoResult:
    """Build the digits run in ``out``, then run ``mislabel-detect``, ``score`` and (with a backdoor)
    ``target-identify`` on its recipe and write their reports, plus ``ground_truth.json``
    (``flipped_train_indices``: the label-noise flips; ``target_test_indices``: the triggered test
    example; ``poison_train_indices``: the backdoor poison), to ``out/audit`` (the recipe's ``output``)."""
    from influence_cli.audits.mislabel import mislabel_detect
    from influence_cli.audits.target import target_identify
    from influence_cli.recipe import load_recipe
    from influence_cli.reports.html import write_ground_truth
    from influence_cli.reports.influence import write_influence_reports
    from influence_cli.reports.mislabel import write_mislabel_reports
    from influence_cli.reports.target import write_target_reports
    from influence_cli.scoring import score
    from influence_cli.session import Session

    progress = progress or NoProgress()
    with progress.task("train the digits CNN", total=1) as advance:
        path, data = make_digits_run(Path(out), seed=seed, n_train=n_train, schedule=schedule, backdoor=backdoor)
        advance(1)
    recipe = load_recipe(path)
    session = Session.from_recipe(recipe, need_test=True)
    mislabels = mislabel_detect(session, progress=progress)
    # GAS-L, not TracIn: TracIn's proponents are dominated by high-loss (often mislabelled) examples;
    # on this run 43% of TracIn's top-10 proponents of test examples 0-49 are flipped labels, 0.2% of GAS-L's.
    influence = score(session, method="gas-l", test_indices=[test_index], k=5, progress=progress)
    poison = data.poison.tolist()
    target = len(data.test_y) - 1 if poison else None
    targets = target_identify(session, progress=progress) if poison else None
    audit = recipe.resolve(recipe.output)
    written = [*write_influence_reports(influence, audit),
               *(write_target_reports(targets, audit) if targets is not None else []),
               *write_mislabel_reports(mislabels, audit),
               write_ground_truth(audit, data.flipped.tolist(), [] if target is None else [target],
                                  poison_train_indices=poison)]
    written = list(dict.fromkeys(written))
    ranking = [int(i) for i in mislabels.order]
    flipped = {int(i) for i in data.flipped}
    flagged = set(int(i) for i in mislabels.flagged_indices)
    n = len(data.labels)
    return DemoResult(path, audit, n, sorted(flipped),
                      {f: recall_at(ranking, flipped, f, n) for f in (0.05, 0.10, 0.20)},
                      len(flagged), len(flagged & flipped), mislabels, influence, written,
                      poison, len(set(poison).intersection(ranking[:round(0.1 * n)])), target, targets)
