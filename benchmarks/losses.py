"""Loss benchmark (TS², ICLR 2026; issue #3): forward+backward time and peak memory of every loss.

Two sections, each figure also given as a ratio to a torch cross-entropy baseline run in the same process:
- "logits": the loss on given logits [N, V] (fp32, requires grad): torch CE (baseline), the fast exact
  kernels (`ts2.losses.<id>_loss`, i.e. `LOSSES[id]()`), optionally the reference losses (`--reference`,
  `ts2.losses.reference`), and an "official_style" row: the
  entmax package's full-sort `sparsemax_loss` plus the softmax tail penalty computed as the official TS²
  code does (PAPER.md §6: a second full-sort sparsemax for the mask, softmax, masks, all [N, V]).
- "linear": from hidden [N, d] and the head weight [V, d]: unfused ``x @ W.T`` + torch CE (baseline), the
  fused path (`ts2.losses.fused`) and, for comparison, the unfused fast loss.

Logits are 2 * N(0, 1) (hidden states and weight scaled to give the same), labels uniform; every token
counts. Timing noise: the CPU may be shared, so compare the ratios of one run, not absolute times.
Rows whose estimated memory exceeds 80 % of MemAvailable are skipped and reported as such.

    python benchmarks/losses.py                         # default: V=128256, N=2048; linear N=8192
    python benchmarks/losses.py --V 32000 --N 512 2048 --linear-N 0 --losses ts2 sparsemax
    python benchmarks/losses.py --full                  # every V x N (slow; skips what does not fit)
    python benchmarks/losses.py --quick                 # a smoke run in seconds (V=4096, N=256)

Only the default run writes results/benchmarks/losses.csv (the committed file the README cites); any other
run writes a scratch CSV (printed) unless ``--csv`` names one.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import csv_path, measure, mem_available_mib, provenance  # noqa: E402

from ts2.losses import LOSSES, TokenLoss, TS2Loss  # noqa: E402
from ts2.losses.fused import fused_linear_loss  # noqa: E402

# Benchmarked losses: every id at its defaults, and TS²'s adaptive setting.
BENCH_LOSSES: dict[str, TokenLoss] = {
    **{loss_id: cls() for loss_id, cls in LOSSES.items()},
    "ts2_adaptive": TS2Loss(adaptive=True),
}

ALPHA, CLAMP = 0.25, 0.99  # the official Llama run


def official_style_ts2(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """TS² as the official code computes it (PAPER.md §6): entmax's full-sort sparsemax loss, then a
    second full-sort sparsemax for the support mask, a materialised softmax and masks, tail clamped."""
    import entmax

    spm = entmax.sparsemax_loss(logits, labels).mean()
    with torch.no_grad():
        head = entmax.sparsemax(logits, dim=-1) > 0
        head.scatter_(1, labels.unsqueeze(1), True)
    probs = torch.softmax(logits, dim=-1)
    tail = (probs * (~head)).sum(-1).clamp(max=CLAMP)
    return spm + ALPHA * (-torch.log1p(-tail)).mean()


@dataclass
class Row:
    section: str
    V: int
    N: int
    d: int
    name: str
    ms: float
    time_vs_ce: float
    peak_mib: float
    mem_vs_ce: float
    reps: int
    note: str = ""


def _fits(need_mib: float) -> bool:
    return need_mib < 0.8 * mem_available_mib()


def _run(
    rows: list[Row],
    section: str,
    shape: tuple[int, int, int],
    name: str,
    fn: Callable[[], object],
    need_mib: float,
    args: argparse.Namespace,
    baseline: Row | None,
) -> Row:
    vocab, n, d = shape
    if not _fits(need_mib):
        row = Row(
            section,
            vocab,
            n,
            d,
            name,
            math.nan,
            math.nan,
            math.nan,
            math.nan,
            0,
            f"skipped: ~{need_mib:.0f} MiB",
        )
    else:
        m = measure(fn, reps=args.reps, budget_s=args.budget_s)
        ref_ms = baseline.ms if baseline else m.median_ms
        ref_mem = baseline.peak_mib if baseline else m.peak_mib
        row = Row(
            section,
            vocab,
            n,
            d,
            name,
            m.median_ms,
            m.median_ms / ref_ms,
            m.peak_mib,
            m.peak_mib / ref_mem,
            m.reps,
        )
    rows.append(row)
    print(
        f"{section:7s} V={vocab:<7d} N={n:<5d} d={d:<4d} {name:26s} {row.ms:10.1f} ms {row.time_vs_ce:7.2f}x "
        f"{row.peak_mib:9.0f} MiB {row.mem_vs_ce:6.2f}x  {row.note}",
        flush=True,
    )
    return row


def bench_logits(vocab: int, n: int, args: argparse.Namespace, rows: list[Row]) -> None:
    gen = torch.Generator().manual_seed(args.seed)
    nv_mib = n * vocab * 4 / 2**20
    if not _fits(5 * nv_mib):
        print(f"logits  V={vocab} N={n}: skipped, needs ~{5 * nv_mib:.0f} MiB")
        return
    z = (2.0 * torch.randn(n, vocab, generator=gen)).requires_grad_()
    y = torch.randint(0, vocab, (n,), generator=gen)

    def step(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def fn() -> None:
            loss_fn(z, y).backward()
            z.grad = None

        return fn

    shape = (vocab, n, 0)
    base = _run(rows, "logits", shape, "torch_ce", step(F.cross_entropy), 4 * nv_mib, args, None)
    for loss in args.losses:
        _run(rows, "logits", shape, f"fast:{loss}", step(BENCH_LOSSES[loss]), 2 * nv_mib, args, base)
    if args.reference:
        for loss in args.losses:
            reference = BENCH_LOSSES[loss].reference
            _run(rows, "logits", shape, f"reference:{loss}", step(reference), 8 * nv_mib, args, base)
    if args.official:
        _run(rows, "logits", shape, "official_style:ts2", step(official_style_ts2), 10 * nv_mib, args, base)


def bench_linear(vocab: int, n: int, d: int, args: argparse.Namespace, rows: list[Row]) -> None:
    gen = torch.Generator().manual_seed(args.seed)
    nv_mib = n * vocab * 4 / 2**20
    x = torch.randn(n, d, generator=gen).requires_grad_()
    w = (torch.randn(vocab, d, generator=gen) * (2.0 / math.sqrt(d))).requires_grad_()
    y = torch.randint(0, vocab, (n,), generator=gen)

    def step(loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def fn() -> None:
            loss_fn().backward()
            x.grad = w.grad = None

        return fn

    shape = (vocab, n, d)
    base = _run(
        rows,
        "linear",
        shape,
        "unfused:torch_ce",
        step(lambda: F.cross_entropy(x @ w.t(), y)),
        4 * nv_mib,
        args,
        None,
    )
    for loss in args.linear_losses:
        fused = step(
            lambda loss=loss: fused_linear_loss(x, w, y, BENCH_LOSSES[loss], chunk_size=args.chunk_size)
        )
        _run(rows, "linear", shape, f"fused:{loss}", fused, 600, args, base)
        if args.linear_unfused_fast:
            unfused = step(lambda loss=loss: BENCH_LOSSES[loss](x @ w.t(), y))
            _run(rows, "linear", shape, f"unfused:fast:{loss}", unfused, 3 * nv_mib, args, base)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--V", type=int, nargs="+", default=[128256], help="vocabulary sizes (logits section)"
    )
    parser.add_argument("--N", type=int, nargs="+", default=[2048], help="token counts (logits section)")
    parser.add_argument("--losses", nargs="+", default=list(BENCH_LOSSES), choices=list(BENCH_LOSSES))
    parser.add_argument("--reference", action="store_true", help="also time the reference losses (full sort)")
    parser.add_argument(
        "--no-official", dest="official", action="store_false", help="skip the official-style row"
    )
    parser.add_argument("--linear-V", type=int, nargs="+", default=[128256])
    parser.add_argument(
        "--linear-N", type=int, nargs="+", default=[8192], help="0 to skip the linear section"
    )
    parser.add_argument(
        "--d", type=int, default=128, help="hidden size of the linear section (CPU: keep small)"
    )
    parser.add_argument("--linear-losses", nargs="+", default=["ce", "ts2"], choices=list(BENCH_LOSSES))
    parser.add_argument(
        "--linear-unfused-fast", action="store_true", help="also time unfused x @ W.T + fast loss"
    )
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="fused rows per chunk (default: ~256 MiB)"
    )
    parser.add_argument(
        "--full", action="store_true", help="V in {32000, 128256, 152064} x N in {512, 2048, 8192}"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: V=4096, N=256, linear N=256, 1 rep (CSV: scratch)"
    )
    parser.add_argument("--reps", type=int, default=3, help="timed calls per row (after one warmup call)")
    parser.add_argument(
        "--budget-s", type=float, default=20.0, help="cap on the timed calls of one row, seconds"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--csv",
        type=Path,
        default=None,
        help="default: results/benchmarks/losses.csv for the default run only, else a scratch file",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = make_parser()
    args = parser.parse_args(argv)
    out = csv_path("losses.csv", parser, args, args.csv)  # before --full/--quick change the sizes
    if args.full:
        args.V, args.N = [32000, 128256, 152064], [512, 2048, 8192]
        args.linear_V, args.linear_N = [32000, 128256, 152064], [2048, 8192]
    if args.quick:
        args.V, args.N, args.linear_V, args.linear_N, args.reps = [4096], [256], [4096], [256], 1
    if args.threads:
        torch.set_num_threads(args.threads)

    prov = provenance()
    print(" ".join(f"{k}={v}" for k, v in prov.items()))
    print("ratios: time and peak memory over the section's torch CE baseline, same V, N, process")
    rows: list[Row] = []
    for vocab in args.V:
        for n in args.N:
            bench_logits(vocab, n, args, rows)
    for vocab in args.linear_V:
        for n in (n for n in args.linear_N if n > 0):
            bench_linear(vocab, n, args.d, args, rows)

    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        fields = list(asdict(rows[0]).keys()) + list(prov.keys()) if rows else []
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({**asdict(row), **prov})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
