"""Uncertainty over prompts: percentile-bootstrap confidence intervals (issue #15 item 4).

Every benchmark metric here is a mean over prompts of a per-prompt value v_i (win rate, distinct-n,
100 − Self-BLEU, Sent-BERT, pass@k). Its 95% CI is the percentile bootstrap (Efron & Tibshirani 1993, §13.3):
draw B resamples of the P prompts with replacement, take the mean of each, and report the 2.5th and 97.5th
percentiles of those B means (numpy's default linear interpolation). Resampling is seeded, so a CI is
reproducible, and :func:`bootstrap_indices` is shared, so metrics of one result use the same resampled prompt
sets.

Between two methods scored on the same prompts, :func:`paired_bootstrap` resamples prompts jointly: the
difference of means d = mean(a) − mean(b) with the percentile CI of d over the same resamples. That removes
the between-prompt variance both methods share (a prompt that is easy for one is easy for the other).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

N_RESAMPLES = 1000
LEVEL = 0.95


def bootstrap_indices(num: int, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``[n_resamples, num]`` prompt indices drawn with replacement from ``default_rng(seed)``."""
    if num < 1:
        raise ValueError(f"bootstrap needs at least one prompt, got {num}.")
    if n_resamples < 1:
        raise ValueError(f"bootstrap needs n_resamples >= 1, got {n_resamples}.")
    return np.random.default_rng(seed).integers(0, num, size=(n_resamples, num))


def _percentiles(means: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def _values(values: Sequence[float] | np.ndarray, what: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(
            f"{what}: expected a non-empty 1-D sequence of per-prompt values, got shape {arr.shape}."
        )
    if not np.isfinite(arr).all():
        raise ValueError(
            f"{what}: per-prompt values must be finite (prompt {int(np.argmin(np.isfinite(arr)))})."
        )
    return arr


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
    indices: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean of per-prompt ``values``.

    ``indices`` (from :func:`bootstrap_indices`) reuses resampled prompt sets; otherwise they are drawn with
    ``seed``.
    """
    v = _values(values)
    idx = bootstrap_indices(v.size, n_resamples, seed) if indices is None else indices
    if idx.ndim != 2 or idx.shape[1] != v.size:
        raise ValueError(f"indices of shape {idx.shape} do not resample {v.size} prompts.")
    return _percentiles(v[idx].mean(axis=1), level)


def bootstrap_cis(
    per_prompt: Mapping[str, Sequence[float] | np.ndarray],
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, tuple[float, float]]:
    """:func:`bootstrap_ci` of several metrics over the same prompts, with one set of resampled prompt sets."""
    if not per_prompt:
        return {}
    sizes = {len(v) for v in per_prompt.values()}
    if len(sizes) != 1:
        raise ValueError(f"bootstrap_cis: every metric needs the same prompts; got lengths {sorted(sizes)}.")
    idx = bootstrap_indices(sizes.pop(), n_resamples, seed)
    return {k: bootstrap_ci(v, level=level, indices=idx) for k, v in per_prompt.items()}


@dataclass(frozen=True)
class PairedDifference:
    """mean(a) − mean(b) over paired prompts and its percentile-bootstrap CI."""

    diff: float
    ci: tuple[float, float]
    num_prompts: int

    @property
    def significant(self) -> bool:
        """True when the CI excludes 0 (a difference at the CI's level)."""
        return self.ci[0] > 0 or self.ci[1] < 0


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> PairedDifference:
    """Paired percentile bootstrap of mean(a) − mean(b); ``a[i]`` and ``b[i]`` belong to the same prompt."""
    x, y = _values(a, "a"), _values(b, "b")
    if x.shape != y.shape:
        raise ValueError(
            f"paired_bootstrap: a has {x.size} prompts but b has {y.size}; pair them by prompt id."
        )
    d = x - y
    return PairedDifference(
        float(d.mean()), bootstrap_ci(d, n_resamples=n_resamples, seed=seed, level=level), int(d.size)
    )


def align(
    ids_a: Sequence[object], a: Sequence[float], ids_b: Sequence[object], b: Sequence[float]
) -> tuple[list[object], np.ndarray, np.ndarray]:
    """The prompts two results share (in ``ids_a`` order) and their paired values, for :func:`paired_bootstrap`."""
    if len(ids_a) != len(a) or len(ids_b) != len(b):
        raise ValueError("align: each prompt id list must have one value per prompt.")
    pos_b = {pid: i for i, pid in enumerate(ids_b)}
    common = [pid for pid in ids_a if pid in pos_b]
    pos_a = {pid: i for i, pid in enumerate(ids_a)}
    return (
        common,
        np.asarray([a[pos_a[p]] for p in common], dtype=np.float64),
        np.asarray([b[pos_b[p]] for p in common], dtype=np.float64),
    )
