"""Every command in the READMEs' ```bash blocks runs as written (issue #22, "README commands").

**What a command is.** :func:`readme_commands` reads every tracked ``README.md`` and takes, from each ```bash (or
```sh) block, one command per logical line: comment lines are dropped, a trailing ``# …`` comment (a ``#`` after
a blank, outside quotes) is cut, backslash continuations are joined with a space, and a ``for``/``while``/``if``
compound spanning several lines is one command (its lines joined with newlines). ``&&``/``;`` chains stay one
command. A line made only of variable assignments (``R="runs/…"``, ``export OPENAI_API_KEY=…``, ``pids=()``) is
not a command: it is the *prelude* of the block's later commands, which run after it in the same shell (so ``$R``
means what the README says). A command is keyed by its text with runs of blanks collapsed (:attr:`Command.key`).

**How each is checked.** ``CHECKS`` maps every key to a :class:`Check`; a README command missing from it, or an
entry that matches no README command, fails :func:`test_every_readme_command_is_classified` /
:func:`test_no_stale_entries`. The kinds:

- ``run``: run as written (``bash -c``, after its prelude) and must exit 0 and leave the files it promises,
  with only the size overrides the README documents appended (``debug=cpu``; ``eval.sample.n/limit/
  max_new_tokens``; ``rm.tiny.*``, the ``TinyRMSpec`` fields of experiments/table1/README.md). They run in
  order, in one scratch copy of the repo, so the README's chain train → sample → evaluate → report runs on one
  debug training run (``runs/train/method=ts2`` and ``runs/table1_tiny/method=ts2`` link to the debug run of
  ``python -m ts2.train method=ts2``); a ``fresh`` one gets a scratch copy of its own. A command that ends in
  ``&`` is followed by ``wait $!``, so that its own exit status is checked.
- ``dry``: a long make target or script, run with ``DRY_RUN=1`` (``make -n`` where the target has none, or where
  the plan is another entry's with one knob changed: each plan costs 20–40 s): exit 0 (or the entry's
  ``status``) and print its plan. The same dry command is run once.
- ``refusal``: needs a GPU, an API key, the hub or a cluster: exit ≠ 0 with one line holding the given text, no
  traceback (but ``accelerate launch``'s own, after the refusal, where its child exits 1), and no file written
  (the scratch copy but its ``tmp/``, and the repo's ``git status``, unchanged). Most run in a scratch copy with
  no runs; ``in_chain`` ones after the ``run`` commands, on their run (the judge's refusal needs samples).
- ``size``: too long even at debug size (the entry says why): the Hydra command composes (``python -m ts2.X
  <its overrides> --cfg job``, a launcher prefix and ``-m`` dropped), an argparse script answers ``--help``,
  and a shell compound passes ``bash -n``.

**Where.** Every command runs with the scratch copy as its working directory: symlinks to the repo's tracked
top-level entries, a copy of ``results/``, its own ``runs/``, ``.venv`` linked to the test's virtual
environment (first on ``PATH``, so ``python`` is that interpreter) and ``TMPDIR`` inside it; so nothing lands in
the repo's ``runs/``, ``results/`` or ``assets/`` (checked at the end). ``make`` runs with ``-o`` on its
install stamps, so that the ``install`` prerequisite is taken as done: the test checks the targets, never the
installer (``make test`` has just run it in CI).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Size overrides the READMEs document: README.md "Sampling, scoring, tables" (eval.sample.n=8 eval.sample.limit=20),
# experiments/table1/README.md (+rm.tiny.epochs=6: the tiny judge's TinyRMSpec fields), debug=cpu ("seconds").
DEBUG = ("debug=cpu",)
SIZES = ("eval.sample.n=2", "eval.sample.limit=2", "eval.sample.max_new_tokens=8")
SMALL_RM = ("rm.tiny.epochs=1", "rm.tiny.max_train_pairs=32")
RUN = (
    "runs/train/method=ts2"  # the README's run folder: here the debug run of `python -m ts2.train method=ts2`
)


# --- parsing ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    where: str  # README path:line
    text: str  # as written (continuations joined, comments cut)
    prelude: tuple[str, ...]  # the block's assignment lines before it

    @property
    def key(self) -> str:
        return " ".join(self.text.split())


def _cut_comment(line: str) -> str:
    """``line`` without a trailing ``# …`` comment: a ``#`` at the start or after a blank, outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _is_assignment(line: str) -> bool:
    try:
        words = shlex.split(line)
    except ValueError:
        return False
    words = words[1:] if words[:1] == ["export"] else words
    return bool(words) and all(re.match(r"[A-Za-z_]\w*\+?=", w) for w in words)


