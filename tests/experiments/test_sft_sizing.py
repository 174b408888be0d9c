"""experiments/table1/sft_sizing.py at debug size: the small Table 1's recipe (2-layer SmolLM2, frozen bottom, fused
TS²) and the tiny recipe's original command; the curve's paired difference to the base."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "experiments" / "table1"))
import sft_sizing  # noqa: E402


def _lines(capsys) -> list[dict]:
    return [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]


def test_small_recipe_curve_on_two_layer_smollm2(capsys):
    sft_sizing.main(["--experiment", "table1_small", "--max-steps", "2", "--eval-every", "1", "--eval-rows", "8",
                     "--eval-max-length", "96", "model.gguf.num_hidden_layers=2", "model.trainable_layers=1",
                     "data.limit=12", "model.max_length=64", "train.per_device_train_batch_size=4",
                     "train.learning_rate=1e-3", "method=ts2"])  # fmt: skip
    head, *evals, done = _lines(capsys)
    assert (head["experiment"], head["loss"], head["fused"], head["lr"], head["batch"]) == (
        "table1_small",
        "ts2",
        True,
        1e-3,
        4,
    )
    t = head["trainable"]
    assert (t["trainable_layers"], t["train_embeddings"], t["tied_embeddings"]) == (1, False, True)
    assert head["eval_split"] == "selection" and head["eval_rows"] <= 8
    assert [e["step"] for e in evals] == [0, 1, 2] and done["steps_run"] == 2
    assert evals[0]["minus_base"] == 0 and evals[0]["minus_base_ci95"] == [0, 0] and not evals[0]["moved"]
    for e in evals[1:]:  # the paired mean difference of row CEs is the difference of the row means
        assert e["minus_base"] == pytest.approx(e["heldout_ce"] - evals[0]["heldout_ce"], abs=1e-4)
        lo, hi = e["minus_base_ci95"]
        assert lo <= e["minus_base"] <= hi and e["moved"] == (lo > 0 or hi < 0)
    assert evals[2]["heldout_ce"] != evals[0]["heldout_ce"]  # the trained top layer moved the fit


def test_tiny_recipe_original_flags(capsys):
    from omegaconf import OmegaConf

    from ts2.models import resolve_model_path

    base = resolve_model_path(OmegaConf.create({"tiny": {}}))
    sft_sizing.main(["--base", base, "--limit", "12", "--batch-size", "4", "--lr", "1e-3", "--max-length", "128",
                     "--max-steps", "1", "--eval-every", "1", "--eval-rows", "4", "--eval-split", "all"])  # fmt: skip
    head, *evals, done = _lines(capsys)
    assert head["model_path"] == base and head["loss"] == "ce" and not head["fused"]
    assert head["steps"] == -(-head["train_rows"] // 4) and head["train_rows"] + head["skipped"] == 12
    assert head["trainable"]["trainable_params"] == head["trainable"]["total_params"]  # full fine-tuning
    assert len(evals) == 2 and done["steps_run"] == 1
