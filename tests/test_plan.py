"""The planner ``ts2.plan``: the paper-scale plan (``python -m ts2.plan scale=paper``), its arithmetic against
numbers worked out by hand; and the pipelines' plans (``experiments/table1/run.sh``, the α sweep): the tiny cost
model, run reuse by config hash (plan and run agree), the DRY_RUN commands at tiny, small and paper scale (every stage:
the GGUF conversion, the judge, training jobs with their seeds and TS²'s α rows, the reference-LM score, temperature
frontiers, judge controls, the report's settings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ts2.conf import pipeline
from ts2.plan import (
    ARCHS,
    GPUS,
    TINY_COSTS,
    Work,
    activation_bytes,
    decode_seconds_per_token,
    fused_chunk_rows,
    main,
    metrics_done,
    padded_mean,
    ref_lm_seconds,
    runs_shell,
    samples_done,
    tiny_run_seconds,
    train_gpu_hours,
    train_jobs,
    train_steps,
    wall_seconds,
    zero2_model_states,
)

LLAMA, QWEN = ARCHS["llama31_8b"], ARCHS["qwen2_7b"]


def test_parameter_counts_match_the_published_models():
    # Llama-3.1-8B: 2 x 128256 x 4096 (embeddings + head) + 32 x 218,112,000 (layer) + 4096 (final norm)
    assert LLAMA.params() == 8_030_261_248
    # Qwen2-7B (q/k/v biases): 2 x 152064 x 3584 + 28 x 233,057,792 + 3584
    assert QWEN.params() == 7_615_616_512


def test_zero2_model_states_per_gpu():
    s = zero2_model_states(8_030_261_248, 8)
    assert s == {
        "weights_bf16": 16_060_522_496,  # 2P
        "gradients_bf16": 2_007_565_312,  # 2P / 8
        "optimizer_fp32": 12_045_391_872,  # 12P / 8: fp32 master, Adam m, Adam v
    }
    assert sum(zero2_model_states(1000, 1).values()) == 16_000  # one GPU: the usual 16 bytes per parameter


def test_kv_cache_and_layer_working_set():
    assert LLAMA.kv_bytes_per_token() == 2 * 32 * 1024 * 2 == 131_072
    assert QWEN.kv_bytes_per_token() == 57_344  # 2 x 28 layers x 4 heads x 128 x 2 bytes
    assert LLAMA.layer_activation_bytes_per_token() == 167_936  # 2 x (6 x 4096 + 2 x 1024 + 4 x 14336)


def test_activations_with_checkpointing_unfused_and_fused():
    a = activation_bytes(LLAMA, 4, 2048, fused_loss=False)  # 8192 tokens
    assert a == {"checkpoints": 2_147_483_648, "recomputed_layer": 1_375_731_712, "loss": 10_506_731_520}
    assert fused_chunk_rows(128_256) == 2092  # floor(2^30 / (4 x 128256))
    f = activation_bytes(LLAMA, 4, 2048, fused_loss=True)
    # 10 x 2092 x 128256 (one chunk) + 4 x 128256 x 4096 (fp32 dW) + 4 x 8192 x 4096 (fp32 dX)
    assert f["loss"] == 2_683_115_520 + 2_101_346_304 + 134_217_728 == 4_918_679_552
    assert f["checkpoints"] == a["checkpoints"]


def test_gpu_hours_and_decode_time():
    # 6 x 8,030,261,248 x 1e9 FLOPs / (989e12 x 0.35 FLOP/s) = 139,192.7 s = 38.66 h
    assert train_gpu_hours(8_030_261_248, 1e9, GPUS["h100"], 0.35) == pytest.approx(38.6646, rel=1e-4)
    # memory-bound: (2P / 256 + 1000 x 131072) bytes / (3.35e12 x 0.6) B/s = 193,808,416 / 2.01e12 = 96.42 us
    t = decode_seconds_per_token(
        LLAMA, LLAMA.params(), GPUS["h100"], batch=256, context=1000, bw_eff=0.6, mfu=0.35
    )
    assert t == pytest.approx(9.6422e-5, rel=1e-4)
    # one sequence at a time on a fast-memory GPU with tiny MFU: compute-bound, 2P / (989e12 x 0.01) = 1.624 ms
    t = decode_seconds_per_token(
        LLAMA, LLAMA.params(), GPUS["h200"], batch=10**9, context=0, bw_eff=1.0, mfu=0.01
    )
    assert t == pytest.approx(2 * 8_030_261_248 / 989e10, rel=1e-9)


def test_padding_to_the_longest_of_each_micro_batch():
    assert padded_mean([1, 2, 3, 10], batch=4) == 10
    assert padded_mean([5, 7, 9], batch=1) == 7
    assert padded_mean([3, 3, 3, 3, 3], batch=2) == 3


def test_paper_plan_end_to_end(capsys):
    assert main(["scale=paper", "format=json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    train, sample, score = plan["stages"]
    assert train["memory_gb"]["weights_bf16"] == pytest.approx(16.0605, rel=1e-4)
    assert sum(s["gpu_hours"] for s in plan["stages"]) == pytest.approx(plan["gpu_hours_per_method"])
    assert plan["gpu_hours_total"] == pytest.approx(8 * plan["gpu_hours_per_method"])
    assert sample["tokens"] == 805 * 32 * 2048 + 573 * 16 * 512 + 500 * 16 * 512 + 164 * 200 * 512
    assert any("MFU 0.35" in a for a in plan["assumptions"])
    assert main(["scale=paper"]) == 0 and "GPU-hours" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["scale=tiny"], "this plan is for scale=paper"),
        (["gpu=v100"], "gpu='v100': the plan knows"),
        (["mfu=1.5"], "mfu=1.5 must be in"),
        (["mfu=fast"], "mfu must be a float"),
        (["speed=1"], "expected key=value with key in"),
    ],
)
def test_bad_arguments_are_named(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------ disk and host RAM (issue 21)
def test_checkpoint_disk_of_an_8b_run():
    from ts2.plan import checkpoint_bytes, disk_plan, final_model_bytes

    P = LLAMA.params()
    # ZeRO-2: HF bf16 copy 2P + DeepSpeed bf16 module states 2P + fp32 master, Adam m, v 12P = 16P
    assert sum(checkpoint_bytes(P).values()) == 16 * P == 128_484_179_968
    assert sum(checkpoint_bytes(P, "fsdp2").values()) == 16 * P  # fp32 weights twice (8P) + m, v (8P)
    assert final_model_bytes(P) == 2 * P and final_model_bytes(P, "fsdp2") == 4 * P
    with pytest.raises(ValueError, match="backend='ddp'"):
        checkpoint_bytes(P, "ddp")
    # 1,434 steps; the old default: every 500 steps, 2 kept -> 2 checkpoints + the model per run, 16 runs
    old = disk_plan(P, total_steps=1434, save_steps=500, save_total_limit=2, runs=16)
    assert old["checkpoints_written"] == 2 and old["per_run_after"] == 16 * P * 2 + 2 * P
    assert old["table_after"] == pytest.approx(16 * 34 * P) and old["table_after"] / 1e9 == pytest.approx(
        4368.5, rel=1e-4
    )
    # the paper default now: one rolling checkpoint per epoch (478 steps), deleted once the model is written
    new = disk_plan(P, total_steps=1434, save_steps=478, save_total_limit=1, keep_checkpoints=False, runs=16)
    assert new["checkpoints_written"] == 3
    assert new["peak_per_run"] == 2 * 16 * P + 2 * P  # the next one is written before the last is deleted
    assert new["per_run_after"] == 2 * P and new["table_after"] == 32 * P


def test_host_ram_at_load_and_slurm_memory():
    from ts2.plan import GB, host_ram_at_load, slurm_mem_gb

    P = LLAMA.params()
    every = host_ram_at_load(P, 8)  # bf16 file loaded as bf16: mapped once, no per-rank copy
    assert every["page_cache"] == 2 * P and every["anonymous_weights"] == 0
    assert every["peak_node"] == 2 * P + 8 * 6 * GB  # 64.06 GB
    rank0 = host_ram_at_load(P, 8, rank0_only=True)  # FSDP cpu_ram_efficient_loading: 7 zero-filled copies
    assert rank0["weights_read_from_disk"] == 2 * P and rank0["anonymous_weights"] == 7 * 2 * P
    assert rank0["peak_node"] == 8 * 2 * P + 8 * 6 * GB  # 176.5 GB
    assert host_ram_at_load(P, 8, same_dtype=False)["anonymous_weights"] == 8 * 2 * P
    # (16.06 + 48) GB x 1.15 = 73.7 GB -> 80 (multiple of 8)
    assert slurm_mem_gb("llama31_8b", 8) == 80
    assert slurm_mem_gb("qwen2_7b", 1) == 32  # (15.23 + 6) x 1.15 = 24.4 -> 32
    assert slurm_mem_gb("tiny", 8) is None


def test_resources_notes_name_the_settings():
    from ts2.plan import resources_notes

    text = "\n".join(resources_notes("llama31_8b"))
    assert "128 GB per checkpoint, 3 written (train.save_steps=478, save_total_limit=1)" in text
    assert "train.keep_checkpoints=False" in text and "SLURM mem_gb=80" in text
    assert "fsdp_cpu_ram_efficient_loading" in text


def test_hub_precheck_lists_every_paper_artefact_and_reads_the_cache(tmp_path):
    """Every hub repository of a paper run, with its revision; cached or not is read from the HF cache layout
    (models--org--name/snapshots/<commit>, refs/main), offline."""
    from ts2.plan import format_hub_precheck, hub_artefacts, hub_precheck

    arts = {a.role: a for a in hub_artefacts()}
    assert arts["model llama31_8b"].repo_id == "meta-llama/Llama-3.1-8B" and arts["model llama31_8b"].pinned
    assert arts["chat template of llama31_8b"].repo_id == "meta-llama/Llama-3.1-8B-Instruct"
    assert arts["data ultrafeedback"].repo_type == "dataset" and arts["data ultrafeedback"].pinned
    assert arts["reward model fsfairx"].repo_id == "sfairXC/FsfairX-LLaMA3-RM-v0.1"
    assert arts["Sent-BERT paper"].repo_id == "sentence-transformers/bert-large-nli-stsb-mean-tokens"
    assert arts["model ts2_released"].repo_id == "xzybit/llama3.1-8b-ts2"
    assert {a.role for a in arts.values() if not a.pinned} == {
        "chat template of qwen2_7b", "Sent-BERT paper", "model ts2_released"
    }  # fmt: skip
    # a fake cache: Llama at its pinned commit, the encoder at main
    llama = arts["model llama31_8b"]
    snap = tmp_path / "models--meta-llama--Llama-3.1-8B" / "snapshots" / llama.revision
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (tmp_path / "models--meta-llama--Llama-3.1-8B" / "refs").mkdir()
    enc = tmp_path / "models--sentence-transformers--bert-large-nli-stsb-mean-tokens"
    (enc / "snapshots" / ("a" * 40)).mkdir(parents=True)
    (enc / "snapshots" / ("a" * 40) / "config.json").write_text("{}")
    (enc / "refs").mkdir()
    (enc / "refs" / "main").write_text("a" * 40)
    records = {r["role"]: r for r in hub_precheck(cache_dir=str(tmp_path))}
    assert records["model llama31_8b"]["cached"] and records["model llama31_8b"]["fix"] == ""
    assert records["Sent-BERT paper"]["cached"] and "pin a commit" in records["Sent-BERT paper"]["fix"]
    rm = records["reward model fsfairx"]
    assert not rm["cached"] and rm["fix"] == (
        "huggingface-cli download sfairXC/FsfairX-LLaMA3-RM-v0.1 --revision 94fad49f1b3227aa8b566f415a335adb68ec544c"
    )
    assert records["data ultrafeedback"]["fix"].endswith("--repo-type dataset")
    text = format_hub_precheck(list(records.values()))
    assert "MISSING" in text and "UNPINNED" in text and "3 unpinned" in text


# =========================================================================================================
# The pipelines: experiments/table1/run.sh and experiments/alpha_sweep/run.sh, planned by ts2.plan.
REPO = Path(__file__).resolve().parents[1]
TABLE1_SH = REPO / "experiments" / "table1" / "run.sh"
SWEEP_SH = REPO / "experiments" / "alpha_sweep" / "run.sh"


def _sh(script: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script)], env={**os.environ, "PY": sys.executable, **env},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_tiny_cost_model_hand_computed():
    costs = {"startup_s": 10.0, "train_step_s": 1.0, "sample_token_s": 0.001, "sample_token_s_humaneval": 0.01,
             "eval_sample_s": 0.5, "heldout_row_s": 0.1}  # fmt: skip
    got = tiny_run_seconds(100, {"alpaca_eval": 40, "humaneval": 20}, 8, 64, 2, 200, 40, costs)
    assert got == pytest.approx(
        {
            "train": 10 + 100 * 1.0,
            "sample": 2 * 10 + 40 * 8 * 64 * 0.001 + 20 * 8 * 64 * 0.01,  # 20 + 20.48 + 102.4
            "evaluate": 2 * 10 + 60 * 8 * 0.5,
            "heldout_ce": 10 + 200 * 0.1,
            "tspd": 10 + 40 * 0.1,
        }
    )
    assert set(tiny_run_seconds(100, {"alpaca_eval": 40}, 8, 64, 1, 0, 0, costs)) == {
        "train",
        "sample",
        "evaluate",
    }


def test_ref_lm_and_wall_clock_of_the_cost_model_by_hand():
    costs = {"startup_s": 10.0, "ref_lm_load_s": 2.0, "ref_lm_token_s": 0.01, "ref_lm_fixed_tokens": 40.0}
    # 80 samples of (40 fixed + 48 answer) tokens at 0.01 s/token, after start-up and load
    assert ref_lm_seconds(80, 48, costs) == pytest.approx(10 + 2 + 80 * 88 * 0.01)
    assert ref_lm_seconds(80, 48, costs, startup=False) == pytest.approx(80 * 88 * 0.01)
    work = [Work("gguf", "m", 20.0, False, pool=False), Work("train", "a", 100.0, True), Work("train", "b", 60.0, False),
            Work("frontier", "a:t1", 40.0, False), Work("report", "x", 5.0, False, pool=False)]  # fmt: skip
    assert wall_seconds(work, 2) == pytest.approx((100 + 60 + 40) / 2 + 20 + 5)
    assert wall_seconds(work, 2, todo_only=True) == pytest.approx(
        (60 + 40) / 2 + 20 + 5
    )  # finished costs nothing
    assert wall_seconds(work, 1) == pytest.approx(200 + 25)


def test_train_steps_from_the_composed_config(compose):
    assert train_steps(compose(["experiment=table1_tiny"])) == 100  # 400 rows / (4 x 1), 1 epoch
    assert train_steps(compose(["experiment=table1_tiny", "debug=cpu"])) == 8  # train.max_steps
    more = compose(
        ["experiment=table1_tiny", "train.num_train_epochs=3", "train.gradient_accumulation_steps=3"]
    )
    assert train_steps(more) == 3 * 34  # ceil(400 / 12) batches per epoch


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_samples_and_metrics_done_read_complete_files_of_the_requested_size(tmp_path):
    meta = tmp_path / "samples" / "alpaca_eval.meta.json"
    _write(meta, {"complete": True, "sample": {"limit": 40, "n": 8, "max_new_tokens": 48}})
    assert samples_done(tmp_path, "alpaca_eval", 40, 8, 48)
    assert not samples_done(tmp_path, "alpaca_eval", 40, 8, 64)  # another size: sampled again
    assert samples_done(tmp_path, "alpaca_eval", None, None, None)  # paper scale: any complete file
    assert not samples_done(tmp_path, "humaneval", None, None, None)  # no file
    _write(meta, {"complete": False, "sample": {"limit": 40, "n": 8, "max_new_tokens": 48}})
    assert not samples_done(tmp_path, "alpaca_eval", 40, 8, 48)
    metrics = tmp_path / "metrics" / "alpaca_eval.json"
    _write(metrics, {"complete": True, "num_prompts": 40, "num_samples": 320})
    assert metrics_done(tmp_path, "alpaca_eval", 40, 8) and metrics_done(tmp_path, "alpaca_eval")
    assert not metrics_done(tmp_path, "alpaca_eval", 40, 4) and not metrics_done(tmp_path, "tspd")
    # the command line run.sh calls: exit 0 when done ("all" and "" for the paper's sizes)
    assert (
        main(["done", "samples", str(tmp_path), "alpaca_eval", "40", "8", "48"]) == 1
    )  # meta now incomplete
    assert main(["done", "metrics", str(tmp_path), "alpaca_eval", "40", "8"]) == 0
    assert main(["done", "metrics", str(tmp_path), "alpaca_eval", "all", ""]) == 0


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory):
    """Issue #22 item 1: a debug CE run trained into the tiny table's folder (~30 s)."""
    runs = tmp_path_factory.mktemp("runs")
    cmd = [
        "experiment=table1_tiny",
        "method=ce",
        "name=table1_tiny",
        "debug=cpu",
        "train.save_final_model=true",
    ]
    subprocess.run(
        [sys.executable, "-m", "ts2.train", *cmd, f"paths.runs_dir={runs}"],
        cwd=REPO, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (run,) = [d for d in (runs / "table1_tiny").iterdir() if (d / "run.json").is_file()]
    return runs, run


def test_a_debug_run_is_not_reused_by_the_table(debug_run):
    runs, debug = debug_run
    jobs, conflicts = train_jobs(pipeline("table1_tiny", [f"paths.runs_dir={runs}"]))
    ce = jobs[0]
    assert (ce.method, ce.status) == ("ce", "todo")
    assert ce.run_dir == runs / "table1_tiny" / "experiment=table1_tiny,method=ce"
    assert ce.config_hash != json.loads((debug / "run.json").read_text())["config_hash"]
    assert [j.status for j in jobs] == ["todo"] * 12  # 8 methods, CE/GEM/TS² seed 1235, TS² at the selected α
    (msg,) = conflicts  # the report would read it as a second CE row
    assert str(debug) in msg and "another config" in msg and "move it away" in msg


def test_a_run_of_the_same_config_is_reused_by_the_hash_ts2_train_wrote(debug_run):
    runs, debug = debug_run
    overrides = [f"paths.runs_dir={runs}", "debug=cpu", "train.save_final_model=true"]
    jobs, conflicts = train_jobs(pipeline("table1_tiny", overrides))
    ce = jobs[0]
    assert (ce.status, ce.run_dir) == ("done", debug) and conflicts == []
    assert ce.config_hash == json.loads((debug / "run.json").read_text())["config_hash"]
    assert all(j.status == "todo" for j in jobs[1:])


def test_run_sh_refuses_what_its_plan_refuses_and_writes_nothing(debug_run):
    runs, debug = debug_run
    before = sorted(runs.rglob("*"))
    dry = _sh(TABLE1_SH, DRY_RUN="1", OVERRIDES=f"paths.runs_dir={runs}")
    assert dry.returncode == 1, dry.stderr
    assert "[todo] train ce/1234:" in dry.stdout and "REFUSED (1)" in dry.stdout and str(debug) in dry.stdout
    real = _sh(TABLE1_SH, OVERRIDES=f"paths.runs_dir={runs}")
    assert real.returncode == 1 and "refused, nothing run" in real.stderr and str(debug) in real.stderr
    assert sorted(runs.rglob("*")) == before


@pytest.fixture(scope="module")
def tiny_dry_run(tmp_path_factory):
    """The plan and commands of METHODS=ce with an empty cache (TS2_CACHE_DIR): the judge and the GGUF are to do."""
    runs = tmp_path_factory.mktemp("runs")
    cache = str(tmp_path_factory.mktemp("cache"))
    res = _sh(TABLE1_SH, DRY_RUN="1", METHODS="ce", OVERRIDES=f"paths.runs_dir={runs}", TS2_CACHE_DIR=cache)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not any(runs.iterdir())  # a dry run writes nothing
    return runs / "table1_tiny_subset_ce" / "experiment=table1_tiny,method=ce", res.stdout


def test_the_tiny_dry_run_lists_every_stage(tiny_dry_run):
    run, out = tiny_dry_run
    py = sys.executable
    threads = f"env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 {py}"
    seed2 = run.with_name(run.name + ",seed=1235")
    root = run.parent
    evaluate = ("rm=tiny diversity.num_workers=1 "
                "diversity.text=response diversity.secondary=[paper] diversity.length_cut=8")  # fmt: skip
    ae = "eval.sample.limit=28 eval.sample.n=8 eval.sample.max_new_tokens=48"
    ref = ("eval=ref_lm eval.sample.limit=28 eval.sample.n=8 eval.sample.max_new_tokens=48 "
           "eval.metrics.samples_per_prompt=2 eval.metrics.answer_tokens=48 eval.metrics.context_tokens=64 "
           "eval.metrics.batch_size=16")  # fmt: skip
    t03 = run / "frontier" / "t0.3"
    assert "TinyRMSpec(quirk=false, max_train_pairs=400, epochs=2)" in out  # the judge's settings
    assert "methods ce; seeds [1234] (ce,gem,ts2: 2); 2 training jobs" in out
    assert "temperature frontiers: T = 0.3, 1.0 besides the table's, for ce/1234" in out
    assert "judge controls: reference, shuffled, random, base (AlpacaEval + ref_lm)" in out
    for line in [
        f"base tiny_base: env OMP_NUM_THREADS=1 {py} -m ts2.models.tiny_base",
        f"rm tiny_rm: env OMP_NUM_THREADS=1 {py} -m ts2.models.tiny_rm --set quirk=false --set max_train_pairs=400 "
        "--set epochs=2",
        f"[todo] train ce/1234: {threads} -m ts2.train experiment=table1_tiny method=ce name=table1_tiny_subset_ce "
        f"train.resume=true paths.runs_dir={run.parents[1]}",
        f"[todo] train ce/1235: {threads} -m ts2.train experiment=table1_tiny method=ce name=table1_tiny_subset_ce "
        f"seed=1235 train.resume=true paths.runs_dir={run.parents[1]}",
        f"[todo] sample ce/1234:humaneval: {threads} -m ts2.sample run_dir='{run}' eval=[humaneval] sample.limit=8 "
        "sample.n=8 sample.max_new_tokens=48 sampler=hf sampler.torch_threads=1",
        f"[todo] evaluate ce/1234:alpaca_eval,creative_poem,creative_story: {threads} -m ts2.evaluate run_dir='{run}' "
        f"eval=[alpaca_eval,creative_poem,creative_story] {ae} {evaluate}",
        f"[todo] ref_lm ce/1235: {threads} -m ts2.evaluate run_dir='{seed2}' {ref}",
        f"[todo] heldout_ce ce/1234: {threads} -m ts2.evaluate run_dir='{run}' eval=heldout_ce",
        f"[todo] tspd ce/1234: {threads} -m ts2.evaluate run_dir='{run}' eval=tspd eval.sample.limit=40",
        # the temperature frontier of the first CE seed: sampled at T into <run>/frontier/t<T>/, scored there
        f"[todo] frontier ce/1234:t0.3:sample: {threads} -m ts2.sample run_dir='{run}' eval=alpaca_eval "
        f"sample.limit=28 sample.n=8 sample.max_new_tokens=48 sample.temperature=0.3 out_dir='{t03}/samples' "
        "sampler=hf sampler.torch_threads=1",
        f"[todo] frontier ce/1234:t1.0:alpaca_eval: {threads} -m ts2.evaluate run_dir='{run}' "
        f"samples_dir='{run}/frontier/t1.0/samples' metrics_dir='{run}/frontier/t1.0/metrics' eval=alpaca_eval {ae} "
        f"{evaluate}",
        f"[todo] frontier ce/1234:t0.3:ref_lm: {threads} -m ts2.evaluate run_dir='{run}' samples_dir='{t03}/samples' "
        f"metrics_dir='{t03}/metrics' {ref}",
        # the judge's controls: made from the references, or the base model sampled and then marked
        f"[todo] control shuffled:sample: {threads} -m ts2.sample model=tiny_base sampler=control sampler.kind=shuffled "
        f"eval=alpaca_eval sample.limit=28 sample.n=8 sample.max_new_tokens=48 out_dir='{root}/control=shuffled/samples'",
        f"[todo] control base:sample: {threads} -m ts2.sample model=tiny_base eval=alpaca_eval sample.limit=28 "
        f"sample.n=8 sample.max_new_tokens=48 out_dir='{root}/control=base/samples' sampler=hf sampler.torch_threads=1",
        f"[todo] control base:mark: {py} -m ts2.sampling.controls {root}/control=base base --model tiny_base",
        f"[todo] control random:alpaca_eval: {threads} -m ts2.evaluate run_dir='{root}/control=random' "
        f"eval=alpaca_eval {ae} {evaluate}",
        f"[todo] control reference:ref_lm: {threads} -m ts2.evaluate run_dir='{root}/control=reference' {ref}",
        f"token_distribution table1_tiny_subset_ce: env OMP_NUM_THREADS=1 {py} -m ts2.analysis.token_distribution "
        f"{run} {seed2} --out results/table1_tiny_subset_ce",
        f"report table1_tiny_subset_ce: {py} -m ts2.report runs_dir={run.parent} name=table1_tiny_subset_ce "
        "out_dir=results/table1_tiny_subset_ce frontier.quality=ref_lm/ref_lm ts2_alpha.selected=1",
    ]:  # a subset never writes over results/table1_tiny.*
        assert line in out, line
    # the GGUF conversion first (the cache is empty): SmolLM2, the reference LM of ref_lm
    assert f"[todo] gguf smollm2_135m: {py} -m ts2.models.gguf smollm2_135m" in out
    assert "[gguf todo] smollm2_135m" in out and "[rm todo] tiny judge" in out
    # the plan lists every stage with done/todo, and the estimate
    for stage in ("gguf", "rm", "train", "sample", "evaluate", "ref_lm", "heldout_ce", "tspd", "control", "frontier",
                  "token_distribution", "report"):  # fmt: skip
        assert any(x.split()[:1] == [stage] for x in out.split("  cost")[1].splitlines()), stage
    assert (
        "[todo] base:mark" not in out
        and "    [todo] base:sample" in out
        and "    [todo] ce/1234:t1.0:ref_lm" in out
    )


def test_the_small_dry_run_lists_its_stages_and_estimate(tmp_path):
    """SCALE=small: experiment table1_small, SmolLM2's GGUF first, the BT judge's build, the answers scored with
    K = 24, the report's small-scale overrides; its cost estimate within the 90-minute budget."""
    res = _sh(TABLE1_SH, SCALE="small", DRY_RUN="1", OVERRIDES=f"paths.runs_dir={tmp_path}")
    out = res.stdout
    assert res.returncode == ("MISSING" in out), res.stderr  # 1 until the judge (conf/rm/smollm2_bt) is there
    assert "PLAN experiment=table1_small (scale small, model smollm2_135m)" in out
    py = sys.executable
    run = tmp_path / "table1_small" / "experiment=table1_small,method=ce"
    for line in [
        f"[todo] rm judge: env OMP_NUM_THREADS=1 {py} -m ts2.models.feature_rm",
        f"[todo] train gem/1235: env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 {py} -m ts2.train experiment=table1_small "
        f"method=gem name=table1_small seed=1235 train.resume=true paths.runs_dir={tmp_path}",
        f"[todo] sample ce/1234:alpaca_eval: env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 {py} -m ts2.sample "
        f"run_dir='{run}' eval=[alpaca_eval] sample.limit=32 sample.n=4 sample.max_new_tokens=48 sampler=hf "
        "sampler.torch_threads=1",
        f"[todo] heldout_ce ce/1234: env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 {py} -m ts2.evaluate run_dir='{run}' "
        "eval=heldout_ce eval.metrics.max_length=256",
        f"[todo] control base:sample: env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 {py} -m ts2.sample model=smollm2_135m "
        f"eval=alpaca_eval sample.limit=32 sample.n=4 sample.max_new_tokens=48 "
        f"out_dir='{tmp_path}/table1_small/control=base/samples' sampler=hf sampler.torch_threads=1",
        f"report table1_small: {py} -m ts2.report runs_dir={tmp_path}/table1_small name=table1_small out_dir=results "
        "frontier.quality=alpaca_eval/win_rate@1 quality.metrics={ref_lm/ref_lm:{margin:null}}",
    ]:
        assert line in out, line
    assert "diversity.text=response diversity.secondary=[paper] diversity.length_cut=24" in out
    minutes = int(out.split("    estimate: ~")[1].split(" min")[0])
    assert (
        30 < minutes <= 90
    )  # the plan's estimate of the small table (ts2.plan.SMALL_COSTS), within its budget
    assert not any(tmp_path.iterdir())


def test_judge_control_folders_never_conflict_and_runs_shell_names_every_job(debug_run, tmp_path):
    """The pipeline's control=<kind>/ folders sit beside the runs without stopping them; run.sh reads the jobs' keys,
    methods, seed and row overrides from runs_shell."""
    from ts2.runs import mark_control

    runs, debug = debug_run
    overrides = [f"paths.runs_dir={runs}", "debug=cpu", "train.save_final_model=true"]
    folder = mark_control(runs / "table1_tiny" / "control=random", "random", "tiny_base")
    try:
        jobs, conflicts = train_jobs(pipeline("table1_tiny", overrides))
        assert conflicts == [] and jobs[0].status == "done"
    finally:
        import shutil

        shutil.rmtree(folder)
    p = pipeline("table1_tiny", [*overrides, "pipeline.methods=[ce,ts2]"])
    jobs, _ = train_jobs(p)
    script = runs_shell(jobs, [], p.frontier) + (
        '\necho "${JOB_KEYS[*]}|${METHOD_OF[ts2@loss.alpha=1/1235]}|${JOB_ARGS[ts2@loss.alpha=1/1235]}|'
        '${JOB_ARGS[ce/1234]:-none}|${FRONTIER_KEYS[*]}|${#TRAINED[@]}"'
    )
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    assert out == (
        "ce/1234 ce/1235 ts2/1234 ts2@loss.alpha=1/1234 ts2@loss.alpha=1/1235|ts2|seed=1235 loss.alpha=1|"
        "none|ce/1234 ts2@loss.alpha=1/1234|0"
    )


def test_the_alpha_sweep_samples_and_judges_as_table_1(tiny_dry_run):
    _, table = tiny_dry_run
    res = _sh(SWEEP_SH, DRY_RUN="1")
    assert res.returncode == 0, res.stderr
    sweep = res.stdout
    sample = sweep.split("-m ts2.sample run_dir=<run> ")[1].splitlines()[0].split()
    evaluate = sweep.split("-m ts2.evaluate run_dir=<run> ")[1].splitlines()[0].split()
    assert sample == ["eval=alpaca_eval", "sample.limit=28", "sample.n=8", "sample.max_new_tokens=48",
                      "sampler=hf", "sampler.torch_threads=1"]  # fmt: skip
    row = next(x for x in table.splitlines() if "-m ts2.sample" in x and "alpaca_eval" in x)
    assert " ".join(sample[1:]) in row  # Table 1's AlpacaEval sizes and sampler, from the same config
    row = next(x for x in table.splitlines() if "-m ts2.evaluate" in x and "alpaca_eval" in x)
    assert " ".join(evaluate[1:]) in row
    # its estimate: 12 runs of <= 100 steps, at the unit costs of TINY_COSTS
    c = TINY_COSTS
    per = (
        c["startup_s"] * 3
        + 100 * c["train_step_s"]
        + 28 * 8 * 48 * c["sample_token_s"]
        + 28 * 8 * c["eval_sample_s"]
    )
    assert sweep.splitlines()[0].startswith(f"Estimated cost: 12 runs x ~{per:.0f} s")


def test_paper_dry_run_prints_the_launcher_the_shards_and_the_paper_evaluation(tmp_path):
    accelerate = Path(sys.executable).parent / "accelerate"
    env = dict(SCALE="paper", DRY_RUN="1", EXPERIMENTS="paper_llama31_8b", METHODS="ts2")
    out = _sh(
        TABLE1_SH, **env, OVERRIDES=f"paths.runs_dir={tmp_path}", CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7"
    )
    run = tmp_path / "table1_llama31_8b_subset_ts2" / "experiment=paper_llama31_8b,method=ts2"
    assert out.returncode == ("MISSING" in out.stdout), (
        out.stderr
    )  # 1: a prerequisite is missing (no GPU here)
    lines = out.stdout.splitlines()
    assert (
        f"  [todo] train ts2/1234: {accelerate} launch --config_file conf/accelerate/deepspeed_zero2.yaml -m ts2.train "
        f"experiment=paper_llama31_8b method=ts2 name=table1_llama31_8b_subset_ts2 train.resume=true "
        f"paths.runs_dir={tmp_path}"
    ) in lines
    evals = "alpaca_eval,creative_poem,creative_story,humaneval"
    shards = [x for x in lines if "[todo] sample shard" in x]
    assert shards == [
        f"  [todo] sample shard {i}/8: CUDA_VISIBLE_DEVICES={i} {sys.executable} -m ts2.sample run_dir='{run}' "
        f"eval=[{evals}] sampler=vllm shard={i}/8 &"
        for i in range(8)
    ]
    assert (
        f"  [todo] merge: {sys.executable} -m ts2.sampling.shards merge {run} {evals.replace(',', ' ')}"
        in lines
    )
    (ev,) = [x for x in lines if f"[todo] evaluate ts2/1234:{evals}:" in x]
    assert ev.endswith(f"-m ts2.evaluate run_dir='{run}' eval=[{evals}] rm=fsfairx diversity=paper")
    # FSDP2 through the same launcher: its training overrides name the folder that is sampled, over the visible GPUs
    out = _sh(
        TABLE1_SH, **env, BACKEND="fsdp2", OVERRIDES=f"paths.runs_dir={tmp_path}", CUDA_VISIBLE_DEVICES="3,5"
    )
    fsdp = run.with_name(run.name + ",train.deepspeed=null,train.gradient_checkpointing=false")
    assert "--config_file conf/accelerate/fsdp2.yaml -m ts2.train" in out.stdout
    assert (
        "train.resume=true paths.runs_dir=" in out.stdout
        and "train.gradient_checkpointing=false\n" in out.stdout
    )
    shards = [x for x in out.stdout.splitlines() if "[todo] sample shard" in x]
    assert [x.split(": ", 1)[1].split(" ")[0] for x in shards] == [
        "CUDA_VISIBLE_DEVICES=3",
        "CUDA_VISIBLE_DEVICES=5",
    ]
    assert all(f"run_dir='{fsdp}'" in x for x in shards) and shards[1].endswith("shard=1/2 &")
    assert not any(tmp_path.iterdir())
