"""TS²'s α chosen per scale on held-out fit, on rows the table never reports (issue 19 item 4).

For each α of the grid (and each learning rate of ``--lrs``; default: the scale's own), train TS² with the scale's
Table-1 SFT (``experiment=table1_<scale> method=ts2 loss.alpha=α``, the same data, steps and schedule as the table's
TS² row), then measure its held-out response CE (``eval=heldout_ce``, ts2.eval.heldout_ce: nats per answer token,
mean over rows, softmax sampling distribution) on the **selection** rows of the held-out file (``eval.data.split=
selection``: each 4th row of uf_binarized_subset_eval200), never on the report rows the table's held-out CE column
uses (``split=report``, the default).

Rule: the setting with the lowest selection held-out CE is chosen, unless its paired difference to the paper's
α = 0.25 (at the scale's learning rate) has a 95% paired-bootstrap CI over the selection rows that includes 0 (a
tie): then α = 0.25 is kept. So the paper's value stays unless another α fits significantly better. With several
``--lrs`` the reference is α = 0.25 at the first of them (list the scale's own first).

Writes ``results/alpha_selection_<scale>.{csv,md}`` (every setting: selection CE with its 95% CI, the paired
difference to α = 0.25 with its CI, the last logged training CE, the run folder; the chosen α and why). With
``--write-config`` it sets ``selected_alpha:`` in the ``pipeline:`` block of ``conf/experiment/table1_<scale>.yaml``,
which the pipeline reads to train the "TS² (α selected)" row beside the paper's α = 0.25 row.

Runs go to ``<runs_dir>/alpha_selection_<scale>/<overrides>/``, named as ``python -m ts2.train`` names them
(``train.resume=true``: a rerun skips finished
runs); the selection metrics to ``<run>/metrics_selection/heldout_ce.json`` (never ``metrics/``, which holds the
report rows' numbers when a run is scored for the table).

Cost on an idle 2-core CPU, default grid α ∈ {0.1, 0.25, 0.5, 1, 2}: tiny 5 x (~65 s train + ~5 s CE) ≈ 6 min;
small 5 x (~130 s train + ~15 s CE over ~45 rows) ≈ 12 min (the sizes of conf/experiment/table1_small.yaml).

    python -m experiments.alpha_selection.run --scale tiny [--alphas 0.1,0.25,0.5,1,2] [--lrs 1e-3,3e-4]
    python -m experiments.alpha_selection.run --scale small --write-config
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ts2.conf import CONF_DIR
from ts2.eval.stats import paired_bootstrap

REPO = Path(__file__).resolve().parents[2]
PAPER_ALPHA = 0.25


def _compose(config_name: str, overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def _fmt(x: float) -> str:
    return f"{x:g}"


def _diff(d: Any) -> str:
    return f"{d.diff:+.3f} [{d.ci[0]:+.3f}, {d.ci[1]:+.3f}]"


def run_setting(scale: str, alpha: float, lr: float | None, args: argparse.Namespace) -> dict[str, Any]:
    """Train (or find) one TS² run and measure its selection held-out CE; returns its row."""
    import torch
    from omegaconf import open_dict

    from ts2.conf import compose_train as _compose_train
    from ts2.conf import training_config
    from ts2.evaluate import evaluate_bench
    from ts2.runs import default_run_dir
    from ts2.train import train

    name = f"alpha_selection_{scale}"
    overrides = [f"experiment=table1_{scale}", "method=ts2", f"loss.alpha={_fmt(alpha)}",
                 *([f"train.learning_rate={_fmt(lr)}"] if lr is not None else []), *args.train_extra]  # fmt: skip
    # As `python -m ts2.train <overrides>` composes and names it (the pipeline: block left out of the run's config
    # and hash); the final model is what the held-out CE reads (debug=cpu would not save it).
    full = _compose_train([*overrides, f"name={name}", f"paths.runs_dir={args.runs_dir}", "train.resume=true",
                           "train.save_final_model=true"], hydra_config=True)  # fmt: skip
    run = default_run_dir(full, full.hydra.job.override_dirname)
    with open_dict(full):
        full.pop("hydra")
    cfg = training_config(full)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    summary = train(cfg, run)
    t_train = time.perf_counter() - t0
    metrics = run / "metrics_selection" / "heldout_ce.json"
    if not metrics.is_file():
        ecfg = _compose("evaluate", [f"run_dir='{run}'", "eval=heldout_ce", "eval.data.split=selection",
                                     f"metrics_dir='{run / 'metrics_selection'}'", *args.eval_extra])  # fmt: skip
        if ecfg.eval.data.split != "selection":
            raise ValueError("eval.data.split must stay 'selection' here (the report rows choose nothing).")
        evaluate_bench(ecfg)
    m = json.loads(metrics.read_text())
    return {
        "alpha": alpha,
        "learning_rate": cfg.train.learning_rate,
        "heldout_ce": m["metrics"]["heldout_ce"],
        "ci_lo": m["ci"]["heldout_ce"][0],
        "ci_hi": m["ci"]["heldout_ce"][1],
        "rows": m["num_prompts"],
        "split": m["details"]["data"]["split"],
        "last_train_ce": summary.get("last_ce"),
        "train_s": round(t_train, 1),
        "run": str(run),
        "_ids": m["prompt_ids"],
        "_row_ce": m["per_prompt"]["heldout_ce"],
    }


def choose(rows: list[dict[str, Any]], reference: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The chosen row and the reason (module docstring: lowest CE unless tied with α = 0.25)."""
    best = min(rows, key=lambda r: r["heldout_ce"])
    if best is reference:
        return reference, f"α = {PAPER_ALPHA} has the lowest selection held-out CE"
    d = best["diff_vs_paper"]
    if d.significant:
        return (
            best,
            f"lowest selection held-out CE, {_diff(d)} nats against α = {PAPER_ALPHA} (95% CI excludes 0)",
        )
    return reference, (
        f"tie: the lowest selection held-out CE (α = {_fmt(best['alpha'])}, lr {_fmt(best['learning_rate'])}) differs "
        f"from α = {PAPER_ALPHA} by {_diff(d)} nats, a 95% CI that includes 0, so the paper's α is kept"
    )


