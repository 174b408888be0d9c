"""Tests for `ts2.eval.creative_writing.score`: the three diversity metrics of the groups built by hand, with
CIs and per-prompt values."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from tests.eval._alpaca import DIVERSITY
from ts2.eval import creative_writing
from ts2.eval.diversity import DiversityConfig, diversity_report
from ts2.sampling.store import Sample

POEMS = {
    0: ["roses are red", "violets are blue", "sugar is sweet"],
    1: ["the sea the sea", "the sea is wide", "waves on the shore"],
    2: ["night falls", "night falls", "night falls again"],
}


def test_score_equals_the_diversity_report_of_the_templated_groups(tmp_path):
    samples = [
        Sample(pid, j, f"<u>poem {pid}</u>", c, "stop", 3)
        for pid, cs in POEMS.items()
        for j, c in enumerate(cs)
    ]
    cfg = OmegaConf.create(
        {
            "metrics_dir": str(tmp_path),
            "eval": {"id": "creative_poem", "metrics": {"n_bootstrap": 500}},
            "diversity": DIVERSITY,
        }
    )
    res = creative_writing.score(samples[::-1], cfg)  # file order does not matter
    assert res.prompt_ids == [2, 1, 0] and (res.num_prompts, res.num_samples) == (3, 9) and res.complete
    groups = [[f"<u>poem {pid}</u>" + c for c in POEMS[pid]] for pid in (2, 1, 0)]
    three = {k: res.metrics[k] for k in ("ngram", "self_bleu", "sent_bert")}
    assert three == pytest.approx(diversity_report(groups, DiversityConfig()), abs=1e-9)
    # the answers' lengths: 3 generated tokens each, all ended by EOS; words by hand (prompt 2: 2, 2, 3 words)
    assert res.metrics["answer_tokens"] == 3.0 and res.metrics["ended_by_eos"] == 100.0
    assert res.per_prompt["answer_words"] == pytest.approx([7 / 3, 4.0, 3.0])
    for k, v in res.metrics.items():
        assert res.ci[k][0] <= v <= res.ci[k][1] and np.mean(res.per_prompt[k]) == pytest.approx(v)
    assert res.per_prompt["ngram"][0] < res.per_prompt["ngram"][2]  # repeated "night falls": least diverse
    assert res.details["samples_per_prompt"] == 3 and res.details["diversity"]["text"] == "templated"


def test_default_config_scores_the_official_strings_and_names_the_encoder(compose, tmp_path, tiny_tokenizer):
    """conf/evaluate.yaml's defaults: diversity.text=paper (the pair re-templated with the sampled model's
    tokenizer, found through the samples' meta.json) and the MiniLM encoder, labelled as not the paper's."""
    import json

    from ts2.eval.diversity import OFFLINE_SENT_BERT, paper_text

    tok = tiny_tokenizer
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "s").mkdir()
    prompts = {
        pid: tok.apply_chat_template(
            [{"role": "user", "content": f"Write poem {pid}."}], tokenize=False, add_generation_prompt=True
        )
        for pid in POEMS
    }
    samples = [
        Sample(pid, j, prompts[pid], c, "stop", 3) for pid, cs in POEMS.items() for j, c in enumerate(cs)
    ]
    overrides = ["eval=creative_poem", f"samples_dir={tmp_path}/s", f"metrics_dir={tmp_path}/m"]
    cfg = compose([*overrides, "diversity.embedding_cache=false"], config_name="evaluate")
    with pytest.raises(ValueError, match="diversity.text=paper needs the sampled model's tokenizer"):
        creative_writing.score(samples, cfg)
    meta = {"complete": True, "model": {"model_path": str(tmp_path / "model"), "model": "tiny"}}
    (tmp_path / "s" / "creative_poem.meta.json").write_text(json.dumps(meta))
    res = creative_writing.score(samples, cfg)
    groups = [[paper_text(tok, prompts[pid], c) for c in POEMS[pid]] for pid in POEMS]
    assert all(g.count("Cutting Knowledge Date") == 2 for group in groups for g in group)
    three = {k: res.metrics[k] for k in ("ngram", "self_bleu", "sent_bert")}
    assert three == pytest.approx(diversity_report(groups, DiversityConfig()), abs=1e-9)
    templated = creative_writing.score(samples, compose([*overrides, "diversity.text=templated"], "evaluate"))
    assert templated.metrics["ngram"] > res.metrics["ngram"]  # the repeated system block lowers distinct-n
    d = res.details["diversity"]
    assert (d["text"], d["self_bleu_mode"], d["sent_bert_model"]) == ("paper", "paper", OFFLINE_SENT_BERT)
    assert "not the paper's model" in d["sent_bert_note"] and "creative_poem.meta.json" in d["tokenizer"]