def _depth(line: str) -> int:
    """Compound openers (``do``, ``then``) minus closers (``done``, ``fi``) on one line."""
    words = re.findall(r"(?:^|(?<=[\s;]))(do|then|done|fi)(?=[\s;]|$)", line)
    return sum(1 if w in ("do", "then") else -1 for w in words)


def parse_readme(text: str, name: str) -> list[Command]:
    """The commands of ``text``'s ```bash/```sh blocks (module docstring)."""
    out: list[Command] = []
    block: list[tuple[int, str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        fence = raw.strip()
        if block is None:
            if fence in ("```bash", "```sh", "```shell"):
                block = []
            continue
        if fence == "```":
            out += _block_commands(block, name)
            block = None
            continue
        block.append((number, raw))
    return out


def _block_commands(lines: list[tuple[int, str]], name: str) -> list[Command]:
    logical: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, raw in lines:
        if raw.strip().startswith("#") and pending is None:
            continue
        line = _cut_comment(raw).strip()
        if pending is not None:
            number, line = pending[0], f"{pending[1]} {line}"
            pending = None
        if line.endswith("\\"):
            pending = (number, line[:-1].rstrip())
            continue
        if line:
            logical.append((number, line))
    commands, prelude, compound, depth = [], [], None, 0
    for number, line in logical:
        if compound is not None:
            compound = (compound[0], f"{compound[1]}\n{line}")
            depth += _depth(line)
            if depth <= 0:
                commands.append(Command(f"{name}:{compound[0]}", compound[1], tuple(prelude)))
                compound = None
            continue
        if _is_assignment(line):
            prelude.append(line)
        elif re.match(r"(for|while|until|if)\s", line) and _depth(line) > 0:
            compound, depth = (number, line), _depth(line)
        else:
            commands.append(Command(f"{name}:{number}", line, tuple(prelude)))
    return commands


def readme_commands() -> list[Command]:
    """Every command of every tracked README.md (``git ls-files``; every README.md below the repo without git)."""
    try:
        names = subprocess.run(
            ["git", "ls-files", "*README.md"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        names = [str(p.relative_to(REPO)) for p in REPO.rglob("README.md") if ".venv" not in p.parts]
    return [c for n in sorted(names) for c in parse_readme((REPO / n).read_text(encoding="utf-8"), n)]


def test_parser_joins_continuations_cuts_comments_and_keeps_compounds():
    text = "\n".join([
        "```bash",
        'R="runs/x"                      # a run folder',
        "# a comment line \\",
        "python -m ts2.sample \"run_dir='$R'\" \\",
        "    eval=alpaca_eval   # -> samples",
        "for i in 1 2; do   # loop",
        "  echo \"#$i\" &",
        "done",
        "for p in a; do wait; done",
        "```",
        "```python",
        "x = 1",
        "```",
    ])  # fmt: skip
    got = parse_readme(text, "R.md")
    assert [(c.where, c.text, c.prelude) for c in got] == [
        ("R.md:4", "python -m ts2.sample \"run_dir='$R'\" eval=alpaca_eval", ('R="runs/x"',)),
        ("R.md:6", 'for i in 1 2; do\necho "#$i" &\ndone', ('R="runs/x"',)),
        ("R.md:9", "for p in a; do wait; done", ('R="runs/x"',)),
    ]
    assert Command("x", "SCALE=tiny  a.sh", ()).key == "SCALE=tiny a.sh"


# --- the table -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    kind: str  # run | dry | refusal | size
    why: str
    extra: tuple[str, ...] = ()  # run: documented size overrides appended
    files: tuple[str, ...] = ()  # run: files it must leave (relative to the scratch copy)
    expect: str = ""  # dry: text of the plan; refusal: text of the error line
    make_n: bool = False  # dry: `make -n` (the target has no DRY_RUN)
    launcher_traceback: bool = False  # refusal under accelerate: its own CalledProcessError traceback follows
    fresh: bool = False  # run: in a scratch copy of its own, not the chain's
    status: int = 0  # dry: the exit status (a plan that finds a prerequisite missing exits non-zero)
    in_chain: bool = False  # refusal: in the chain's scratch copy, after its runs (extra appended)


def _run(why: str, *files: str, extra: tuple[str, ...] = ()) -> Check:
    return Check("run", why, extra=extra, files=files)


def _dry(expect: str, why: str = "a long job: its plan", make_n: bool = False) -> Check:
    return Check("dry", why, expect=expect, make_n=make_n)


def _refusal(expect: str, why: str, launcher_traceback: bool = False) -> Check:
    return Check("refusal", why, expect=expect, launcher_traceback=launcher_traceback)


def _size(why: str) -> Check:
    return Check("size", why)


NO_GPU = "needs CUDA GPUs"
OFFLINE = "not in the hub cache while offline"
NO_DIR = "is not a directory"
NO_SLURM = "srun is not on PATH"
PLACEHOLDER = "run_dir=... is a placeholder (the run above is sampled and scored as written)"
SAMPLES = f"{RUN}/samples"
METRICS = f"{RUN}/metrics"

CHECKS: dict[str, Check] = {
    # README.md: Quickstart
    "make reproduce-table1": _dry("report -> results/table1_tiny"),
    "make test": _dry("-m pytest", "the default test tier itself (this file is part of it)", make_n=True),
    # README.md: Training
    "python -m ts2.train method=ts2": _run(
        "debug=cpu: the chain's training run",
        "runs/train/debug=cpu,method=ts2/model/config.json",
        extra=DEBUG,
    ),
    "python -m ts2.train method=gem debug=cpu": _run(
        "as written", "runs/train/debug=cpu,method=gem/model/config.json"
    ),
    "python -m ts2.train -m method=ts2 loss.alpha=0.1,0.25,1.0 name=sweep": _run(
        "debug=cpu",
        *(
            f"runs/sweep/debug=cpu,loss.alpha={a},method=ts2/model/config.json"
            for a in ("0.1", "0.25", "1.0")
        ),
        extra=DEBUG,
    ),
    "python -m ts2.train method=ts2 train.resume=true": _run(
        "debug=cpu: accepts the finished run as done", "runs/train/debug=cpu,method=ts2/run.json", extra=DEBUG
    ),
    "python -m ts2.train method=ts2 logger=wandb": Check(
        "run",
        "debug=cpu; WANDB_MODE=offline; its own scratch copy (logger= is not part of the run folder's name)",
        extra=DEBUG,
        files=("runs/train/debug=cpu,method=ts2/wandb",),
        fresh=True,
    ),  # fmt: skip
    "accelerate launch -m ts2.train experiment=paper_llama31_8b method=ts2": _refusal(
        NO_GPU, "8 GPUs", launcher_traceback=True
    ),
    # README.md: Sampling, scoring, tables (R = the debug run)
    "python -m ts2.sample \"run_dir='$R'\" 'eval=[alpaca_eval,creative_poem,humaneval]'": _run(
        "eval.sample.* sizes",
        *(f"{SAMPLES}/{b}.jsonl" for b in ("alpaca_eval", "creative_poem", "humaneval")),
        extra=SIZES,
    ),
    "python -m ts2.evaluate \"run_dir='$R'\" 'eval=[alpaca_eval,creative_poem,humaneval]' rm=tiny": _run(
        "eval.sample.* sizes, a 1-epoch tiny judge on 32 pairs",
        *(f"{METRICS}/{b}.json" for b in ("alpaca_eval", "creative_poem", "humaneval")),
        extra=SIZES + SMALL_RM,
    ),
    "python -m ts2.report runs_dir=runs/table1_tiny name=table1_tiny": _run(
        "runs/table1_tiny holds the scored debug run", "results/table1_tiny.md", "results/table1_tiny.csv"
    ),
    # README.md: Scale-out
    "make install-gpu": _dry(
        "gpu_stack.py",
        "it reinstalls the environment's torch (the GPU check: tests/test_gpu_stack.py)",
        make_n=True,
    ),
    "make train-paper METHOD=ts2": _refusal("needs deepspeed", "8 GPUs and DeepSpeed (make install-gpu)"),
    "make train-paper METHOD=ts2 BACKEND=fsdp2": _dry(
        "BACKEND=fsdp2", "the refusal of `make train-paper METHOD=ts2` again (10 s of launcher)", make_n=True
    ),
    'make train-paper METHOD=gem EXPERIMENT=paper_qwen2_7b ARGS="train.resume=true"': _dry(
        "experiment=paper_qwen2_7b method=gem train.resume=true", "as above", make_n=True
    ),
    ".venv/bin/accelerate launch --config_file conf/accelerate/deepspeed_zero2.yaml -m ts2.train "
    "experiment=paper_llama31_8b method=ts2": _size(
        "8 GPUs; the launch's refusal is `accelerate launch` above"
    ),
    ".venv/bin/accelerate launch --config_file conf/accelerate/fsdp2.yaml -m ts2.train experiment=paper_llama31_8b "
    "method=ts2 train.deepspeed=null train.gradient_checkpointing=false": _size("as above"),
    "torchrun --nproc_per_node 8 -m ts2.train experiment=paper_llama31_8b method=ts2": _size(
        "8 start-ups of ts2.train for the same refusal"
    ),
    "for i in $(seq 0 7); do CUDA_VISIBLE_DEVICES=$i python -m ts2.sample \"run_dir='$RUN'\" eval=alpaca_eval "
    "sampler=vllm shard=$i/8 & pids+=($!) done": _size(
        "8 GPU samplers; one shard's refusal is checked below"
    ),
    'for p in "${pids[@]}"; do wait "$p" || exit 1; done': _size("waits for the loop above"),
    'python -m ts2.sampling.shards merge "$RUN"': _refusal(NO_DIR, "the shards come from 8 GPUs"),
    "CUDA_VISIBLE_DEVICES=0,1 python -m ts2.sample \"run_dir='$RUN'\" eval=alpaca_eval sampler=vllm "
    "sampler.tensor_parallel_size=2 shard=0/4 &": _refusal(NO_DIR, "a paper run on 2 GPUs"),
    "python -m ts2.train -m hydra/launcher=slurm experiment=paper_llama31_8b method=ce,gem,ts2": _refusal(
        NO_SLURM, "a SLURM cluster"
    ),
    "python -m ts2.train -m hydra/launcher=slurm experiment=paper_llama31_8b method=ts2 "
    "loss.alpha=0.1,0.25,0.5,1.0": _refusal(NO_SLURM, "a SLURM cluster"),
    # README.md: Re-scoring the released checkpoint
    "DRY_RUN=1 make rescore-released": _dry("Commands:"),
    "make rescore-released": _refusal(OFFLINE, "the hub and a GPU"),
    # README.md, experiments/alpha_sweep/README.md: α sweeps
    "make sweep-alpha": _dry("name=alpha_sweep_tiny"),
    "DRY_RUN=1 bash experiments/alpha_sweep/run.sh": _dry("name=alpha_sweep_tiny", "as written"),
    'ALPHAS=0,0.25,1 CLAMPS=null OVERRIDES="pipeline.sample.prompts=20" make sweep-alpha': _dry(
        "loss.alpha=0,0.25,1"
    ),
    # evaluation/README.md
    "python -m ts2.sample \"run_dir='runs/train/method=ts2'\" eval=alpaca_eval": _run(
        "eval.sample.* sizes (resumes the complete file)", f"{SAMPLES}/alpaca_eval.jsonl", extra=SIZES
    ),
    "python -m ts2.sample run_dir=... 'eval=[alpaca_eval,humaneval]'": _size(PLACEHOLDER),
    "python -m ts2.evaluate \"run_dir='runs/train/method=ts2'\" 'eval=[alpaca_eval,creative_poem,humaneval]' "
    "rm=tiny": _run(
        "eval.sample.* sizes, the small tiny judge (rescores)",
        f"{METRICS}/humaneval.json",
        extra=SIZES + SMALL_RM,
    ),  # fmt: skip
    "python -m ts2.evaluate samples_dir=/my/samples metrics_dir=/my/metrics eval=creative_story": _refusal(
        "No sample file /my/samples/creative_story.jsonl", "samples from elsewhere (a placeholder folder)"
    ),
    "python -m ts2.evaluate run_dir=... eval=humaneval": _size(PLACEHOLDER),
    "for k in reference shuffled random; do python -m ts2.sample model=tiny_base sampler=control sampler.kind=$k "
    "eval=alpaca_eval \"out_dir='runs/table1_tiny/control=$k/samples'\" sample.n=8 sample.limit=40 python -m "
    "ts2.evaluate \"run_dir='runs/table1_tiny/control=$k'\" eval=alpaca_eval rm=tiny limit=40 done": _size(
        "3 controls x 40 prompts x 8 and the full tiny judge; tests/test_pipeline.py runs them as pipeline stages"
    ),
    "python -m ts2.sample model=tiny_base eval=alpaca_eval \"out_dir='runs/table1_tiny/control=base/samples'\" "
    "sample.n=8 sample.limit=40 sample.max_new_tokens=48": _size("40 x 8 samples: as above"),
    "python -m ts2.sampling.controls runs/table1_tiny/control=base base --model tiny_base": _size(
        "marks the samples above"
    ),
    "python -m ts2.evaluate \"run_dir='runs/table1_tiny/control=base'\" eval=alpaca_eval rm=tiny limit=40": _size(
        "scores the samples above"
    ),
    "python -m ts2.sample run_dir=... eval=humaneval sample.n=8 sample.limit=20": _size(PLACEHOLDER),
    "python -m ts2.sample model_path=/ckpt/llama-ts2 model=llama31_8b sampler=vllm sampler.tensor_parallel_size=8 "
    "eval=humaneval": _refusal("is a local path but not a folder", "a paper checkpoint on 8 GPUs"),
    "python -m ts2.sample -m run_dir=... eval=creative_poem,creative_story": _size(PLACEHOLDER),
    "python -m ts2.sample model=tiny eval=openllm_gsm8k sample.limit=4 sample.max_new_tokens=16": _run(
        "as written (the CPU smoke run)", "runs/samples/tiny/openllm_gsm8k.jsonl"
    ),
    # evaluation/alpaca_eval, creative_writing, mt_bench_101, openllm, openllm/harness READMEs
    "python -m ts2.sample \"run_dir='runs/train/method=ts2'\" eval=alpaca_eval sampler=vllm": _size(
        "vLLM's engine start-up (up to a minute on shared cores); the vllm tier, tests/sampling/test_vllm.py, runs it"
    ),
    "python -m ts2.sample \"run_dir='runs/train/method=ts2'\" 'eval=[creative_poem,creative_story]'": _run(
        "eval.sample.* sizes", f"{SAMPLES}/creative_story.jsonl", extra=SIZES
    ),
    "python -m ts2.evaluate \"run_dir='runs/train/method=ts2'\" 'eval=[creative_poem,creative_story]'": _run(
        "eval.sample.* sizes, the small tiny judge", f"{METRICS}/creative_story.json", extra=SIZES + SMALL_RM
    ),
    "python -m ts2.sample \"run_dir='runs/train/method=ts2'\" eval=mt_bench_101": _run(
        "eval.sample.* sizes (greedy: n stays 1)", f"{SAMPLES}/mt_bench_101.jsonl", extra=SIZES[1:]
    ),
    "python -m ts2.evaluate \"run_dir='runs/train/method=ts2'\" eval=mt_bench_101": Check(
        "refusal",
        "an OpenAI-compatible judge (no network here); on the chain's samples, at their sizes",
        expect="is unreachable",
        extra=SIZES[1:],
        in_chain=True,
    ),  # fmt: skip
    "python -m ts2.sample run_dir=... 'eval=[openllm_arc_challenge,openllm_hellaswag,openllm_winogrande,"
    "openllm_mmlu,openllm_truthfulqa,openllm_gsm8k]'": _size(PLACEHOLDER),
    "python -m ts2.evaluate run_dir=... 'eval=[openllm_arc_challenge,openllm_gsm8k]'": _size(PLACEHOLDER),
    "python -m ts2.evaluate run_dir=... eval=openllm_gsm8k eval.metrics.parser=strict": _size(PLACEHOLDER),
    "python -m ts2.evaluate \"run_dir='runs/train/method=ts2'\" eval=openllm_harness": _size(
        "lm-eval-harness over six full tasks (minutes even on the tiny model)"
    ),
    "python -m ts2.evaluate run_dir=... eval=openllm_harness eval.harness.backend=vllm eval.harness.dtype=bfloat16 "
    "'+eval.harness.model_args={gpu_memory_utilization: 0.8}'": _size(PLACEHOLDER + "; CUDA vLLM"),
    "python -m ts2.evaluate run_dir=... eval=openllm_harness limit=2": _size(PLACEHOLDER),
    "python -m ts2.evaluate eval=openllm_harness eval.harness.model_path=meta-llama/Llama-3.1-8B "
    "'eval.harness.tasks=[gsm8k]'": _refusal(OFFLINE, "the hub (a gated model)"),
    # experiments/*/README.md
    "python -m experiments.alpha_selection.run --scale tiny --write-config": _size("~6 min of two cores"),
    "python -m experiments.alpha_selection.run --scale small --write-config": _size("~12 min"),
    "python -m experiments.judge_selection.run --scale small [--build]": _size(
        "~10 min; [--build] is optional"
    ),
    "python -m experiments.judge_selection.run --scale tiny": _size("~25 min of one core"),
    "make known-distribution": _dry("--sft-answer mode --suffix _mode", "~14 min into results/", make_n=True),
    "make known-distribution ARGS=--quick": _run(
        "as written: the quick run into $TMPDIR", "tmp/ts2-known-distribution/known_distribution/summary.md"
    ),
    "python -m experiments.known_distribution.run --quick --out /tmp/kd": _size(
        "the run above without make (it writes to /tmp/kd, outside the scratch copy)"
    ),
    "python -m experiments.known_distribution.run --sft-answer mode --methods ce ts2 ts2:loss.alpha=1.0 --seeds 3 "
    "--suffix _mode_alpha3": _size("3 methods x 3 seeds at full size (minutes)"),
    "SCALE=tiny experiments/mt_bench_101/run.sh": _refusal(
        "No runs in runs/table1_tiny/", "Table 1's runs and a key"
    ),
    "SCALE=paper TP=1 JUDGE_MODEL=gpt-4 experiments/mt_bench_101/run.sh": _refusal(
        "No runs in runs/table1_llama31_8b/", "paper runs and a key"
    ),
    "SCALE=tiny experiments/openllm/run.sh": _refusal("No runs in runs/table1_tiny/", "Table 1's runs"),
    "SCALE=paper TP=1 experiments/openllm/run.sh": _refusal(
        "No runs in runs/table1_llama31_8b/", "paper runs"
    ),
    # experiments/table1/README.md
    "make reproduce-table1 SCALE=small": _dry("table1_small"),
    "DRY_RUN=1 make reproduce-table1": _dry("report -> results/table1_tiny", "as written"),
    "DRY_RUN=1 SCALE=paper make reproduce-table1": Check(
        "dry",
        "as written: the plan exits 1 (make: 2) when a prerequisite is missing, here GPUs and the hub",
        expect="[MISSING] GPUs",
        status=2,
    ),  # fmt: skip
    "SEEDS=3 make reproduce-table1": _dry(
        "SCALE=tiny", "the plan is tests/test_plan.py's (20 s each)", make_n=True
    ),
    "METHODS=ce,ts2 make reproduce-table1": _dry("SCALE=tiny", "as above", make_n=True),
    'OVERRIDES="pipeline.sample.prompts=4 pipeline.sample.n=2" make reproduce-table1': _dry(
        "SCALE=tiny", "as above", make_n=True
    ),
    "RUN_NAME=check RESULTS_DIR=/tmp/check make reproduce-table1": _dry(
        "SCALE=tiny", "as above", make_n=True
    ),
    "make tiny-study": _dry("table1_tiny_study", "~45 min; its plan costs 30 s", make_n=True),
    "make tiny-base-rebuild": _dry("--force --commit", "~1 h of one core", make_n=True),
    "make tiny-base": _run("as written: finds the committed base"),
    "python experiments/table1/sft_sizing.py --experiment table1_small --eval-every 6": _size("~5 min"),
    "python experiments/table1/sft_sizing.py --experiment table1_small --eval-every 6 train.learning_rate=3e-4": _size(
        "~5 min"
    ),
    "python experiments/table1/sft_sizing.py --experiment table1_small --eval-every 6 method=ts2": _size(
        "~5 min"
    ),
}


if importlib.util.find_spec("deepspeed"):  # a GPU node's environment: the launch itself refuses
    CHECKS["make train-paper METHOD=ts2"] = _refusal(NO_GPU, "8 GPUs", launcher_traceback=True)

# --- running ---------------------------------------------------------------------------------------------------

_NOT_LINKED = {
    ".git",
    ".venv",
    "runs",
    "results",
    "multirun",
    "outputs",
    ".cache",
    ".pytest_cache",
    ".ruff_cache",
}
_STAMPS = " ".join(f"-o .venv/.ts2-installed-{f}" for f in ("cpu", "cuda", "none"))


def _scratch(root: Path) -> Path:
    """A scratch copy of the repo (module docstring)."""
    root.mkdir(parents=True)
    for entry in REPO.iterdir():
        if entry.name not in _NOT_LINKED:
            (root / entry.name).symlink_to(entry)
    shutil.copytree(REPO / "results", root / "results")
    (root / ".venv").symlink_to(Path(sys.prefix))
    (root / "tmp").mkdir()
    return root


def _env(root: Path) -> dict[str, str]:
    drop = (  # as in a fresh shell
        "MAKEFLAGS",
        "MFLAGS",
        "MAKELEVEL",
        "ARGS",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "WANDB_API_KEY",
        "HYDRA_FULL_ERROR",
        "DRY_RUN",
        "SCALE",
        "PY",
        "WANDB_SERVICE",
    )
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", TMPDIR=str(root / "tmp"))  # fmt: skip
    return env


def _script(cmd: Command, text: str) -> str:
    text = re.sub(r"(?<![\w./-])make(?=\s|$)", f"make {_STAMPS}", text, count=1)
    if text.rstrip().endswith("&"):
        text += "\nwait $!"  # a backgrounded command: its own exit status
    return "\n".join([*cmd.prelude, text])


def shell(cmd: Command, text: str, root: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", _script(cmd, text)],
        cwd=root,
        env=_env(root),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file (size, mtime) and folder under ``root``, symlinks not followed (a folder's mtime is left out: a
    temporary file created and removed again changes it), but for the scratch copy's ``tmp/`` ($TMPDIR: torch
    makes its inductor cache folder there on import)."""
    out = {}
    for d, dirs, files in os.walk(root):
        if Path(d) == root:
            dirs[:] = [n for n in dirs if n != "tmp"]
        for n in dirs:
            out[str((Path(d) / n).relative_to(root))] = (0, 0)
        for n in files:
            st = (Path(d) / n).lstat()
            out[str((Path(d) / n).relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def _git_status() -> str:
    try:
        return subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, timeout=60
        ).stdout
    except OSError:
        return ""


def _by_kind(kind: str) -> list[Command]:
    seen, out = set(), []
    for c in readme_commands():
        if c.key in CHECKS and CHECKS[c.key].kind == kind and c.key not in seen:
            seen.add(c.key)
            out.append(c)
    if kind == "run":  # the table's order: training before the stages that read its run
        order = list(CHECKS)
        out.sort(key=lambda c: order.index(c.key))
    return out


def _ids(cmds: list[Command]) -> list[str]:
    return [c.where for c in cmds]


@pytest.fixture(scope="module")
def repo_untouched():
    """The repo's runs/, results/ and assets/ and its git status, before and after this module."""
    roots = [REPO / n for n in ("runs", "results", "assets")]
    before = ({str(r): _snapshot(r) for r in roots if r.is_dir()}, _git_status())
    yield
    assert ({str(r): _snapshot(r) for r in roots if r.is_dir()}, _git_status()) == before


@pytest.fixture(scope="module")
def bare(tmp_path_factory, repo_untouched) -> Path:
    """A scratch copy with no runs: for dry runs and refusals."""
    return _scratch(tmp_path_factory.mktemp("readme") / "bare")


@pytest.fixture(scope="module")
def chain(
    tmp_path_factory, repo_untouched
) -> tuple[Path, dict[str, tuple[Path, subprocess.CompletedProcess]]]:
    """Every ``run`` command, in the table's order, in one scratch copy; the README's ``runs/train/method=ts2``
    and ``runs/table1_tiny/`` are the debug run of ``python -m ts2.train method=ts2`` (symlinks to it)."""
    root = _scratch(tmp_path_factory.mktemp("readme") / "chain")
    done = {}
    for cmd in _by_kind("run"):
        check = CHECKS[cmd.key]
        if "ts2.sample" in cmd.text and not (root / RUN).exists():
            (root / RUN).symlink_to("debug=cpu,method=ts2")
        if "ts2.report" in cmd.text:
            (root / "runs" / "table1_tiny").mkdir(exist_ok=True)
            (root / "runs" / "table1_tiny" / "method=ts2").symlink_to(
                root / "runs" / "train" / "debug=cpu,method=ts2"
            )
        text = " ".join([cmd.text, *check.extra])
        where = _scratch(root.parent / f"fresh{len(done)}") if check.fresh else root
        start = time.monotonic()
        done[cmd.key] = (where, shell(cmd, text, where, timeout=600))
        print(f"{time.monotonic() - start:6.1f} s  {cmd.where}: {text}")
    return root, done


@pytest.mark.parametrize("cmd", _by_kind("run"), ids=_ids(_by_kind("run")))
def test_run(cmd, chain):
    root, res = chain[1][cmd.key]
    assert res.returncode == 0, f"{cmd.where}: {cmd.text}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    missing = [f for f in CHECKS[cmd.key].files if not (root / f).exists()]
    assert not missing, f"{cmd.where}: {cmd.text} left no {missing}"


_DRY: dict[str, subprocess.CompletedProcess] = {}


@pytest.mark.parametrize("cmd", _by_kind("dry"), ids=_ids(_by_kind("dry")))
def test_dry(cmd, bare):
    check = CHECKS[cmd.key]
    if check.make_n:
        text = re.sub(r"(?<![\w./-])make(?=\s|$)", "make -n --no-print-directory", cmd.text, count=1)
    else:
        text = cmd.text if "DRY_RUN=1" in cmd.text else f"DRY_RUN=1 {cmd.text}"
    before = _snapshot(bare)
    key = "\n".join([*cmd.prelude, text])
    if key not in _DRY:  # `make reproduce-table1` and `DRY_RUN=1 make reproduce-table1`: one plan
        _DRY[key] = shell(cmd, text, bare, timeout=300)
    res = _DRY[key]
    assert res.returncode == check.status, f"{cmd.where}: {text}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    assert check.expect in res.stdout, (
        f"{cmd.where}: {text} printed no {check.expect!r}:\n{res.stdout[-3000:]}"
    )
    assert _snapshot(bare) == before, f"{cmd.where}: {text} wrote files"


@pytest.mark.parametrize("cmd", _by_kind("refusal"), ids=_ids(_by_kind("refusal")))
def test_refusal(cmd, request):
    check = CHECKS[cmd.key]
    root = request.getfixturevalue("chain")[0] if check.in_chain else request.getfixturevalue("bare")
    before, status = _snapshot(root), _git_status()
    res = shell(cmd, " ".join([cmd.text, *check.extra]), root, timeout=300)
    said = f"{cmd.where}: {cmd.text}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    assert res.returncode != 0, said
    stderr = res.stderr.split("Traceback", 1)[0] if check.launcher_traceback else res.stderr
    if check.launcher_traceback:  # accelerate re-raises its child's status; nothing else may follow
        last = [x for x in res.stderr.splitlines() if x.strip() and not x.startswith("make: ***")][-1]
        assert last.endswith("returned non-zero exit status 1."), said
    assert "Traceback" not in stderr, said
    lines = [x for x in (res.stdout + "\n" + stderr).splitlines() if check.expect in x]
    assert len(lines) == 1, said
    assert _snapshot(root) == before and _git_status() == status, f"{said}\nwrote files"


def _size_check(cmd: Command) -> str:
    hydra = re.search(r"-m (ts2\.(?:train|sample|evaluate|report))\b(.*)$", cmd.text, re.S)
    if hydra and "\n" not in cmd.text:
        rest = hydra.group(2).rstrip().rstrip("&").split()
        if rest[:1] in (["-m"], ["--multirun"]):  # --cfg takes no sweep: compose its first job
            rest = [re.sub(r"^([\w.+~/]+=)([^,'\"\[{]+),.*$", r"\1\2", w) for w in rest[1:]]
        return f"python -m {hydra.group(1)} {' '.join(rest)} --cfg job"
    script = re.match(r"python (-m [\w.]+|\S+\.py)", cmd.text)
    if script:
        return f"python {script.group(1)} --help"
    return f"bash -n -c {shlex.quote(cmd.text)}"


@pytest.mark.parametrize("cmd", _by_kind("size"), ids=_ids(_by_kind("size")))
def test_size(cmd, bare):
    text = _size_check(cmd)
    res = shell(cmd, text, bare, timeout=120)
    assert res.returncode == 0, f"{cmd.where}: {text}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"


def test_size_checks_compose_the_hydra_command_or_check_the_syntax():
    c = Command(
        "x", "torchrun --nproc_per_node 8 -m ts2.train -m experiment=e method=ts2,ce loss.alpha=0.1,1 &", ()
    )
    assert _size_check(c) == "python -m ts2.train experiment=e method=ts2 loss.alpha=0.1 --cfg job"
    assert _size_check(Command("x", "python -m experiments.a.run --scale tiny", ())) == (
        "python -m experiments.a.run --help"
    )
    assert (
        _size_check(Command("x", "for p in a; do wait; done", ())) == "bash -n -c 'for p in a; do wait; done'"
    )


# --- the table covers the READMEs ------------------------------------------------------------------------------


def test_every_readme_command_is_classified():
    missing = sorted({f"{c.where}: {c.key}" for c in readme_commands() if c.key not in CHECKS})
    assert not missing, "README commands with no entry in tests/test_readme.py CHECKS:\n" + "\n".join(missing)


def test_no_stale_entries():
    keys = {c.key for c in readme_commands()}
    stale = [k for k in CHECKS if k not in keys]
    assert not stale, "CHECKS entries that match no README command:\n" + "\n".join(stale)


def test_every_entry_says_why_and_what_it_expects():
    for key, check in CHECKS.items():
        assert check.kind in ("run", "dry", "refusal", "size") and check.why, key
        assert check.kind not in ("dry", "refusal") or check.expect, key
