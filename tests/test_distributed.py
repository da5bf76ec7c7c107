"""Sharding across ranks (``torchrun``): shards, merging, results identical to one process, failures.

The multi-process tests start 2 CPU processes with gloo on loopback (OMP_NUM_THREADS=1) with
torchrun's environment set by hand (no launcher process, so they start faster), each running
several commands in one launch; a slow-marked test goes through ``torchrun`` exactly as documented.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from influence_cli import distributed, engine, load_recipe
from influence_cli.cli import app
from influence_cli.distributed import shard
from influence_cli.engine import TrainPassResult
from influence_cli.errors import DistributedError
from influence_cli.methods import Method
from influence_cli.files import atomic_write
from influence_cli.session import Session

from conftest import write_tiny_recipe

N_TRAIN, BATCH = 37, 8         # 5 batches: rank 0 gets 3 (24 examples), rank 1 gets 2 (13): N odd, shards unequal
NAN_EXAMPLE = 30               # in rank 1's shard
TIMEOUT_S = 30                 # INFLUENCE_CLI_DIST_TIMEOUT for the launched ranks
AUDITS = ("score", "mislabel-detect", "target-identify")  # compared with one process
CURVED = ("score-ekfac", "score-arnoldi")  # the curvature fit split across ranks, compared with one process's fit
NAN_AT, DYING_AT = len(AUDITS) + len(CURVED), len(AUDITS) + len(CURVED) + 1  # where those commands run
VOLATILE = {"finished", "seconds", "argv", "tasks"}  # run.json fields that differ between any two runs


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", distributed.TIMEOUT_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def run(tiny_recipe):
    return tiny_recipe("cnn", n_train=N_TRAIN, n_test=5, batch_size=BATCH, dtype="float32")


# ---------------------------------------------------------------- in one process


@pytest.mark.parametrize("n", [1, 7, 8, 37, 64])
@pytest.mark.parametrize("batch_size", [1, 8, 10])
@pytest.mark.parametrize("w", [1, 2, 3, 5])
def test_shards_are_whole_batches_in_order_and_balanced(n, batch_size, w):
    indices = torch.randperm(100)[:n]
    parts = [shard(indices, batch_size, r, w) for r in range(w)]
    assert torch.equal(torch.cat(parts), indices)
    starts = torch.cumsum(torch.tensor([0] + [len(p) for p in parts[:-1]]), 0)
    assert all(int(s) % batch_size == 0 for s, p in zip(starts, parts) if len(p))
    batches = [-(-len(p) // batch_size) for p in parts]
    assert max(batches) - min(batches) <= 1 and batches == sorted(batches, reverse=True)


def test_merging_shards_equals_one_pass(run):
    session = Session.from_recipe(load_recipe(run.recipe_path), need_test=True)
    query = engine.query_features(session, Method.GAS_L, torch.arange(5), session.test.labels[:5])
    whole = engine.train_pass(session, Method.GAS_L, query, k=4, keep_matrix=True, column_best=2)
    # 7 ranks over 5 batches: the last two get nothing (None)
    parts = [engine.local_train_pass(session, Method.GAS_L, query, k=4, keep_matrix=True, column_best=2, indices=s,
                                    progress=None)
             if len(s) else None
             for s in (shard(torch.arange(N_TRAIN), BATCH, r, 7) for r in range(7))]
    assert parts[-1] is None and parts[0] is not None
    assert {f.name for f in fields(TrainPassResult)} == {  # merge() knows every field
        "indices", "self_influence", "proponents", "opponents", "matrix", "column_best", "checkpoint_mass"}
    merged = TrainPassResult.merge(parts, k=4)
    assert torch.equal(merged.indices, whole.indices)
    torch.testing.assert_close(merged.checkpoint_mass, whole.checkpoint_mass, rtol=1e-6, atol=0)
    torch.testing.assert_close(merged.self_influence, whole.self_influence, rtol=1e-6, atol=0)
    torch.testing.assert_close(merged.matrix, whole.matrix, rtol=1e-6, atol=0)
    for got, want in ((merged.proponents, whole.proponents), (merged.opponents, whole.opponents),
                      (merged.column_best, whole.column_best)):
        assert torch.equal(got[1], want[1])
        torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=0)


def test_environment_errors_are_one_line(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(DistributedError, match="WORLD_SIZE='two': expected an integer") as exc:
        distributed.world_size()
    assert exc.value.exit_code == 2
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init() is False and distributed.world_size() == 1
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "-5")
    with pytest.raises(DistributedError, match="INFLUENCE_CLI_DIST_TIMEOUT='-5': expected a positive"):
        distributed.timeout_seconds()


def test_only_rank_zero_writes_reports(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "1")
    assert not distributed.is_main()
    assert atomic_write(tmp_path / "a.txt", "x") == tmp_path / "a.txt"
    assert not list(tmp_path.iterdir())
    monkeypatch.setenv("RANK", "0")
    atomic_write(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").read_text() == "x"


# ---------------------------------------------------------------- two processes

# Each rank runs several CLI commands in one process (one start-up, one process group) and
# prints each one's exit code as it finishes.
DRIVER = """import json, sys
from influence_cli.cli import app
for args in json.loads(sys.argv[1]):
    print(app(args, standalone_mode=False) or 0, flush=True)
