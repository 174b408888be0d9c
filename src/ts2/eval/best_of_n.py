"""The best-of-n reward-model win rate of the AlpacaEval protocol (PAPER.md §4).

For prompt i with rewards r_i,0, r_i,1, ... of its samples (in ``sample_idx`` order) and reference reward
r_i,ref (the same RM's score of the GPT-4-Turbo AlpacaEval-2 answer):

    r_best,i(n) = max_{j < n} r_i,j                      (the *first* n samples, j = 0..n-1)
    win_rate(n) = 100 · mean_i σ(r_best,i(n) − r_i,ref),   σ(t) = 1 / (1 + e^(−t))

for n = 1, 2, 4, …, N (powers of two ≤ N, plus N itself if it is not one). σ(a − b) = e^a / (e^a + e^b) is the
Bradley–Terry probability that the sample beats the reference, as in the official ``calculate_winrate.py``.
The 95% CI is a seeded percentile bootstrap over prompts with the same resampled prompt sets for every n
(:func:`ts2.eval.stats.bootstrap_cis`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def best_of_n_grid(n_max: int) -> list[int]:
    """n = 1, 2, 4, ... ≤ n_max, plus n_max itself if it is not a power of two."""
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}.")
    ns = [1 << k for k in range(n_max.bit_length()) if (1 << k) <= n_max]
    return ns if ns[-1] == n_max else [*ns, n_max]


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * t))  # = 1 / (1 + e^-t), without overflow


def per_prompt_win(rewards: np.ndarray, ref: np.ndarray, n: int) -> np.ndarray:
    """σ(max_{j<n} r_ij − r_i,ref) × 100 for each prompt i; ``rewards`` is [prompts, ≥ n]."""
    rewards = np.asarray(rewards, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if rewards.ndim != 2 or ref.shape != (rewards.shape[0],):
        raise ValueError(f"rewards must be [P, N] and ref [P]; got {rewards.shape} and {ref.shape}.")
    if not 1 <= n <= rewards.shape[1]:
        raise ValueError(f"n={n} outside 1..{rewards.shape[1]} (samples per prompt).")
    return 100.0 * _sigmoid(rewards[:, :n].max(axis=1) - ref)


def win_rates(rewards: np.ndarray, ref: np.ndarray, ns: Sequence[int]) -> dict[int, float]:
    """Best-of-n win rate (×100) for each n."""
    return {int(n): float(per_prompt_win(rewards, ref, n).mean()) for n in ns}
