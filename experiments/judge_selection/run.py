"""Judge selection without peeking (issue 19 item 2b), at tiny or small scale: every candidate setting of the
scale's reward model is fitted on a training split, the best is chosen on a selection split, and only the chosen
one is scored on the held-out split, whose accuracy (95% Wilson CI) is the judge's reported accuracy.

Splits of the local UltraFeedback preference pairs (``ts2.models.tiny_rm.load_pairs``: file order, pairs whose
chosen and rejected answers are identical skipped):

* train: the first ``N`` pairs of the train file (``N``, a candidate's data limit, at most 800);
* selection: pairs 800 on of the train file (``ts2.models.feature_rm.SELECTION_FROM``; 196 pairs);
* held-out: the eval file (``uf_binarized_subset_eval200``, 199 pairs), the one ``rm_eval.json`` reports; no
  held-out prompt occurs in the other two (checked).

Rule: the highest selection accuracy (ties ½) wins; a tie goes to the lower selection Bradley–Terry log-loss
(mean of ``log(1 + exp(−(r_c − r_r)))``), then to the earlier candidate in the grid.

Candidates:

* ``--scale small`` (``rm=smollm2_bt``, :mod:`ts2.models.feature_rm`): read position (``--quirks``) x feature layer
  (``--layers``) x pooling (``--poolings``) x L2 strength (``--l2s``); 2 x 3 x 2 x 4 = 48 settings by default. One
  SmolLM2 forward per read position serves every layer and pooling (the features of the other settings cost
  nothing), the fits take seconds. Cost on an idle 2-core CPU at ~1,100 tokens/s (ENVIRONMENT.md): (600 + 196)
  pairs at 192 tokens = 216 k + 72 k tokens (counted) x 2 read positions = 0.58 M tokens, ~8.7 min, then the
  199 held-out pairs (72 k tokens) for the chosen read position, ~1.1 min. ``--build`` then builds the chosen RM (~4 min) and checks that its rm_eval.json accuracy
  is the one reported here.
* ``--scale tiny`` (``rm=tiny``, :mod:`ts2.models.tiny_rm`): read position (``--quirks``) x data limit
  (``--train-pairs``) x learning rate (``--lrs``) x epochs 1..``--epochs`` (each training run is scored on the
  selection split after every epoch: the weights after epoch e are those of an ``epochs=e`` run, as the learning
  rate is constant); 2 x 2 x 1 x 6 = 24 settings by default, 4 training runs of 6 epochs (~2 + 4 min each on one
  idle core at 400 / 800 pairs, from the measured ~310 s for 6 epochs of 996 pairs: ~25 min in all). The chosen
  setting is then built with ``ts2.models.tiny_rm.build_tiny_rm`` (one more training run), its selection accuracy
  recomputed (it must equal the recorded one: the held-out number belongs to the selected model), and its
  held-out accuracy read from its rm_eval.json.

Writes ``results/judge_selection_<scale>.{csv,md}`` (``--out``): every setting's selection accuracy (Wilson CI)
and log-loss, the number of settings tried, the chosen setting, its held-out accuracy, and the config lines that
make it the default of ``conf/rm/<tiny|smollm2_bt>.yaml`` (not edited by this script).

    python -m experiments.judge_selection.run --scale small            # ~10 min idle (+4 with --build)
    python -m experiments.judge_selection.run --scale tiny             # ~25 min of one idle core
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ts2.eval.stats import wilson_interval
from ts2.models.feature_rm import SELECTION_FROM
from ts2.models.tiny_rm import Pair, load_pairs, pairwise_accuracy

REPO = Path(__file__).resolve().parents[2]
TRAIN_GLOB = "ultrafeedback/*train*.jsonl"
HELDOUT_GLOB = "ultrafeedback/*eval200.jsonl"


@dataclass(frozen=True)
class Splits:
    train: list[Pair]  # the largest data limit; a candidate takes its first N
    selection: list[Pair]
    heldout: list[Pair]


def splits(max_train: int, max_selection: int | None = None, max_heldout: int | None = None) -> Splits:
    """The three splits of the module docstring (``max_*``: first pairs of each, for debug-size runs)."""
    if max_train > SELECTION_FROM:
        raise ValueError(f"--train-pairs {max_train} reaches the selection split (pairs {SELECTION_FROM}+).")
    pairs, _ = load_pairs(TRAIN_GLOB)
    selection = pairs[SELECTION_FROM:][:max_selection]
    heldout, _ = load_pairs(HELDOUT_GLOB, max_heldout)
    if not selection:
        raise ValueError(f"The train file has no pairs from {SELECTION_FROM} on: no selection split.")
    shared = {p for p, _, _ in heldout} & {p for p, _, _ in pairs}
    if shared:
        raise ValueError(
            f"{len(shared)} held-out prompts also occur in the train file: the splits are not disjoint."
        )
    return Splits(pairs[:max_train], selection, heldout)


def pair_metrics(r: np.ndarray) -> dict[str, float]:
    """Accuracy (ties ½), its Wilson 95% CI and the BT log-loss of rewards interleaved [chosen, rejected, ...]."""
    c, j = r[0::2], r[1::2]
    acc = pairwise_accuracy(c.tolist(), j.tolist())
    lo, hi = wilson_interval(acc * len(c), len(c))
    return {"accuracy": acc, "ci_lo": lo, "ci_hi": hi, "logloss": float(np.mean(np.logaddexp(0.0, -(c - j))))}


def needed(n: int) -> float:
    """The lowest accuracy on ``n`` pairs whose Wilson 95% interval lies above 50% (in steps of ½ pair)."""
    k = next(k for k in range(n, 2 * n + 1) if wilson_interval(k / 2, n)[0] > 0.5)
    return k / (2 * n)


def choose(rows: Sequence[dict[str, Any]]) -> int:
    """Index of the chosen row: best selection accuracy, then lower selection log-loss, then grid order."""
    return min(range(len(rows)), key=lambda i: (-rows[i]["sel_accuracy"], rows[i]["sel_logloss"], i))


# --------------------------------------------------------------------------------------------------- small
def run_small(
    args: argparse.Namespace, data: Splits
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Candidates of ``rm=smollm2_bt``; returns (rows, chosen bt settings, held-out metrics of the chosen)."""
    from transformers import AutoConfig

    from ts2.models.feature_rm import (
        FeatureRMSpec,
        encode,
        fit_bradley_terry,
        load_backbone,
        sequence_features,
    )
    from ts2.models.gguf import build_gguf_model

    layers = sorted(set(args.layers))
    depth = AutoConfig.from_pretrained(
        build_gguf_model(FeatureRMSpec(backbone=args.backbone).gguf())
    ).num_hidden_layers

    def as_spec(layer: int) -> int | None:  # the whole model is `layer: null` (no truncated copy of it)
        return None if layer == depth else layer

    body, tok, _ = load_backbone(FeatureRMSpec(backbone=args.backbone, layer=as_spec(max(layers))))
    feats: dict[bool, dict[str, dict]] = {}
    rows = []
    for quirk in args.quirks:
        feats[quirk] = {
            split: sequence_features(
                body,
                encode(tok, pairs, quirk=quirk, max_length=args.max_length),
                layers=layers,
                poolings=args.poolings,
                batch_size=args.batch_size,
                progress=True,
            )
            for split, pairs in (("train", data.train), ("selection", data.selection))
        }
        for layer in layers:
            for pooling in args.poolings:
                f_train = feats[quirk]["train"][(layer, pooling)]
                for l2 in args.l2s:
                    head = fit_bradley_terry(f_train[0::2] - f_train[1::2], l2)
                    sel = pair_metrics(head.rewards(feats[quirk]["selection"][(layer, pooling)]))
                    rows.append({
                        "quirk": quirk, "layer": layer, "pooling": pooling, "l2": l2,
                        "train_accuracy": pair_metrics(head.rewards(f_train))["accuracy"],
                        **{f"sel_{k}": v for k, v in sel.items()},
                    })  # fmt: skip
    best = rows[choose(rows)]
    chosen = {k: best[k] for k in ("quirk", "layer", "pooling", "l2")}
    # Only now the held-out pairs are read, for the chosen setting alone.
    held = sequence_features(
        body,
        encode(tok, data.heldout, quirk=chosen["quirk"], max_length=args.max_length),
        layers=[chosen["layer"]],
        poolings=[chosen["pooling"]],
        batch_size=args.batch_size,
    )[(chosen["layer"], chosen["pooling"])]
    f_train = feats[chosen["quirk"]]["train"][(chosen["layer"], chosen["pooling"])]
    head = fit_bradley_terry(f_train[0::2] - f_train[1::2], chosen["l2"])
    heldout = pair_metrics(head.rewards(held))
    bt = {
        "backbone": args.backbone,
        "layer": as_spec(chosen["layer"]),
        "pooling": chosen["pooling"],
        "quirk": chosen["quirk"],
        "max_length": args.max_length,
        "l2": chosen["l2"],
        "max_train_pairs": len(data.train),
    }
    if args.build:
        from ts2.models.feature_rm import build_feature_rm

        spec = FeatureRMSpec.from_dict(
            {**bt, "max_eval_pairs": args.heldout_pairs, "batch_size": args.batch_size}
        )
        ev = json.loads((build_feature_rm(spec, progress=True) / "rm_eval.json").read_text())
        if abs(ev["pairwise_accuracy"] - heldout["accuracy"]) > 1.5 / len(data.heldout):
            raise RuntimeError(
                f"The built RM's held-out accuracy {ev['pairwise_accuracy']} is not the selected one's."
            )
        heldout["built_rm"] = ev
    return rows, bt, heldout