"""


def _env(rank: int | None = None, port: int | None = None) -> dict[str, str]:
    """This environment for a launched rank: one thread, gloo on loopback, the test's timeout, and
    torchrun's variables for ``rank`` of 2 (or none, for torchrun itself to set)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", distributed.TIMEOUT_ENV: str(TIMEOUT_S)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    if rank is not None:
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(*commands: list[object], limit: float) -> list[tuple[int, list[int], str]]:
    """Run the CLI ``commands`` in sequence as ranks 0 and 1 of 2 (torchrun's environment set by hand);
    per rank (process exit code, the exit codes of the commands it finished, stderr).
    Fails the test if a rank is still running after ``limit`` seconds (a hang)."""
    port, argv = _free_port(), json.dumps([[str(a) for a in c] for c in commands])
    procs = [subprocess.Popen([sys.executable, "-c", DRIVER, argv], env=_env(r, port), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    deadline, results = time.monotonic() + limit, []
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((p.returncode, [int(line) for line in out.split()], err))
    except subprocess.TimeoutExpired:
        pytest.fail(f"a rank was still running after {limit} s: the job hung")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One launch of 2 ranks running, in turn: the :data:`AUDITS`, a ``score`` whose
    training example 30 (in rank 1's shard) has a NaN input, and a ``score`` whose loss kills rank 1
    (``os._exit(7)``: no exception, no message). Then the audits in one process, which
    resume from the gradient store the two ranks wrote (the store's files before and after are kept)."""
    root = tmp_path_factory.mktemp("two_ranks")
    good = write_tiny_recipe(root / "good", "cnn", n_train=N_TRAIN, n_test=5, batch_size=BATCH, dtype="float32",
                             cache_dir="grads")
    x = 2.0 * torch.randn(N_TRAIN, 1, 8, 8)
    x[NAN_EXAMPLE] = float("nan")
    nan = write_tiny_recipe(root / "nan", "cnn", n_train=N_TRAIN, batch_size=BATCH, dtype="float32",
                            train=(x, torch.randint(0, 3, (N_TRAIN,))))
    (root / "dying_loss.py").write_text(
        "import os\nimport torch.nn.functional as F\n\n\ndef loss(outputs, targets):\n"
        "    if os.environ['RANK'] == '1':\n        os._exit(7)\n"
        "    return F.cross_entropy(outputs, targets, reduction='none')\n")
    dying = write_tiny_recipe(root / "dying", "cnn", n_train=N_TRAIN, batch_size=BATCH,
                              loss=f"{root / 'dying_loss.py'}:loss")
    curved = write_tiny_recipe(root / "curved", "cnn", n_train=N_TRAIN, n_test=5, batch_size=BATCH, dtype="float64",
                               curvature={"checkpoints": "all", "eigenpairs": 6, "iterations": 12})
    curved_score = ["score", curved.recipe_path, "--top-k", "4", "--save-matrix", "--quiet", "--method"]
    commands = {"score": ["score", good.recipe_path, "--method", "gas", "--top-k", "4", "--save-matrix", "--quiet"],
                "mislabel-detect": ["mislabel-detect", good.recipe_path, "--quiet"],
                "target-identify": ["target-identify", good.recipe_path, "--top-k", "4", "--quiet"],
                "score-ekfac": [*curved_score, "ekfac"], "score-arnoldi": [*curved_score, "arnoldi"],
                "nan": ["score", nan.recipe_path, "--quiet"],
                "dying": ["score", dying.recipe_path, "--quiet"]}
    ranks = _launch(*([*c, "--out", root / "sharded" / name] for name, c in commands.items()),
                    limit=TIMEOUT_S + 90)
    stored = sorted((root / "good" / "grads").rglob("*.safetensors"))
    for name in AUDITS + CURVED:
        single = CliRunner().invoke(app, [*map(str, commands[name]), "--out", str(root / "single" / name)])
        assert single.exit_code == 0, single.output
    return root, ranks, (stored, sorted((root / "good" / "grads").rglob("*.safetensors")))


@pytest.mark.parametrize("command", AUDITS + CURVED)
def test_two_ranks_write_the_single_process_reports(two_ranks, command):
    """Including ekfac and arnoldi, whose fits (every checkpoint's) each rank computes over its own
    batches, summed across ranks."""
    root, ranks, _ = two_ranks
    assert [codes[:NAN_AT] for _, codes, _ in ranks] == [[0] * NAN_AT] * 2, ranks
    _same_reports(root / "single" / command, root / "sharded" / command)


def test_each_rank_stores_its_batches_where_one_process_finds_them(two_ranks):
    """The ranks keep the single-process batches, so their gradient-store shards have the same
    names: a later one-process run (or any other rank count) resumes from them and adds none."""
    _, _, (after_two_ranks, after_one_process) = two_ranks
    assert after_two_ranks and after_one_process == after_two_ranks


def test_an_error_on_one_rank_stops_every_rank_with_its_message(two_ranks):
    root, ((_, codes0, err0), (_, codes1, err1)), _ = two_ranks
    assert codes0[NAN_AT] == codes1[NAN_AT] == 2
    assert f"gradient of example {NAN_EXAMPLE}" in err1 and "rank 1 of 2" not in err1
    assert f"rank 1 of 2 failed: data.train: the gradient of example {NAN_EXAMPLE}" in " ".join(err0.split())
    assert not (root / "sharded" / "nan").exists()


def test_a_dead_rank_ends_the_job_with_a_message_not_a_hang(two_ranks):
    """Rank 1 dies silently; rank 0's next collective fails (well within the launch limit) with a message."""
    _, ((exit0, codes0, err0), (exit1, codes1, _)), _ = two_ranks
    assert (exit1, len(codes1)) == (7, DYING_AT)
    assert exit0 == 0 and codes0[DYING_AT] == 3, err0
    assert "rank 0 of 2: lost the other ranks while merging the training pass" in " ".join(err0.split())


@pytest.mark.slow
def test_torchrun_score_matches_one_process(run, tmp_path):
    """The documented entry point itself: ``torchrun --standalone --nproc_per_node=2 -m influence_cli``."""
    args = ["score", run.recipe_path, "--method", "gas-l", "--top-k", "4", "--save-matrix", "--quiet"]
    single = CliRunner().invoke(app, [*map(str, args), "--out", str(tmp_path / "single")])
    assert single.exit_code == 0, single.output
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "influence_cli", *map(str, args), "--out", str(tmp_path / "sharded")],
                          env=_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _same_reports(tmp_path / "single", tmp_path / "sharded")


def _same_reports(single: Path, sharded: Path) -> None:
    """Same files; same JSON/CSV values (indices exact, scores to 1e-6 relative); run.json equal up
    to timings; the Markdown summary and the safetensors matrix likewise."""
    names = sorted(p.name for p in single.iterdir())
    assert names == sorted(p.name for p in sharded.iterdir())
    for name in names:
        a, b = single / name, sharded / name
        if name == "run.json":
            x, y = json.loads(a.read_text()), json.loads(b.read_text())
            for info in (x, y):
                for command in info["commands"].values():
                    for key in VOLATILE:
                        command.pop(key)
            assert x == y
        elif name.endswith(".json"):
            _assert_close(json.loads(a.read_text()), json.loads(b.read_text()), name)
        elif name.endswith(".csv"):
            _assert_close(*[[[_num(v) for v in row] for row in csv.reader(p.open())] for p in (a, b)], name)
        elif name.endswith(".safetensors"):
            x, y = load_file(str(a)), load_file(str(b))
            assert x.keys() == y.keys()
            for key in x:
                torch.testing.assert_close(y[key], x[key], rtol=1e-6, atol=0)
        else:
            assert a.read_text() == b.read_text(), name


def _assert_close(x: object, y: object, where: str) -> None:
    """Equal structure and text; numbers to 1e-6 relative (integers, i.e. indices, exactly)."""
    if isinstance(x, dict) and isinstance(y, dict):
        assert x.keys() == y.keys(), where
        for key in x:
            _assert_close(x[key], y[key], f"{where}.{key}")
    elif isinstance(x, list) and isinstance(y, list):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y)):
            _assert_close(u, v, f"{where}[{i}]")
    elif isinstance(x, float) and isinstance(y, float):
        assert y == pytest.approx(x, rel=1e-6), where
    else:
        assert x == y, where


def _num(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value
