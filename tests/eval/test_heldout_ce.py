"""Tests for `ts2.eval.heldout_ce`: the streamed, batched, chunked response NLL equals transformers' own
per-row loss (an unpadded forward with labels), and the summary equals numpy's mean / ratio."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ts2.eval.heldout_ce import response_nll, score, split_rows, summarize


def hf_row_loss(model, ex) -> tuple[float, int]:
    """transformers' mean shifted-label CE of one unpadded row, times its token count."""
    ids = torch.tensor([ex["input_ids"]])
    labels = torch.tensor([ex["labels"]])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=labels).loss
    n = int((labels[0, 1:] != -100).sum())
    return float(loss) * n, n


@pytest.fixture(scope="module")
def tiny(compose):
    from ts2.data import build_sft_dataset
    from ts2.models import load_model, load_tokenizer, resolve_model_path

    cfg = compose(["model=tiny", "+eval=heldout_ce", "eval.data.limit=6", "eval.data.split=all"])
    path = resolve_model_path(cfg.model)
    tok = load_tokenizer(cfg.model, path)
    model = load_model(cfg.model, path)
    data = build_sft_dataset(cfg.eval.data, tok, 384)
    return cfg, tok, model, data.examples


def test_response_nll_equals_transformers_loss(tiny):
    torch.set_num_threads(1)
    _, tok, model, examples = tiny
    sums, counts = response_nll(model, examples, batch_size=4, chunk_size=7, pad_token_id=tok.pad_token_id)
    for ex, s, c in zip(examples, sums, counts, strict=True):
        ref_s, ref_c = hf_row_loss(model, ex)
        assert c == ref_c
        assert s == pytest.approx(ref_s, rel=1e-4)


def test_summary_is_the_mean_and_ratio():
    sums = np.array([2.0, 9.0, 4.0])
    counts = np.array([1, 3, 4])
    res = summarize(sums, counts, ["a", "b", "c"], n_bootstrap=200)
    assert res.metrics["heldout_ce"] == pytest.approx((2 + 3 + 1) / 3)
    assert res.metrics["heldout_ce_token"] == pytest.approx(15 / 8)
    assert res.metrics["heldout_ppl_token"] == pytest.approx(math.exp(15 / 8))
    assert res.per_prompt["heldout_ce"] == [2.0, 3.0, 1.0] and res.prompt_ids == ["a", "b", "c"]
    lo, hi = res.ci["heldout_ce"]
    assert 1.0 <= lo <= res.metrics["heldout_ce"] <= hi <= 3.0
    with pytest.raises(ValueError, match="at least one response token"):
        summarize(np.array([1.0]), np.array([0]), ["a"])


def test_score_end_to_end(tiny):
    cfg, tok, model, _ = tiny
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(cfg, {"eval": {"metrics": {"max_length": 384, "n_bootstrap": 100}}})
    res = score(None, cfg)
    n = len(tiny[3])  # rows whose answer survives max_length (the same rule as in training)
    assert res.num_prompts == n and len(res.per_prompt["heldout_ce"]) == n
    assert res.details["data"]["skipped"] == 6 - n
    ref = [hf_row_loss(model, ex) for ex in tiny[3]]
    assert res.metrics["heldout_ce_token"] == pytest.approx(
        sum(s for s, _ in ref) / sum(n for _, n in ref), rel=1e-4
    )
    # an untrained model is about uniform over its vocabulary
    assert abs(res.metrics["heldout_ce"] - math.log(len(tok))) < 0.5


def test_split_rows_partitions_by_position():
    rows = list(range(10))
    assert split_rows(rows, "selection") == [0, 4, 8]
    assert split_rows(rows, "report") == [1, 2, 3, 5, 6, 7, 9]
    assert split_rows(rows, "all") == rows and split_rows(rows, "selection", every=3) == [0, 3, 6, 9]
    with pytest.raises(ValueError, match=r"eval.data.split='heldout': use one of report, selection, all"):
        split_rows(rows, "heldout")
    with pytest.raises(ValueError, match=r"eval.data.selection_every=1"):
        split_rows(rows, "report", every=1)


def test_selection_and_report_rows_are_disjoint_and_cover_every_row(compose):
    """The α-selection rows are never the rows the table reports (issue 19 item 4); report is the default."""
    assert compose(["+eval=heldout_ce"]).eval.data.split == "report"
    ids = {}
    for split in ("selection", "report", "all"):
        cfg = compose(["model=tiny", "+eval=heldout_ce", f"eval.data.split={split}", "eval.metrics.max_length=96",
                       "eval.metrics.n_bootstrap=10"])  # fmt: skip
        res = score(None, cfg)
        ids[split] = set(res.prompt_ids)
        d = res.details["data"]
        assert (
            d["split"] == split
            and d["rows"] + d["skipped"] == {"selection": 50, "report": 150, "all": 200}[split]
        )
    assert ids["selection"] and ids["report"] and not ids["selection"] & ids["report"]
    assert ids["selection"] | ids["report"] == ids["all"]
