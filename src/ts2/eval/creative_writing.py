"""Creative writing (poems, stories; GEM's prompts): the three diversity metrics of PAPER.md §4.

:func:`score` is the scorer of ``conf/eval/creative_poem.yaml`` and ``conf/eval/creative_story.yaml`` (and of any
open-ended benchmark scored by diversity alone): per prompt over its N samples, N-gram (distinct-1..3),
100 − Self-BLEU and Sent-BERT (×100, :mod:`ts2.eval.diversity`), each averaged over prompts, with a 95%
percentile-bootstrap CI over prompts (:mod:`ts2.eval.stats`), plus the secondary texts, the length-controlled
variant and the answers' lengths of :func:`ts2.eval.diversity.score_answers`. Settings: ``cfg.diversity`` (conf/evaluate.yaml and
the ``diversity`` config group). The default text is the official re-templated string (``diversity.text=paper``),
built with the sampled model's tokenizer (:func:`ts2.eval.diversity.policy_tokenizer`).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ts2.eval.diversity import DiversityConfig, policy_tokenizer, score_answers
from ts2.eval.result import ScoreResult
from ts2.eval.stats import bootstrap_cis
from ts2.sampling.store import Sample


def score(samples: list[Sample], cfg: DictConfig) -> ScoreResult:
    """N-gram / 100 − Self-BLEU / Sent-BERT (×100) over each prompt's samples, with per-prompt values and CIs."""
    config = DiversityConfig.from_config(
        cfg.diversity, cache_dir=Path(cfg.metrics_dir) / ".cache" / "sent_bert"
    )
    div = score_answers(samples, config, tokenizer=lambda: policy_tokenizer(cfg))
    n = div.details["n"]
    n_bootstrap = int((cfg.eval.get("metrics") or {}).get("n_bootstrap", 1000))
    return ScoreResult(
        metrics=div.metrics,
        num_prompts=len(div.prompt_ids),
        num_samples=n * len(div.prompt_ids),
        complete=True,
        ci=bootstrap_cis(div.per_prompt, n_resamples=n_bootstrap),
        per_prompt=div.per_prompt,
        prompt_ids=div.prompt_ids,
        details={
            "num_prompts": len(div.prompt_ids),
            "num_samples": n * len(div.prompt_ids),
            "samples_per_prompt": n,
            "diversity": {**div.details, "settings": OmegaConf.to_container(cfg.diversity, resolve=True)},
        },
    )
