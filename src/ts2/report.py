"""Collect run folders into results tables: ``python -m ts2.report runs_dir=runs/table1_tiny name=table1_tiny``.

Every sub-folder of ``runs_dir`` with a ``run.json`` (written by ``ts2.train``) is one row; its columns are
the training summary and every number in ``metrics/<bench>.json`` (``<bench>/<metric>``). Writes
``results/<name>.csv`` (all columns), ``<name>.md`` and ``<name>.tex`` (the Table-1 columns, methods in the
paper's order) and ``<name>_winrate.png`` (best-of-n win rate against n). Each file states the scale; numbers
from the tiny CPU scale are labelled tiny-scale and never shown beside the paper's.
Nothing here is typed by hand: rerun this command to regenerate every number from the run folders.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ts2.conf import CONF_DIR

log = logging.getLogger("ts2.report")

METHOD_ORDER = ["ce", "ce_wd", "neft", "gem", "ce_ls", "sparsemax", "entmax15", "ts2"]
METHOD_NAMES = {
    "ce": "CE",
    "ce_wd": "CE+WD",
    "neft": "NEFT",
    "gem": "GEM",
    "ce_ls": "CE+LS",
    "sparsemax": "Sparsemax",
    "entmax15": "1.5-entmax",
    "ts2": "TS²",
}
TABLE_COLUMNS = [  # (column in the csv, header in md/tex)
    ("alpaca_eval/win_rate@1", "WR@1"),
    ("alpaca_eval/win_rate@max", "WR@N"),
    ("alpaca_eval/ngram", "AE N-gram"),
    ("alpaca_eval/self_bleu", "AE 100−SBLEU"),
    ("alpaca_eval/sent_bert", "AE Sent-BERT"),
    ("creative_poem/ngram", "Poem N-gram"),
    ("creative_poem/self_bleu", "Poem 100−SBLEU"),
    ("creative_poem/sent_bert", "Poem Sent-BERT"),
    ("creative_story/ngram", "Story N-gram"),
    ("humaneval/pass@1", "HE pass@1"),
    ("humaneval/pass@10", "HE pass@10"),
    ("train/last_ce", "train CE"),
]


def collect(runs_dir: Path) -> pd.DataFrame:
    """One row per run folder: run.json, the training summary, and every metrics file flattened."""
    rows: list[dict[str, Any]] = []
    for run in sorted(p for p in runs_dir.iterdir() if (p / "run.json").is_file()):
        meta = json.loads((run / "run.json").read_text())
        row: dict[str, Any] = {"run": run.name, "method": meta["method"], "model": meta["model"]}
        summary = run / "train_summary.json"
        if summary.is_file():
            s = json.loads(summary.read_text())
            row.update({f"train/{k}": s.get(k) for k in ("first_loss", "last_loss")})
            row["train/steps"] = s.get("global_step")
        log_file = run / "train_log.jsonl"
        if log_file.is_file():  # token CE of the logged steps: comparable across methods, unlike the losses
            ces = [r["ce"] for r in map(json.loads, log_file.read_text().splitlines()) if "ce" in r]
            if ces:
                row["train/first_ce"], row["train/last_ce"] = ces[0], ces[-1]
        scales, incomplete = set(), []
        for mfile in sorted((run / "metrics").glob("*.json")):
            m = json.loads(mfile.read_text())
            bench = m["benchmark"]
            scales.add(m.get("scale", "unspecified"))
            if not m.get("complete", False):
                incomplete.append(bench)
            for k, v in m["metrics"].items():
                if isinstance(v, (int, float)):
                    row[f"{bench}/{k}"] = v
            wr = {int(k.split("@")[1]): v for k, v in m["metrics"].items() if k.startswith("win_rate@")}
            if wr:
                row["alpaca_eval/win_rate@max"] = wr[max(wr)]
                row["alpaca_eval/n_max"] = max(wr)
        row["scale"] = "; ".join(sorted(scales)) or "unspecified"
        row["incomplete"] = ",".join(incomplete)
        rows.append(row)
    if not rows:
        raise FileNotFoundError(f"No run folders with run.json under {runs_dir}.")
    df = pd.DataFrame(rows)
    df["_order"] = df["method"].map({m: i for i, m in enumerate(METHOD_ORDER)}).fillna(len(METHOD_ORDER))
    return df.sort_values(["model", "_order", "run"]).drop(columns="_order").reset_index(drop=True)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "–"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def _table(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    cols = [(c, h) for c, h in TABLE_COLUMNS if c in df.columns and df[c].notna().any()]
    dup = df["method"].duplicated(keep=False)  # sweeps: several runs of one method -> name them by run
    header = ["method", *[h for _, h in cols]]
    body = []
    for _, r in df.iterrows():
        name = METHOD_NAMES.get(r["method"], r["method"]) + (f" ({r['run']})" if dup[_] else "")
        name += " *" if r.get("incomplete") else ""
        body.append([name, *[_fmt(r.get(c)) for c, _ in cols]])
    return header, body


def write_markdown(df: pd.DataFrame, path: Path, title: str, notes: list[str]) -> None:
    header, body = _table(df)
    lines = [
        f"# {title}",
        "",
        *notes,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    path.write_text("\n".join(lines) + "\n")


def write_latex(df: pd.DataFrame, path: Path, title: str) -> None:
    header, body = _table(df)
    esc = lambda s: s.replace("_", r"\_").replace("%", r"\%").replace("²", r"$^2$").replace("−", "-")  # noqa: E731
    out = [
        f"% {title}",
        r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}",
        r"\toprule",
        " & ".join(esc(h) for h in header) + r" \\",
        r"\midrule",
    ]
    out += [" & ".join(esc(c) for c in row) + r" \\" for row in body]
    out += [r"\bottomrule", r"\end{tabular}"]
    path.write_text("\n".join(out) + "\n")


def plot_win_rate(df: pd.DataFrame, path: Path, title: str) -> bool:
    cols = sorted(
        (c for c in df.columns if c.startswith("alpaca_eval/win_rate@") and c[-1].isdigit()),
        key=lambda c: int(c.rsplit("@", 1)[1]),
    )
    if not cols:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ns = [int(c.rsplit("@", 1)[1]) for c in cols]
    for _, r in df.iterrows():
        ax.plot(ns, [r[c] for c in cols], marker="o", label=METHOD_NAMES.get(r["method"], r["method"]))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("n (best of n samples)")
    ax.set_ylabel("win rate vs GPT-4-Turbo (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def report(runs_dir: Path, name: str, out_dir: Path, paper_numbers: Path | None = None) -> dict[str, Path]:
    df = collect(runs_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scales = sorted(set(df["scale"]))
    tiny = any("tiny" in s for s in scales)
    title = f"Table 1 ({name}) — {'TINY-SCALE, not comparable to the paper' if tiny else ', '.join(scales)}"
    notes = [
        f"Generated by `python -m ts2.report runs_dir={runs_dir} name={name}` from {len(df)} run folders.",
        f"Scale: {'; '.join(scales)}.",
    ]
    if "alpaca_eval/n_max" in df:
        notes.append(
            f"WR@N = best-of-{int(df['alpaca_eval/n_max'].max())} reward-model win rate (%) vs the "
            "AlpacaEval-2 reference; diversity scores ×100 (PAPER.md §4)."
        )
    if df["incomplete"].astype(bool).any():
        notes.append("`*` = some benchmark of this run is INCOMPLETE (see its metrics file).")
    if not tiny and paper_numbers and paper_numbers.is_file():
        pub = OmegaConf.to_container(OmegaConf.load(paper_numbers))
        for col, by_method in (pub.get(str(df["model"].iloc[0])) or {}).items():
            df[f"paper:{col}"] = df["method"].map(by_method)
    paths = {"csv": out_dir / f"{name}.csv", "md": out_dir / f"{name}.md", "tex": out_dir / f"{name}.tex"}
    df.to_csv(paths["csv"], index=False)
    write_markdown(df, paths["md"], title, notes)
    write_latex(df, paths["tex"], title)
    png = out_dir / f"{name}_winrate.png"
    if plot_win_rate(df, png, title):
        paths["png"] = png
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths


@hydra.main(config_path=CONF_DIR, config_name="report", version_base="1.3")
def main(cfg: DictConfig) -> None:
    report(
        Path(cfg.runs_dir),
        cfg.name,
        Path(cfg.out_dir),
        Path(cfg.paper_numbers) if cfg.paper_numbers else None,
    )


if __name__ == "__main__":
    main()
