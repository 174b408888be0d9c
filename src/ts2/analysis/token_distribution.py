"""Token-distribution figure (issue #13 item 2): the next-token distribution where a number is generated.

The official TS² repository's figure (``token_distribution/``, SOURCES.md §7b) gives each model the prompt
``"Give me a single number as response.Only output one number and nothing else.Answer:"``, samples
continuations (T = 0.6, top-p 0.9) and records the distribution over the vocabulary at the first generated
token that contains a digit. Its data files (``<data_dir>/ts2_token_distribution/``) are read here as data:
pretrained, CE, GEM, "sparse" (sparsemax) and "hybrid" (= TS²), 8B models (the base model is not recorded).

Reading the files: every record's ``distribution`` is ``{"top1": {"token", "prob"}, ...}`` with ``prob`` a
string (``pretrained_distribution.json`` appends a literal ``":10f"``, stripped here). The stored
probabilities are exactly 0 outside a few tokens (CE: 1.0 on "42"), i.e. they are the *sampling*
distribution after temperature and top-p, not the raw softmax. Our models' panels therefore show the same
warped distribution (softmax(z / 0.6) restricted to the top-p 0.9 nucleus and renormalised); the raw softmax
is stored too. A method's distribution is the mean over its records (a token absent from a record counts 0).

Our models: for each run folder (or model folder), ``n`` continuations of the same prompt are sampled
(seeded) and the distribution at the first generated token whose text contains a digit is kept; a
continuation without any digit within ``max_new_tokens`` is counted and, if none has one, the first
generated token is used instead (noted in the panel). Whether the official script applied the chat template
is not recorded; its raw continuations read like plain completions, so the raw prompt is the default
(``chat_template=True`` renders it as a user turn).

Command (the data; the figure is drawn by ``python -m ts2.report``, :mod:`ts2.analysis.figures`)::

    python -m ts2.analysis.token_distribution runs/train/method=ce runs/train/method=ts2 \
        [--model tiny] [--n 10] [--out results] [--name table1_tiny]
    # -> results/token_distribution/table1_tiny/<label>.json and official_8b.json
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ts2.analysis.plotting import COLORS, plt, save

PROMPT = "Give me a single number as response.Only output one number and nothing else.Answer:"
OFFICIAL_FILES = {  # panel order of the official figure's data; "hybrid" is the repo's name for TS²
    "pretrained": ("pretrained_distribution.json", "Pretrained"),
    "ce": ("ce_top20_distribution.json", "CE"),
    "gem": ("gem_top20_distribution.json", "GEM"),
    "sparsemax": ("sparse_top20_distribution.json", "Sparsemax"),
    "ts2": ("hybrid_top20_distribution.json", "TS² (hybrid)"),
}
OFFICIAL_SCALE = "official 8B (TS² repo data)"


def display_token(tok: str) -> str:
    """Byte-level BPE token as text for a plot label: leading-space and newline markers made visible."""
    return tok.replace("Ġ", "␣").replace("Ċ", "⏎").replace("\n", "⏎").replace(" ", "␣")


def _prob(value: Any, where: str) -> float:
    s = str(value)
    if s.endswith(":10f"):  # format-string slip in pretrained_distribution.json (SOURCES.md §7b)
        s = s[: -len(":10f")]
    try:
        p = float(s)
    except ValueError as err:
        raise ValueError(f"{where}: probability {value!r} is not a number") from err
    if not 0.0 <= p <= 1.0 + 1e-9:
        raise ValueError(f"{where}: probability {p} is outside [0, 1]")
    return p


def read_official(path: str | Path) -> list[dict[str, float]]:
    """One official file -> per record ``{token: prob}`` (all stored entries, e.g. top-300)."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of records")
    out = []
    for i, rec in enumerate(data):
        dist = rec.get("distribution") if isinstance(rec, dict) else None
        if not isinstance(dist, dict) or not dist:
            raise ValueError(f"{path}: record {i} has no 'distribution' object")
        probs: dict[str, float] = {}
        for rank in sorted(dist, key=lambda k: int(k.removeprefix("top"))):
            e = dist[rank]
            tok = e["token"]
            probs[tok] = probs.get(tok, 0.0) + _prob(e["prob"], f"{path.name} record {i} {rank}")
        out.append(probs)
    return out


def mean_distribution(records: Sequence[dict[str, float]]) -> tuple[list[str], list[float]]:
    """Mean over records of ``{token: prob}`` (absent = 0), sorted by probability (ties by token)."""
    if not records:
        raise ValueError("mean_distribution: no records")
    acc: dict[str, float] = {}
    for r in records:
        for t, p in r.items():
            acc[t] = acc.get(t, 0.0) + p / len(records)
    items = sorted(acc.items(), key=lambda kv: (-kv[1], kv[0]))
    return [t for t, _ in items], [p for _, p in items]


