"""Every bootstrap of the project, and the Wilson interval (issue #15 item 4, issue #18 item 3).

Every benchmark metric here is a mean over prompts of a per-prompt value v_i (win rate, distinct-n,
100 − Self-BLEU, Sent-BERT, pass@k). Its 95% CI is the percentile bootstrap (Efron & Tibshirani 1993, §13.3):
draw B resamples of the P prompts with replacement, take the mean of each, and report the 2.5th and 97.5th
percentiles of those B means (numpy's default linear interpolation). Resampling is seeded, so a CI is
reproducible, and :func:`bootstrap_indices` is shared, so metrics of one result use the same resampled prompt
sets. The kinds:

- percentile (:func:`bootstrap_ci`, :func:`bootstrap_cis`): the mean of per-prompt values;
- paired (:func:`paired_bootstrap`): d = mean(a) − mean(b) over the same prompts, resampled jointly, which
  removes the between-prompt variance both methods share;
- two-level, seed runs then prompts (:func:`seeded_paired_bootstrap`, :func:`bootstrap_means`): when a method
  was trained with several seeds, each resample draws its seed runs with replacement, then the prompts, so
  the CI covers both sources of variation;
- ratio (:func:`ratio_ci`): sum(x)/sum(n) of per-prompt sums (a token-weighted mean), prompts resampled;
- :func:`wilson_interval`: a proportion's score interval (Wilson 1927), no resampling;
- equivalence (:func:`tost`, :func:`equivalence_decision`): two one-sided tests on a paired gap, read off the
  (1 − 2α) paired-bootstrap CI (issue #19 item 3);
- matched quality (:func:`matched_level`, :func:`interpolate_at`, :func:`matched_difference`): diversity of two
  methods at one quality level, interpolated along their temperature frontiers, with a paired (two-level)
  bootstrap CI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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


def percentile_interval(means: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap statistics (numpy's linear percentiles)."""
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
    return percentile_interval(v[idx].mean(axis=1), level)


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
    """d = mean(a) − mean(b) over paired prompts, its percentile-bootstrap CI, and the data behind it."""

    diff: float
    ci: tuple[float, float]
    num_prompts: int
    seeds: tuple[int, int] = (1, 1)  # seed runs of a, of b

    @property
    def significant(self) -> bool:
        """True when the CI excludes 0 (a difference at the CI's level)."""
        return self.ci[0] > 0 or self.ci[1] < 0

    def text(self, unit: str = "") -> str:
        return f"{self.diff:+.2f}{unit} [{self.ci[0]:+.2f}, {self.ci[1]:+.2f}]"


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


def shared_ids(id_lists: Sequence[Sequence[Any]]) -> list[Any]:
    """The prompt ids every list holds, in the first list's order."""
    shared = set(id_lists[0])
    for ids in id_lists[1:]:
        shared &= set(ids)
    return [p for p in id_lists[0] if p in shared]


def stack(runs: Sequence[tuple[Sequence[Any], np.ndarray]], ids: Sequence[Any]) -> np.ndarray:
    """[runs, prompts] values of the prompts ``ids`` from (prompt ids, values) per run."""
    out = []
    for run_ids, values in runs:
        pos = {pid: i for i, pid in enumerate(run_ids)}
        out.append(values[[pos[p] for p in ids]])
    return np.stack(out)


def seeded_paired_bootstrap(
    a_runs: Sequence[tuple[Sequence[Any], np.ndarray]],
    b_runs: Sequence[tuple[Sequence[Any], np.ndarray]],
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> PairedDifference:
    """Two-level paired bootstrap of mean(a) − mean(b): seed runs, then prompts.

    ``a_runs`` / ``b_runs``: per training seed, (prompt ids, per-prompt values). Prompts are those every run
    shares. Each resample draws the seeds of a and of b with replacement, then one set of prompts (shared by
    a and b), and takes the difference of the means; the CI is the percentile interval of those differences.
    With one seed per method it is a paired bootstrap over prompts (other draws than :func:`paired_bootstrap`).
    """
    if not a_runs or not b_runs:
        raise ValueError("seeded_paired_bootstrap needs at least one run of each method.")
    ids = shared_ids([run_ids for run_ids, _ in [*a_runs, *b_runs]])
    if not ids:
        raise ValueError("the two methods share no scored prompt; pair them on the same prompts.")
    a, b = stack(a_runs, ids), stack(b_runs, ids)
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_resamples)
    for r in range(n_resamples):
        sa = rng.integers(0, a.shape[0], a.shape[0])
        sb = rng.integers(0, b.shape[0], b.shape[0])
        pi = rng.integers(0, len(ids), len(ids))
        diffs[r] = a[sa][:, pi].mean() - b[sb][:, pi].mean()
    return PairedDifference(
        float(a.mean() - b.mean()), percentile_interval(diffs, level), len(ids), (a.shape[0], b.shape[0])
    )


