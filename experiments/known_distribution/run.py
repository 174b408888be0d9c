"""Command of the known-distribution testbed (``testbed.py``; README.md here), run from the repo root::

    python -m experiments.known_distribution.run [--quick] [--seeds N] [--methods ID ...] [--extended-epochs N]
        [--sft-answer sample|mode] [--out DIR] [--suffix S]

It writes ``<out>/known_distribution/{results,summary}<suffix>.{json,md}`` and
``<out>/figures/known_distribution<suffix>{,_paper}.png`` (``make known-distribution``: both variants into
``results/``). The suffix defaults to the variant's: ``""`` for ``--sft-answer sample``, ``"_mode"`` for ``mode``.
A run never replaces the files of another configuration (:func:`testbed.check_outputs`): e.g. ``--sft-answer mode
--seeds 3`` stops before training, naming ``results_mode.json`` (5 seeds) and asking for its own ``--suffix`` or
``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from experiments.known_distribution.testbed import (
    ExperimentConfig,
    check_outputs,
    config_of,
    quick_config,
    run_experiment,
    write_outputs,
)


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    p = argparse.ArgumentParser(
        prog="python -m experiments.known_distribution.run", description=__doc__.splitlines()[0]
    )
    p.add_argument("--quick", action="store_true", help="reduced run (3 methods, 2 seeds, small task)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 5; quick 2)")
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="method ids (default: all 8); a variant as id:overrides, e.g. ts2:loss.alpha=1.0",
    )
    p.add_argument("--extended-epochs", type=int, default=None)
    p.add_argument("--sft-answer", choices=("sample", "mode"), default="sample")
    p.add_argument("--out", default="results", help="output root (default results/)")
    p.add_argument(
        "--suffix",
        default=None,
        help="appended to the output names (default: '' for sample, '_mode' for mode)",
    )
    a = p.parse_args(argv)
    cfg = quick_config() if a.quick else ExperimentConfig()
    if a.seeds:
        cfg.seeds = tuple(range(a.seeds))
    if a.methods:
        cfg.methods = tuple(a.methods)
    if a.extended_epochs:
        cfg.extended_epochs = a.extended_epochs
    cfg.spec = dataclasses.replace(cfg.spec, sft_answer=a.sft_answer)
    suffix = a.suffix if a.suffix is not None else ("_mode" if a.sft_answer == "mode" else "")
    try:
        check_outputs(config_of(cfg), a.out, suffix)  # before minutes of training, not after
    except ValueError as err:
        p.error(str(err))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    paths = write_outputs(run_experiment(cfg), Path(a.out), suffix=suffix)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return paths


if __name__ == "__main__":
    main()
