"""benchmarks/sampling.py runs both sides on the same work and prints/writes its table (speed itself is the
benchmark's business, never asserted in a test)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "sampling.py"


def test_sampling_benchmark_table(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_sampling", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "bench.csv"
    rows = mod.main(
        ["--prompts", "2", "--n", "4", "--max-new-tokens", "6", "--repeats", "1", "--vllm", "off"]
        + ["--csv", str(out)]
    )
    naive, batched = rows
    assert (naive["method"], batched["method"]) == ("naive", "batched")
    assert naive["samples"] == batched["samples"] == 8  # the same 2 prompts x 4 samples on both sides
    # the ratio against the baseline run in the same process (rounded to 2 places in the table)
    assert batched["speedup"] == pytest.approx(naive["seconds"] / batched["seconds"], rel=0.05, abs=0.01)
    assert "| batched  |" in capsys.readouterr().out
    assert out.read_text().splitlines()[0].startswith("method,samples,tokens,seconds")
