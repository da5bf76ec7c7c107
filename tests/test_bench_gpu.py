"""benchmarks/gpu.py stays runnable without a GPU: ``--device cpu --small`` (tiny sizes)."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import gpu


def test_gpu_benchmark_runs_on_the_cpu(tmp_path, capsys, one_thread):
    """Tiny ResNet-18 audits in 5 precision/mode settings (2–5 s on one thread)."""
    assert gpu.main(["--device", "cpu", "--small", "--no-tests", "--json", str(tmp_path / "gpu.json")]) == 0
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert [(r["precision"], r["mode"]) for r in data["rows"]] == [
        ("fp32", "exact"), ("fp32", "projected"), ("bf16", "exact"), ("bf16", "projected")]
    c, m, n = data["cifar10"]["c"], data["cifar10"]["m"], data["cifar10"]["n"]
    for r in data["rows"]:
        assert r["r_test"] > 0 and r["r_train"] > 0 and r["passes"] >= 1
        assert math.isclose(r["cifar_seconds"], c * (m / r["r_test"] + r["passes"] * n / r["r_train"]))
    assert "| fp32 | exact |" in capsys.readouterr().out


def test_gpu_benchmark_without_cuda_says_how_to_run_it(capsys, monkeypatch):
    monkeypatch.setattr(gpu.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        gpu.main(["--device", "cuda"])
    assert "--device cpu --small" in capsys.readouterr().err
