"""benchmarks/sampling.py runs and reports both sides on the same work (the >= 5x target is for the full run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "sampling.py"


def test_sampling_benchmark_table(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_sampling", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "bench.csv"
    rows = mod.main(
        ["--prompts", "2", "--n", "4", "--max-new-tokens", "6", "--repeats", "1", "--csv", str(out)]
    )
    naive, batched = rows
    assert (naive["method"], batched["method"]) == ("naive", "batched")
    assert naive["samples"] == batched["samples"] == 8
    assert naive["speedup"] == 1.0 and batched["speedup"] > 1.0  # 8 generate calls against 1
    assert "| batched  |" in capsys.readouterr().out
    assert out.read_text().splitlines()[0].startswith("method,samples,tokens,seconds")