def official_panels(data_dir: str | Path | None = None, top: int = 20) -> list[dict[str, Any]]:
    """The official 8B distributions as figure panels (mean over each file's records)."""
    if data_dir is None:
        from ts2.paths import data_dir as _dd

        data_dir = _dd() / "ts2_token_distribution"
    data_dir = Path(data_dir)
    panels = []
    for method, (fname, label) in OFFICIAL_FILES.items():
        f = data_dir / fname
        if not f.is_file():
            raise FileNotFoundError(f"Official token-distribution file {f} is missing (SOURCES.md §7b).")
        recs = read_official(f)
        toks, probs = mean_distribution(recs)
        panels.append(
            {
                "method": method,
                "label": label,
                "scale": OFFICIAL_SCALE,
                "tokens": [display_token(t) for t in toks[:top]],
                "probs": probs[:top],
                "records": len(recs),
                "note": f"{len(recs)} samples",
            }
        )
    return panels


def warp(probs_raw: np.ndarray, temperature: float = 0.6, top_p: float = 0.9) -> np.ndarray:
    """The sampling distribution: softmax(log p / T), then the smallest top-p nucleus, renormalised.

    probs_raw [V] (rows of a softmax) -> [V]. The nucleus keeps tokens in decreasing order until their
    cumulative mass reaches ``top_p`` (the token that crosses it included), as transformers' TopPLogitsWarper.
    """
    logp = np.log(np.clip(probs_raw, 1e-300, None)) / temperature
    p = np.exp(logp - logp.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    cum = np.cumsum(p[order])
    keep = order[: int(np.searchsorted(cum, top_p) + 1)]
    out = np.zeros_like(p)
    out[keep] = p[keep]
    return out / out.sum()


def model_distribution(
    source: str | Path | None = None,
    *,
    model_cfg: dict[str, Any] | None = None,
    n: int = 10,
    seed: int = 42,
    temperature: float = 0.6,
    top_p: float = 0.9,
    max_new_tokens: int = 16,
    chat_template: bool = False,
    prompt: str = PROMPT,
) -> dict[str, Any]:
    """Our model's distribution at the first generated digit token: mean over ``n`` sampled continuations.

    ``source``: a training run folder (its ``model/``), a model folder, or None with ``model_cfg`` (e.g. the
    tiny config). Returns ``{"tokens", "probs" (warped, mean), "raw_tokens", "raw_probs" (softmax, mean),
    "with_digit", "n", "generated", ...}``, top 50 each.
    """
    import torch

    from ts2.models import load_model, load_tokenizer
    from ts2.models.source import model_source_of

    src = model_source_of(source, {"model": model_cfg})
    tok = load_tokenizer(src.model_cfg, src.path)
    model = load_model(src.model_cfg, src.path).eval()
    text = (
        tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        if chat_template
        else prompt
    )
    ids = tok(text, return_tensors="pt", add_special_tokens=not chat_template)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            **ids,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=0,
            max_new_tokens=max_new_tokens,
            num_return_sequences=n,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=tok.pad_token_id,
        )
    gen = out.sequences[:, ids["input_ids"].shape[1] :]
    logits = torch.stack(out.logits, dim=1).double()  # [n, steps, V]
    raw = np.zeros(logits.shape[-1])
    warped = np.zeros(logits.shape[-1])
    with_digit, generated, steps = 0, [], []
    for r in range(gen.shape[0]):
        step = next(
            (t for t in range(gen.shape[1]) if any(ch.isdigit() for ch in tok.decode(gen[r, t : t + 1]))),
            None,
        )
        with_digit += step is not None
        step = 0 if step is None else step
        steps.append(step)
        generated.append(tok.decode(gen[r, step : step + 1]))
        p = torch.softmax(logits[r, step], dim=-1).numpy()
        raw += p / gen.shape[0]
        warped += warp(p, temperature, top_p) / gen.shape[0]
    vocab = [tok.decode([i]) for i in range(logits.shape[-1])]

    def top(p: np.ndarray, k: int = 50) -> tuple[list[str], list[float]]:
        o = np.argsort(-p, kind="stable")[:k]
        return [display_token(vocab[i]) for i in o], [float(p[i]) for i in o]

    tw, pw = top(warped)
    tr, pr = top(raw)
    return {
        "tokens": tw,
        "probs": pw,
        "raw_tokens": tr,
        "raw_probs": pr,
        "n": n,
        "with_digit": with_digit,
        "generated": generated,
        "steps": steps,
        "prompt_ids": ids["input_ids"][0].tolist(),
        "generated_ids": gen.tolist(),
        "model": src.info,
        "prompt": prompt,
        "chat_template": chat_template,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
    }


def _scale_of(info: dict[str, Any]) -> str:
    from ts2.eval.tspd import _scale

    s = _scale(info)
    return "tiny scale (ours)" if s == "tiny" else f"{s} (ours)"


