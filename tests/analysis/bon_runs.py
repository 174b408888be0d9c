"""Run folders with metrics files made by the real scorers' arithmetic, for the figure and best-of-n tests.

Rewards are drawn per (prompt, sample); the AlpacaEval file is filled with :mod:`ts2.eval.best_of_n` (the
scorer's formula and CI), the diversity entries with :mod:`ts2.eval.stats`, held-out CE with
:func:`ts2.eval.heldout_ce.summarize` and TSPD with :func:`ts2.eval.tspd.summarize` / ``write_metrics``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

METHODS = {
    "ce": {"id": "ce", "name": "CE", "order": 1},
    "sparsemax": {"id": "sparsemax", "name": "Sparsemax", "order": 6},
    "ts2": {"id": "ts2", "name": "TS²", "order": 8},
}
N_PROMPTS, N_SAMPLES = 40, 8


def rewards(
    shift: float, seed: int, prompts: int = N_PROMPTS, n: int = N_SAMPLES
) -> tuple[np.ndarray, np.ndarray]:
    """[prompts, n] sample rewards (seeded) and the reference rewards (the same for every method)."""
    rng = np.random.default_rng(seed)
    return rng.normal(shift, 1.0, size=(prompts, n)), np.random.default_rng(999).normal(
        0.0, 1.0, size=prompts
    )


def alpaca_metrics(r: np.ndarray, ref: np.ndarray, div_shift: float, seed: int, ids=None) -> dict:
    from ts2.eval.best_of_n import best_of_n_grid, per_prompt_win
    from ts2.eval.stats import bootstrap_cis

    ns = best_of_n_grid(r.shape[1])
    per = {n: per_prompt_win(r, ref, n) for n in ns}
    ci = bootstrap_cis(per, n_resamples=1000, seed=0)
    rng = np.random.default_rng(seed + 100)
    div = {
        "ngram": rng.normal(40 + div_shift, 5, r.shape[0]),
        "self_bleu": rng.normal(60 + div_shift, 5, r.shape[0]),
        "sent_bert": rng.normal(20 + div_shift / 2, 3, r.shape[0]),
    }
    dci = bootstrap_cis(div, n_resamples=1000)
    return {
        "metrics": {
            **{f"win_rate@{n}": float(v.mean()) for n, v in per.items()},
            **{k: float(v.mean()) for k, v in div.items()},
        },
        "ci": {**{f"win_rate@{n}": list(ci[n]) for n in ns}, **{k: list(v) for k, v in dci.items()}},
        "per_prompt": {
            **{f"win_rate@{n}": [float(x) for x in v] for n, v in per.items()},
            **{k: [float(x) for x in v] for k, v in div.items()},
        },
        "prompt_ids": list(range(r.shape[0])) if ids is None else list(ids),
        "num_prompts": r.shape[0],
        "num_samples": r.size,
    }


def heldout_metrics(ce: float, seed: int) -> dict:
    from ts2.eval.heldout_ce import summarize

    rng = np.random.default_rng(seed + 200)
    counts = rng.integers(20, 60, 30).astype(float)
    sums = counts * rng.normal(ce, 0.2, 30)
    res = summarize(sums, counts, list(range(30)))
    return {
        "metrics": res.metrics,
        "ci": {k: list(v) for k, v in res.ci.items()},
        "per_prompt": res.per_prompt,
        "prompt_ids": res.prompt_ids,
        "num_prompts": res.num_prompts,
        "num_samples": 0,
    }


def write_tspd(run: Path, method: str, shift: float) -> Path:
    from ts2.eval.tspd import quantity_names, summarize, write_metrics

    rng = np.random.default_rng(7)
    values = {k: rng.random(60) * 0.5 + shift for k in quantity_names()}
    res = summarize(values, np.repeat(np.arange(6), 10), n_bootstrap=50)
    res.details["model"] = {"method": method, "model": "tiny"}
    res.details["ms"] = [2, 5, 10]
    return write_metrics(res, None, run / "metrics" / "tspd.json")


def make_run(root: Path, name: str, method: str, metrics: dict[str, dict], scale: str = "tiny-scale") -> Path:
    run = root / name
    (run / "metrics").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"method": method, "model": "tiny", "status": "finished"}))
    (run / "config.yaml").write_text(OmegaConf.to_yaml({"method": METHODS[method], "model": {"id": "tiny"}}))
    for bench, m in metrics.items():
        body = {"benchmark": bench, "scale": scale, "complete": True, **m}
        (run / "metrics" / f"{bench}.json").write_text(json.dumps(body))
    return run


SHIFTS = {"ce": (0.0, 0.0, 2.0), "sparsemax": (-0.3, -6.0, 2.4), "ts2": (0.2, 5.0, 2.05)}  # reward, div, CE


def make_table(root: Path, seeds: int = 1, tspd: bool = True) -> Path:
    """runs/<method>_s<k>: alpaca_eval + heldout_ce (+ tspd) for CE, Sparsemax and TS²."""
    for m, (rs, ds, ce) in SHIFTS.items():
        for k in range(seeds):
            seed = 10 * list(SHIFTS).index(m) + k
            r, ref = rewards(rs, seed)
            run = make_run(
                root,
                f"{m}_s{k}",
                m,
                {"alpaca_eval": alpaca_metrics(r, ref, ds, seed), "heldout_ce": heldout_metrics(ce, seed)},
            )
            if tspd:
                write_tspd(run, m, {"ce": 0.0, "sparsemax": 0.3, "ts2": 0.15}[m])
    return root
