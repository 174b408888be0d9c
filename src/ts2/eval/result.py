"""What a benchmark scorer returns (COORD interface 2): one record, not ``(metrics, details)`` dicts.

A scorer is ``score(samples: list[Sample], cfg: DictConfig) -> ScoreResult``, lives in
``ts2/eval/<bench>.py`` and is named by ``metrics.scorer`` in ``conf/eval/<bench>.yaml``; :mod:`ts2.evaluate`
only dispatches and writes ``metrics/<bench>.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ScoreResult:
    """The result of scoring one benchmark's samples.

    ``metrics``: headline numbers (what the table shows). ``ci``: the 95% confidence interval of each metric
    where one is defined (percentile bootstrap over prompts, :mod:`ts2.eval.stats`). ``per_prompt``: for a
    metric that is a mean over prompts, its per-prompt values in the order of ``prompt_ids`` (for paired
    bootstrap between methods). ``complete`` is False when any expected prompt or sample is missing; ``note``
    says why. ``details``: everything else worth keeping (settings, breakdowns). ``error``: the scorer could
    not do its job (a judge that kept failing): the result is still written, incomplete, and the command then
    fails with this message.
    """

    metrics: dict[str, float]
    num_prompts: int
    num_samples: int
    complete: bool
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    per_prompt: dict[str, list[float]] = field(default_factory=dict)
    prompt_ids: list = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    note: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        unknown = sorted((set(self.ci) | set(self.per_prompt)) - set(self.metrics))
        if unknown:
            raise ValueError(f"ScoreResult: ci/per_prompt name metric(s) {unknown} that are not in metrics.")
        for name, values in self.per_prompt.items():
            if len(values) != len(self.prompt_ids):
                raise ValueError(
                    f"ScoreResult: per_prompt[{name!r}] has {len(values)} values for "
                    f"{len(self.prompt_ids)} prompt_ids."
                )