# ---------------------------------------------------------------------------------------------------- tiny
def run_tiny(
    args: argparse.Namespace, data: Splits
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Candidates of ``rm=tiny``; returns (rows, chosen TinyRMSpec overrides, held-out metrics of the built chosen)."""
    import torch
    from transformers import AutoTokenizer

    from ts2.models.scoring import score_token_sequences
    from ts2.models.tiny import TinySpec, build_tiny_model
    from ts2.models.tiny_rm import TinyRMSpec, build_tiny_rm, encode_pairs, init_rm_model, train_rm

    base = TinySpec(pretrained="tiny_base") if args.base == "tiny_base" else TinySpec()
    common = {"base": base, "max_length": args.max_length, "max_eval_pairs": args.heldout_pairs}
    tok = AutoTokenizer.from_pretrained(build_tiny_model(base))
    threads = torch.get_num_threads()
    torch.set_num_threads(
        1
    )  # as build_tiny_rm: one thread fixes the reduction order (the built copy must match)

    def selection_scores(model: Any, spec: TinyRMSpec) -> np.ndarray:
        seqs = [s for pair in encode_pairs(tok, data.selection, spec) for s in pair]
        return score_token_sequences(model, seqs, batch_size=2 * spec.batch_size, progress=False)

    rows = []
    try:
        for quirk in args.quirks:
            for n in args.train_pairs:
                for lr in args.lrs:
                    spec = TinyRMSpec(
                        **common, quirk=quirk, max_train_pairs=n, learning_rate=lr, epochs=args.epochs
                    )
                    train = encode_pairs(tok, data.train[:n], spec)
                    model = init_rm_model(spec, tok)
                    t0 = time.perf_counter()

                    def after_epoch(epoch: int, m: Any, spec=spec, n=n, lr=lr, quirk=quirk, t0=t0) -> None:
                        sel = pair_metrics(selection_scores(m, spec))
                        rows.append({"quirk": quirk, "train_pairs": n, "learning_rate": lr, "epochs": epoch,
                                     **{f"sel_{k}": v for k, v in sel.items()},
                                     "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
                        print(json.dumps(rows[-1]), flush=True)

                    train_rm(model, train, spec, tok.pad_token_id, after_epoch=after_epoch)
    finally:
        torch.set_num_threads(threads)
    best = rows[choose(rows)]
    chosen = {"quirk": best["quirk"], "max_train_pairs": best["train_pairs"], "learning_rate": best["learning_rate"],
              "epochs": best["epochs"], "max_length": args.max_length}  # fmt: skip
    spec = TinyRMSpec(**{**common, **chosen})
    folder = build_tiny_rm(spec, progress=True)
    from transformers import AutoModelForSequenceClassification

    built = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32)
    torch.set_num_threads(1)
    try:
        again = pair_metrics(selection_scores(built, spec))["accuracy"]
    finally:
        torch.set_num_threads(threads)
    if again != best["sel_accuracy"]:
        raise RuntimeError(
            f"The built chosen RM ({folder}) scores {again} on the selection split, not the recorded "
            f"{best['sel_accuracy']}: it is not the selected model, so its held-out accuracy would not be either."
        )
    ev = json.loads((folder / "rm_eval.json").read_text())
    lo, hi = ev["pairwise_accuracy_ci95"]
    heldout = {"accuracy": ev["pairwise_accuracy"], "ci_lo": lo, "ci_hi": hi, "num_pairs": ev["num_eval_pairs"],
               "rm_folder": str(folder)}  # fmt: skip
    if base.pretrained is None:
        chosen["base"] = dataclasses.asdict(base)
    return rows, chosen, heldout


# ------------------------------------------------------------------------------------------------- outputs
def write(scale: str, rows: list[dict[str, Any]], chosen: dict[str, Any], heldout: dict[str, Any], data: Splits,
          out: Path, seconds: float, command: str) -> tuple[Path, Path]:  # fmt: skip
    """``<out>/judge_selection_<scale>.{csv,md}``."""
    out.mkdir(parents=True, exist_ok=True)
    pick = choose(rows)
    csv_path, md_path = out / f"judge_selection_{scale}.csv", out / f"judge_selection_{scale}.md"
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*rows[0], "chosen"])
        w.writeheader()
        for i, r in enumerate(rows):
            w.writerow({**r, "chosen": i == pick})
    keys = [k for k in rows[0] if not k.startswith("sel_") and k not in ("train_accuracy", "seconds")]
    conf = (
        "conf/rm/smollm2_bt.yaml (bt: block)"
        if scale == "small"
        else "conf/rm/tiny.yaml (tiny: block; quirk)"
    )
    n = heldout.get("num_pairs", len(data.heldout))
    lines = [
        f"# Judge selection, {scale} scale (issue 19 item 2b)",
        "",
        f"`{command}` ({seconds / 60:.1f} min). Splits of the local "
        f"UltraFeedback pairs: train = first {len(data.train)} pairs of the train file (a candidate may take fewer), "
        f"selection = {len(data.selection)} pairs from pair {SELECTION_FROM} on, held-out = {len(data.heldout)} "
        "eval200 pairs (no prompt shared). Every setting is fitted on train and scored on selection; the best "
        "selection accuracy wins (ties: lower selection log-loss, then grid order). Only the chosen setting is "
        "scored on held-out.",
        "",
        f"**{len(rows)} settings tried.** Chosen: {', '.join(f'{k} = {rows[pick][k]}' for k in keys)} (selection "
        f"accuracy {100 * rows[pick]['sel_accuracy']:.1f}%).",
        "",
        f"**Held-out pairwise accuracy of the chosen judge: {100 * heldout['accuracy']:.1f}% "
        f"(95% Wilson CI {100 * heldout['ci_lo']:.1f}-{100 * heldout['ci_hi']:.1f}) on {n} pairs.** With {n} pairs "
        f"a 95% CI that excludes 50% needs at least {100 * needed(n):.1f}%.",
        "",
        f"To make it the default, set in {conf}:",
        "",
        "```yaml",
        *(f"{k}: {json.dumps(v)}" for k, v in chosen.items()),
        "```",
        "",
        "| " + " | ".join(keys) + " | selection accuracy (95% CI) | selection log-loss | chosen |",
        "|" + "---|" * (len(keys) + 3),
    ]
    for i, r in enumerate(rows):
        cells = [str(r[k]) for k in keys]
        acc = f"{100 * r['sel_accuracy']:.1f} [{100 * r['sel_ci_lo']:.1f}, {100 * r['sel_ci_hi']:.1f}]"
        lines.append(
            "| " + " | ".join([*cells, acc, f"{r['sel_logloss']:.4f}", "**yes**" if i == pick else ""]) + " |"
        )
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.judge_selection.run", description=__doc__.splitlines()[0]
    )
    p.add_argument("--scale", choices=("tiny", "small"), required=True)
    p.add_argument(
        "--quirks", default="false,true", help="read positions: false (answer end), true (paper's)"
    )
    p.add_argument(
        "--train-pairs", default=None, help="tiny: data limits (default 400,800); small: one (600)"
    )
    p.add_argument("--selection-pairs", type=int, default=None, help="first N selection pairs (debug runs)")
    p.add_argument("--heldout-pairs", type=int, default=None, help="first N held-out pairs (debug runs)")
    p.add_argument(
        "--max-length", type=int, default=None, help="tokens kept per sequence (tiny 128, small 192)"
    )
    p.add_argument("--out", default=str(REPO / "results"))
    # small
    p.add_argument("--backbone", default="smollm2_135m")
    p.add_argument("--layers", default="10,20,30", help="small: feature layers")
    p.add_argument("--poolings", default="last,mean")
    p.add_argument("--l2s", default="0.001,0.01,0.1,1")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--build", action="store_true", help="small: also build the chosen RM and check its accuracy"
    )
    # tiny
    p.add_argument("--lrs", default="0.001")
    p.add_argument("--epochs", type=int, default=6, help="tiny: train to this many epochs, scored after each")
    p.add_argument(
        "--base", choices=("tiny_base", "random"), default="tiny_base", help="tiny: the RM's backbone"
    )
    a = p.parse_args(argv)
    a.quirks = [{"false": False, "true": True}[q] for q in a.quirks.split(",")]
    a.layers = [int(x) for x in a.layers.split(",")]
    a.poolings = a.poolings.split(",")
    a.l2s = [float(x) for x in a.l2s.split(",")]
    a.lrs = [float(x) for x in a.lrs.split(",")]
    default_pairs = "400,800" if a.scale == "tiny" else "600"
    a.train_pairs = [int(x) for x in (a.train_pairs or default_pairs).split(",")]
    if a.scale == "small" and len(a.train_pairs) != 1:
        raise SystemExit(
            "--scale small takes one --train-pairs value (the fit is seconds; the data limit is fixed)."
        )
    a.max_length = a.max_length or (128 if a.scale == "tiny" else 192)
    return a


def main(argv: Sequence[str] | None = None) -> tuple[Path, Path]:
    args = parse(argv)
    t0 = time.perf_counter()
    data = splits(max(args.train_pairs), args.selection_pairs, args.heldout_pairs)
    rows, chosen, heldout = (run_small if args.scale == "small" else run_tiny)(args, data)
    command = " ".join(
        ["python -m experiments.judge_selection.run", *(argv if argv is not None else sys.argv[1:])]
    )
    paths = write(args.scale, rows, chosen, heldout, data, Path(args.out), time.perf_counter() - t0, command)
    print(f"{len(rows)} settings; chosen {chosen}; held-out accuracy {100 * heldout['accuracy']:.1f}% "
          f"[{100 * heldout['ci_lo']:.1f}, {100 * heldout['ci_hi']:.1f}]; wrote {paths[0]} and {paths[1]}")  # fmt: skip
    return paths


if __name__ == "__main__":
    main()