def our_panel(dist: dict[str, Any], label: str, method: str | None = None) -> dict[str, Any]:
    note = f"{dist['with_digit']}/{dist['n']} with a digit"
    if dist["with_digit"] == 0:
        note += "\n(first token used)"
    return {
        "method": method or label,
        "label": label,
        "scale": _scale_of(dist.get("model") or {}),
        "tokens": dist["tokens"],
        "probs": dist["probs"],
        "note": note,
    }


def token_distribution_dir(out_dir: str | Path, name: str | None) -> Path:
    """The token-distribution figure's data: ``<out_dir>/token_distribution/<name>/`` (``name`` None: the folder
    itself), written by ``python -m ts2.analysis.token_distribution --out <out_dir> --name <name>``."""
    return Path(out_dir) / "token_distribution" / (name or "")


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Measure the models and write ``<out>/token_distribution/<name>/<label>.json`` and ``official_8b.json``: the
    data of the ``token_distribution`` figure, which ``python -m ts2.report figures=[token_distribution]``
    draws for the run folders of its ``runs_dir``."""
    p = argparse.ArgumentParser(description="Token distributions of our models and of the official 8B data.")
    p.add_argument("sources", nargs="*", help="run folders (or model folders) to measure")
    p.add_argument("--model", default=None, help="a conf/model id to measure as is (e.g. tiny: random init)")
    p.add_argument("--n", type=int, default=10, help="sampled continuations per model (official: 10)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--chat-template", action="store_true", help="render the prompt as a user turn")
    p.add_argument("--out", default="results", help="output root")
    p.add_argument("--name", default=None, help="the report of these runs: <out>/token_distribution/<name>/")
    a = p.parse_args(argv)
    if a.name is not None:
        from ts2.paths import check_name

        check_name(a.name, "--name")
    from omegaconf import OmegaConf

    from ts2.conf import CONF_DIR

    out = token_distribution_dir(a.out, a.name)
    out.mkdir(parents=True, exist_ok=True)
    todo: list[tuple[str, Any, dict | None]] = [(str(s), s, None) for s in a.sources]
    if a.model:
        mcfg = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "model" / f"{a.model}.yaml"))
        todo.append((a.model, None, mcfg))
    written = []
    for name, src, mcfg in todo:
        d = model_distribution(src, model_cfg=mcfg, n=a.n, seed=a.seed, chat_template=a.chat_template)
        label = d["model"].get("method") or (f"{a.model} (random init)" if src is None else Path(name).name)
        d["label"] = str(label)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(label)).strip("_")
        written.append(out / f"{slug}.json")
        written[-1].write_text(json.dumps(d, indent=2))
    written.append(out / "official_8b.json")
    written[-1].write_text(json.dumps(official_panels(), indent=2))
    for f in written:
        print(f)
    return written


def token_distribution_figure(
    panels: Sequence[Any], out: str | Path, *, top: int = 20, title: str | None = None
) -> Path:
    """Bar panels of top-``top`` next-token distributions. ``panels``: a list of panels (one row) or a list of
    rows (lists of panels), each panel ``{"label", "scale", "tokens", "probs" (descending), "method", "note"}``.
    Zero-probability entries are not drawn; each panel states its scale and its top-``top`` mass."""
    rows = [list(r) for r in panels] if panels and isinstance(panels[0], (list, tuple)) else [list(panels)]
    rows = [r for r in rows if r]
    if not rows:
        raise ValueError("token_distribution_figure: no panels")
    ncol = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(3.3 * ncol, 3.0 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(ncol):
            ax = axes[r, c]
            if c >= len(row):
                ax.axis("off")
                continue
            pnl = row[c]
            pairs = [(t, p) for t, p in zip(pnl["tokens"], pnl["probs"], strict=True) if p > 0][:top]
            toks = [repr(t)[1:-1] if isinstance(t, str) else str(t) for t, _ in pairs]
            probs = [p for _, p in pairs]
            ax.bar(range(len(probs)), probs, color=COLORS.get(pnl.get("method", ""), "#4c72b0"))
            ax.set_xticks(range(len(probs)))
            ax.set_xticklabels(toks, rotation=90, fontsize=7)
            ax.set_xlim(-0.7, top - 0.3)  # same bar width in every panel
            ax.set_ylim(0, max(0.05, max(probs) * 1.12) if probs else 1)
            ax.tick_params(axis="y", labelsize=7)
            ax.set_title(f"{pnl['label']}\n[{pnl['scale']}]", fontsize=9)
            ax.text(
                0.98,
                0.95,
                f"top-{top} mass {sum(probs):.2f}" + (f"\n{pnl['note']}" if pnl.get("note") else ""),
                transform=ax.transAxes,
                ha="right",
                va="top",
                fontsize=7,
            )
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, out)


if __name__ == "__main__":
    from ts2 import cli

    cli.run(main, interrupted=cli.RERUN)