def bootstrap_means(
    blocks: Mapping[str, np.ndarray], *, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> dict[str, np.ndarray]:
    """Bootstrap means of ``[runs, prompts]`` blocks (one per metric), the same resamples for every metric.

    One run: prompt indices from :func:`bootstrap_indices` (seed ``seed``), the scorer's own draw, so the
    percentile interval of these means is the CI the scorer stored. Several: per resample, runs with
    replacement, then prompts (two-level, as :func:`seeded_paired_bootstrap`).
    """
    shapes = {b.shape for b in blocks.values()}
    if len(shapes) != 1:
        raise ValueError(f"bootstrap_means: blocks of different shapes {sorted(shapes)}.")
    runs, prompts = shapes.pop()
    if runs == 1:
        idx = bootstrap_indices(prompts, n_resamples, seed)
        return {m: b[0][idx].mean(axis=1) for m, b in blocks.items()}
    rng = np.random.default_rng(seed)
    out = {m: np.empty(n_resamples) for m in blocks}
    for r in range(n_resamples):
        si = rng.integers(0, runs, runs)
        pi = rng.integers(0, prompts, prompts)
        for m, b in blocks.items():
            out[m][r] = b[si][:, pi].mean()
    return out


def ratio_ci(
    sums: np.ndarray,
    counts: np.ndarray,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
    indices: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of sum(sums) / sum(counts), resampling prompts (clusters of tokens).

    ``sums[i]``: a prompt's total (e.g. its tokens' NLL), ``counts[i]`` its tokens; the ratio is the
    token-weighted mean. ``indices`` (from :func:`bootstrap_indices`) reuses resampled prompt sets.
    """
    idx = bootstrap_indices(len(sums), n_resamples, seed) if indices is None else indices
    return percentile_interval(sums[idx].sum(axis=1) / np.maximum(counts[idx].sum(axis=1), 1), level)


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (Wilson 1927): (p + z²/2n ± z√(p(1−p)/n + z²/4n²)) / (1 + z²/n)."""
    if n < 1:
        raise ValueError("wilson_interval needs n >= 1.")
    p = successes / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / den
    return (mid - half, mid + half)


# ----------------------------------------------------------------------------------------------------
# Equivalence: two one-sided tests (TOST) read off a paired-bootstrap CI (issue #19 item 3)

EQUIVALENT, DIFFERENT, UNDECIDED = "equivalent", "different", "undecided"


def equivalence_decision(ci: tuple[float, float], margin: float) -> str:
    """The TOST decision for a gap whose (1 − 2α) CI is ``ci``, with equivalence margin ``margin`` (> 0).

    - ``equivalent``: the CI lies inside the open interval (−margin, +margin). Both one-sided tests reject
      (H0: gap ≤ −margin, and H0: gap ≥ +margin, each at level α), so the gap is within the margin.
    - ``different``: the CI lies at or beyond one margin (lo ≥ +margin or hi ≤ −margin): a one-sided test at
      level α shows the gap exceeds the margin.
    - ``undecided``: otherwise (the CI straddles a margin).
    """
    if not margin > 0:
        raise ValueError(f"an equivalence margin must be > 0, got {margin!r}.")
    lo, hi = ci
    if -margin < lo and hi < margin:
        return EQUIVALENT
    if lo >= margin or hi <= -margin:
        return DIFFERENT
    return UNDECIDED


@dataclass(frozen=True)
class Equivalence:
    """A TOST on the paired gap a − b: the gap with its (1 − 2α) CI, the margin and the decision."""

    gap: PairedDifference
    margin: float
    alpha: float

    @property
    def decision(self) -> str:
        return equivalence_decision(self.gap.ci, self.margin)


def tost(
    a_runs: Sequence[tuple[Sequence[Any], np.ndarray]],
    b_runs: Sequence[tuple[Sequence[Any], np.ndarray]],
    margin: float,
    *,
    alpha: float = 0.05,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> Equivalence:
    """Two one-sided tests of |mean(a) − mean(b)| < ``margin`` at level ``alpha`` (Schuirmann 1987).

    The gap's CI is the (1 − 2α) paired percentile bootstrap of :func:`seeded_paired_bootstrap` (seed runs,
    then prompts; one seed each: prompts only), e.g. the 90% CI for α = 0.05; the decision is
    :func:`equivalence_decision` of that CI. Reading both one-sided tests off one (1 − 2α) interval is the
    standard interval form of TOST.
    """
    if not 0 < alpha < 0.5:
        raise ValueError(f"TOST alpha must be in (0, 0.5), got {alpha!r}.")
    equivalence_decision((0.0, 0.0), margin)  # checks the margin
    gap = seeded_paired_bootstrap(a_runs, b_runs, n_resamples=n_resamples, seed=seed, level=1 - 2 * alpha)
    return Equivalence(gap, float(margin), float(alpha))


# ----------------------------------------------------------------------------------------------------
# Diversity at matched quality along temperature frontiers (issue #19 item 3)


def matched_level(ranges: Sequence[tuple[float, float]]) -> float | None:
    """The common quality level: the midpoint of the overlap of the methods' quality ranges (min, max over
    their temperatures), i.e. of [max of the minima, min of the maxima]; None when they do not overlap."""
    if not ranges:
        raise ValueError("matched_level needs at least one quality range.")
    lo, hi = max(min(r) for r in ranges), min(max(r) for r in ranges)
    return None if lo > hi else (lo + hi) / 2


def interpolate_at(q: Sequence[float], d: Sequence[float], level: float) -> tuple[float, bool]:
    """Diversity at quality ``level`` on the polyline through (q_k, d_k), points in temperature order.

    The first segment (in temperature order) whose quality range holds ``level`` is interpolated linearly; a
    segment flat in quality at ``level`` gives its first point. When no segment holds it (only in bootstrap
    resamples, whose curves move), the nearer end segment is extended linearly. Returns (value, extrapolated).
    """
    qa, da = np.asarray(q, dtype=np.float64), np.asarray(d, dtype=np.float64)
    if qa.ndim != 1 or qa.shape != da.shape or qa.size < 2:
        raise ValueError(f"interpolate_at needs >= 2 points of (quality, diversity), got {qa.size}.")
    for k in range(qa.size - 1):
        q0, q1 = qa[k], qa[k + 1]
        if min(q0, q1) <= level <= max(q0, q1):
            if q1 == q0:
                return float(da[k]), False
            return float(da[k] + (level - q0) * (da[k + 1] - da[k]) / (q1 - q0)), False
    # outside the curve's range: extend the segment at the end nearer to the level
    ends = [(abs(level - qa[0]), 0), (abs(level - qa[-1]), qa.size - 2)]
    k = min(ends)[1]
    q0, q1 = qa[k], qa[k + 1]
    if q1 == q0:
        return float(da[k] if k == 0 else da[k + 1]), True
    return float(da[k] + (level - q0) * (da[k + 1] - da[k]) / (q1 - q0)), True


@dataclass(frozen=True)
class Frontier:
    """One method's temperature frontier on shared prompts: ``quality`` and ``diversity`` as
    [seed runs, temperatures, prompts] per-prompt values, temperatures ascending."""

    temperatures: tuple[float, ...]
    quality: np.ndarray
    diversity: np.ndarray

    def __post_init__(self) -> None:
        if self.quality.ndim != 3 or self.quality.shape != self.diversity.shape:
            raise ValueError(
                f"Frontier: quality {self.quality.shape} and diversity {self.diversity.shape} must both be "
                "[runs, temperatures, prompts]."
            )
        if self.quality.shape[1] != len(self.temperatures) or len(self.temperatures) < 2:
            raise ValueError(f"Frontier: {len(self.temperatures)} temperatures for {self.quality.shape}.")

    def curve(
        self, seeds: np.ndarray | None = None, prompts: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean quality and diversity per temperature (over the chosen seed runs and prompts)."""
        q, d = self.quality, self.diversity
        if seeds is not None:
            q, d = q[seeds], d[seeds]
        if prompts is not None:
            q, d = q[:, :, prompts], d[:, :, prompts]
        return q.mean(axis=(0, 2)), d.mean(axis=(0, 2))

    @property
    def quality_range(self) -> tuple[float, float]:
        q, _ = self.curve()
        return float(q.min()), float(q.max())


@dataclass(frozen=True)
class MatchedDifference:
    """d_a(level) − d_b(level): diversities interpolated at one quality level, with a bootstrap CI."""

    level: float
    a: float
    b: float
    diff: float
    ci: tuple[float, float]
    num_prompts: int
    seeds: tuple[int, int]
    extrapolated: int  # bootstrap resamples in which a curve had to be extended to reach the level
    n_resamples: int

    @property
    def significant(self) -> bool:
        return self.ci[0] > 0 or self.ci[1] < 0


def matched_difference(
    a: Frontier,
    b: Frontier,
    level: float,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    ci_level: float = LEVEL,
) -> MatchedDifference:
    """Diversity of ``a`` minus that of ``b`` at quality ``level`` (:func:`interpolate_at` on each curve).

    The CI is a paired percentile bootstrap: each resample draws each method's seed runs with replacement,
    then one set of prompts shared by both methods and every temperature (the frontiers must hold the same
    prompts, in the same order), recomputes both curves and the difference at the same fixed ``level``.
    """
    if a.quality.shape[2] != b.quality.shape[2]:
        raise ValueError("matched_difference: the two frontiers must hold the same prompts.")
    va, _ = interpolate_at(*a.curve(), level)
    vb, _ = interpolate_at(*b.curve(), level)
    rng = np.random.default_rng(seed)
    na, nb, p = a.quality.shape[0], b.quality.shape[0], a.quality.shape[2]
    diffs, extra = np.empty(n_resamples), 0
    for r in range(n_resamples):
        sa, sb, pi = rng.integers(0, na, na), rng.integers(0, nb, nb), rng.integers(0, p, p)
        xa, ea = interpolate_at(*a.curve(sa, pi), level)
        xb, eb = interpolate_at(*b.curve(sb, pi), level)
        diffs[r] = xa - xb
        extra += int(ea or eb)
    return MatchedDifference(
        float(level), va, vb, va - vb, percentile_interval(diffs, ci_level), p, (na, nb), extra, n_resamples
    )