def paired_to_reference(rows: list[dict[str, Any]], reference: dict[str, Any]) -> None:
    """``diff_vs_paper``: paired bootstrap of row CE minus the reference's, over the rows both scored."""
    ref = dict(zip(reference["_ids"], reference["_row_ce"], strict=True))
    for r in rows:
        mine = dict(zip(r["_ids"], r["_row_ce"], strict=True))
        shared = [i for i in r["_ids"] if i in ref]
        r["diff_vs_paper"] = paired_bootstrap([mine[i] for i in shared], [ref[i] for i in shared])


def write_config(scale: str, alpha: float) -> Path:
    """Set ``selected_alpha: <α>`` in conf/experiment/table1_<scale>.yaml (the line must exist: comments kept)."""
    path = Path(CONF_DIR) / "experiment" / f"table1_{scale}.yaml"
    text = path.read_text()
    new, n = re.subn(r"(?m)^(\s*selected_alpha:\s*)[^\s#]+", rf"\g<1>{_fmt(alpha)}", text)
    if n != 1:
        raise ValueError(
            f"{path} needs exactly one `selected_alpha:` line in its pipeline: block (found {n}); add "
            "`selected_alpha: null` there, then rerun with --write-config."
        )
    path.write_text(new)
    return path


def write(scale: str, rows: list[dict[str, Any]], chosen: dict[str, Any], why: str, out: Path, command: str,
          seconds: float) -> tuple[Path, Path]:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"alpha_selection_{scale}.csv", out / f"alpha_selection_{scale}.md"
    fields = ["alpha", "learning_rate", "heldout_ce", "ci_lo", "ci_hi", "diff_vs_paper", "diff_ci_lo",
              "diff_ci_hi", "rows", "split", "last_train_ce", "train_s", "chosen", "run"]  # fmt: skip
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            d = r["diff_vs_paper"]
            w.writerow({**{k: r[k] for k in fields if k in r}, "diff_vs_paper": d.diff, "diff_ci_lo": d.ci[0],
                        "diff_ci_hi": d.ci[1], "chosen": r is chosen})  # fmt: skip
    lines = [
        f"# α selection, {scale} scale (issue 19 item 4)",
        "",
        f"`{command}` ({seconds / 60:.1f} min). TS² trained with the {scale} Table-1 SFT "
        f"(experiment=table1_{scale}) at each α; held-out response CE (nats per answer token, mean over rows, 95% "
        f"bootstrap CI over rows) on the **selection** rows of eval200 (each 4th row; {rows[0]['rows']} within the "
        "length limit), never on the report rows the table uses. Rule: the lowest CE wins unless its paired "
        f"difference to α = {PAPER_ALPHA} has a 95% CI that includes 0 (then α = {PAPER_ALPHA} is kept).",
        "",
        f"**Selected α = {_fmt(chosen['alpha'])}** (learning rate {_fmt(chosen['learning_rate'])}): {why}."
        + (
            ""
            if chosen["learning_rate"] == rows[0]["learning_rate"]
            else " Its learning rate is not the table's: "
            "the pipeline's selected-α row must also set train.learning_rate."
        ),
        "",
        "| α | lr | selection held-out CE (95% CI) | − CE at α = 0.25 (paired 95% CI) | last train CE | chosen |",
        "|---:|---:|---|---|---:|---|",
    ]
    for r in rows:
        d = r["diff_vs_paper"]
        train_ce = f"{r['last_train_ce']:.3f}" if r["last_train_ce"] is not None else "–"
        lines.append(f"| {_fmt(r['alpha'])} | {_fmt(r['learning_rate'])} | {r['heldout_ce']:.3f} [{r['ci_lo']:.3f}, "
                     f"{r['ci_hi']:.3f}] | {_diff(d)} | {train_ce} | {'**yes**' if r is chosen else ''} |")  # fmt: skip
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def main(argv: Sequence[str] | None = None) -> tuple[Path, Path]:
    p = argparse.ArgumentParser(
        prog="python -m experiments.alpha_selection.run", description=__doc__.splitlines()[0]
    )
    p.add_argument("--scale", choices=("tiny", "small"), required=True)
    p.add_argument("--alphas", default="0.1,0.25,0.5,1,2")
    p.add_argument(
        "--lrs", default=None, help="learning rates (default: the scale's own, train.learning_rate)"
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads (runs go one after another)")
    p.add_argument("--runs-dir", default=str(REPO / "runs"))
    p.add_argument("--out", default=str(REPO / "results"))
    p.add_argument(
        "--train-extra", default="", help="more ts2.train overrides (space-separated), e.g. debug=cpu"
    )
    p.add_argument("--eval-extra", default="", help="more ts2.evaluate overrides, e.g. eval.sample.limit=20")
    p.add_argument("--write-config", action="store_true", help="set selected_alpha in the experiment config")
    args = p.parse_args(argv)
    args.train_extra, args.eval_extra = args.train_extra.split(), args.eval_extra.split()
    alphas = [float(a) for a in args.alphas.split(",")]
    if PAPER_ALPHA not in alphas:
        raise SystemExit(f"--alphas must include the paper's {PAPER_ALPHA}: ties are decided in its favour.")
    lrs: list[float | None] = [float(x) for x in args.lrs.split(",")] if args.lrs else [None]
    t0 = time.perf_counter()
    rows = [run_setting(args.scale, a, lr, args) for lr in lrs for a in alphas]
    reference = next(r for r in rows if r["alpha"] == PAPER_ALPHA)  # the paper's α at the first learning rate
    paired_to_reference(rows, reference)
    chosen, why = choose(rows, reference)
    command = " ".join(
        ["python -m experiments.alpha_selection.run", *(argv if argv is not None else sys.argv[1:])]
    )
    paths = write(args.scale, rows, chosen, why, Path(args.out), command, time.perf_counter() - t0)
    print(f"selected α = {_fmt(chosen['alpha'])} ({why}); wrote {paths[0]} and {paths[1]}")
    if args.write_config:
        print(
            f"wrote selected_alpha: {_fmt(chosen['alpha'])} into {write_config(args.scale, chosen['alpha'])}"
        )
    return paths


if __name__ == "__main__":
    main()
