"""Tests for `ts2.eval.best_of_n`: hand-computed best-of-n win rates, monotonicity, and the bootstrap CI
against the CLT width."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ts2.eval.best_of_n as bon
from tests.eval._alpaca import EXPECTED, REF, REWARDS


def test_grid():
    assert bon.best_of_n_grid(32) == [1, 2, 4, 8, 16, 32]
    assert bon.best_of_n_grid(6) == [1, 2, 4, 6]
    assert bon.best_of_n_grid(1) == [1]
    with pytest.raises(ValueError):
        bon.best_of_n_grid(0)


def test_win_rate_hand_computed():
    r = np.array([REWARDS[i] for i in range(3)])
    ref = np.array([REF[i] for i in range(3)])
    got = bon.win_rates(r, ref, [1, 2, 4])
    assert got == pytest.approx(EXPECTED, abs=1e-12)
    assert EXPECTED[1] == pytest.approx(
        100 * (0.5 + 2 / (1 + math.e)) / 3
    )  # sanity of the expectation itself


def test_best_of_n_monotone_and_extreme_values():
    rng = np.random.default_rng(3)
    r, ref = rng.normal(size=(50, 16)), rng.normal(size=50)
    wr = bon.win_rates(r, ref, bon.best_of_n_grid(16))
    vals = [wr[n] for n in sorted(wr)]
    assert all(b >= a for a, b in zip(vals, vals[1:], strict=False)) and vals[-1] > vals[0]
    big = bon.per_prompt_win(np.array([[800.0], [-800.0]]), np.zeros(2), 1)  # no overflow
    assert big.tolist() == [100.0, 0.0]
