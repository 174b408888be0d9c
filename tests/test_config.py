"""The real Hydra configs compose, and each method id means what PAPER.md says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException

from ts2.conf import CONF_DIR, main, method_ids, methods, scale_of
from ts2.objective import make_loss

METHODS = method_ids()  # read from conf/method/ (the list is typed once, there)


def test_methods_describe_themselves_as_the_eight_table_1_rows(capsys):
    """conf/method/*.yaml give the row label and order of Table 1 (PAPER.md §5, left to right as printed)."""
    assert [(m.id, m.name, m.order) for m in methods()] == [
        ("ce", "CE", 1),
        ("ce_wd", "CE+WD", 2),
        ("neft", "NEFT", 3),
        ("gem", "GEM", 4),
        ("ce_ls", "CE+LS", 5),
        ("sparsemax", "Sparsemax", 6),
        ("entmax15", "1.5-entmax", 7),
        ("ts2", "TS²", 8),
    ]
    assert sorted(p.stem for p in (Path(CONF_DIR) / "method").glob("*.yaml")) == sorted(METHODS)
    assert main(["methods"]) == 0  # what experiments/table1/run.sh sweeps
    assert capsys.readouterr().out == "ce,ce_wd,neft,gem,ce_ls,sparsemax,entmax15,ts2\n"


def test_models_declare_their_scale(compose):
    assert {p.stem: scale_of(p.stem) for p in (Path(CONF_DIR) / "model").glob("*.yaml")} == {
        p.stem: (
            "tiny" if p.stem.startswith("tiny") else "small" if p.stem.startswith("smollm2") else "paper"
        )
        for p in (Path(CONF_DIR) / "model").glob("*.yaml")
    }
    assert scale_of(compose(["experiment=paper_qwen2_7b"]).model) == "paper"
    assert scale_of("no_such_model") == scale_of(None) == "unspecified"


@pytest.mark.parametrize("method", METHODS)
def test_method_composes_and_its_loss_runs(compose, method):
    cfg = compose([f"method={method}"])
    assert cfg.method.id == method
    fn, _ = make_loss(cfg.loss)
    logits = torch.randn(5, 11, requires_grad=True)
    loss = fn(logits, torch.tensor([0, 3, -100, 10, 2]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_method_settings_are_the_documented_values(compose):
    expect = {
        "ce": ("ce", {}),
        "ce_wd": ("ce", {"weight_decay": 0.1}),
        "neft": ("ce", {"neftune_noise_alpha": 5.0}),
        "gem": ("gem", {}),
        "ce_ls": ("ce_ls", {}),
        "sparsemax": ("sparsemax", {}),
        "entmax15": ("entmax15", {}),
        "ts2": ("ts2", {}),
    }
    for method, (loss_id, train) in expect.items():
        cfg = compose([f"method={method}"])
        assert cfg.loss.id == loss_id, method
        for k, v in train.items():
            assert cfg.train[k] == v, (method, k)
        if method not in ("ce_wd",):
            assert cfg.train.weight_decay == 0.0  # paper recipe: no weight decay
        if method != "neft":
            assert cfg.train.neftune_noise_alpha is None
    gem = compose(["method=gem"]).loss
    assert (gem.beta, gem.h) == (0.7, "logsigmoid")
    ts2 = compose(["method=ts2"]).loss
    assert (ts2.alpha, ts2.clamp, ts2.temperature) == (0.25, 0.99, 1.0)
    assert compose(["method=ce_ls"]).loss.epsilon == 0.1


def test_sweep_override_reaches_the_loss(compose):
    loss, _ = make_loss(compose(["method=ts2", "loss.alpha=1.5", "loss.clamp=null"]).loss)
    assert (loss.alpha, loss.clamp, loss.temperature) == (1.5, None, 1.0)


def test_paper_experiments_compose_without_loading_anything(compose):
    cfg = compose(["experiment=paper_llama31_8b", "method=ts2"])
    assert cfg.model.name_or_path == "meta-llama/Llama-3.1-8B"
    assert cfg.model.chat_template_from == "meta-llama/Llama-3.1-8B-Instruct"
    assert (cfg.data.hub_name, cfg.data.split) == ("HuggingFaceH4/ultrafeedback_binarized", "train_sft")
    t = cfg.train
    assert (t.learning_rate, t.num_train_epochs, t.adam_beta2, t.warmup_ratio) == (2e-5, 3, 0.95, 0.03)
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps, t.bf16) == (4, 4, True)
    assert cfg.model.max_length == 2048 and cfg.seed == 1234
    assert compose(["experiment=paper_qwen2_7b"]).model.id == "qwen2_7b"


def test_unknown_method_lists_the_choices(compose):
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as err:
        compose(["method=nope"])
    msg = str(err.value)
    assert "nope" in msg and all(m in msg for m in METHODS)


def test_unknown_loss_lists_the_choices(compose):
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as err:
        compose(["loss=nope"])
    assert "ts2_adaptive" in str(err.value)


def test_negative_alpha_is_a_clear_error(compose):
    with pytest.raises(ValueError, match=r"loss=ts2.*alpha"):
        make_loss(compose(["method=ts2", "loss.alpha=-0.1"]).loss)


# ----------------------------------------------------------------------------------- every group composes
def _configs(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("bench", _configs("eval"))
def test_every_benchmark_composes_and_its_scorer_is_a_partial(compose, bench):
    """conf/eval/<bench>.yaml composes under both entry points; its scorer is built by hydra.utils.instantiate
    as a partial of the module's `score`, called later with (samples or run_dir, cfg)."""
    import functools

    from hydra.utils import instantiate

    sample = compose([f"eval={bench}", "model=tiny"], "sample")
    cfg = compose([f"eval={bench}"], "evaluate")
    assert sample.eval.id == cfg.eval.id == bench
    scorer = instantiate(cfg.eval.metrics.scorer)
    assert isinstance(scorer, functools.partial) and not scorer.args and not scorer.keywords
    assert scorer.func.__name__ == "score" and scorer.func.__module__.startswith("ts2.eval.")
    if cfg.eval.get("kind") != "model":
        assert sample.sample.n == cfg.eval.sample.n >= 1


@pytest.mark.parametrize("sampler", _configs("sampler"))
def test_every_sampler_is_a_backend_class_taking_all_its_keys(compose, sampler):
    import dataclasses

    from hydra.utils import get_class

    node = compose([f"sampler={sampler}", "model=tiny"], "sample").sampler
    cls = get_class(node._target_)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    assert set(node) - {"_target_"} <= fields and {"model_path", "model_cfg"} <= fields


def test_the_openllm_tasks_share_one_base(compose):
    """The six official-protocol tasks are conf/eval/openllm/_base.yaml plus what differs (checked by hand)."""
    tasks = ["arc_challenge", "gsm8k", "hellaswag", "mmlu", "truthfulqa", "winogrande"]
    cfgs = {t: compose([f"eval=openllm_{t}"], "evaluate").eval for t in tasks}
    for t, c in cfgs.items():
        assert (c.id, c.prompts.task, c.prompts._target_) == (
            f"openllm_{t}",
            t,
            "ts2.sampling.prompts.openllm",
        )
        assert (c.sample.n, c.sample.temperature, c.sample.top_k, c.sample.top_p) == (32, 0.6, None, 0.9)
        assert (c.sample.max_new_tokens, c.sample.seed, c.metrics.parser) == (256, 42, "paper")
        assert (
            list(c.metrics.ns) == [1, 4, 8, 16, 32]
            and c.prompts.mc_template == "evaluation/openllm/mc_prompt.txt"
        )
        assert c.metrics.numeric is (t == "gsm8k")
    assert (cfgs["truthfulqa"].prompts.max_choices, cfgs["truthfulqa"].prompts.shuffle_seed) == (5, None)
    assert all("max_choices" not in c.prompts for t, c in cfgs.items() if t != "truthfulqa")


@pytest.mark.parametrize("experiment", _configs("experiment"))
def test_every_experiment_composes_with_its_pipeline(compose, experiment):
    from ts2.conf import pipeline

    cfg = compose([f"experiment={experiment}", "method=ts2"])
    p = pipeline(experiment)
    assert p.name == cfg.name and p.results == "results" and p.methods == tuple(METHODS)
    assert p.seeds == (1234,) and set(p.settings["evals"]) <= set(_configs("eval"))


# ----------------------------------------------------------------------------------- experiment pipelines
def test_the_tiny_table_pipeline_holds_the_sizes_run_sh_used(compose):
    from ts2.conf import pipeline

    p = pipeline("table1_tiny")
    assert [p.limit(b) for b in p.settings["evals"]] == [28, 28, 28, 8]  # HumanEval: 8 prompts
    assert (p.settings["sample"]["n"], p.settings["sample"]["max_new_tokens"], p.settings["tspd_rows"]) == (
        8,
        48,
        40,
    )
    # the measures of issue 19: the answers' diversity with the paper's string beside and K = 8, ref_lm on 2 samples
    # per prompt, the four controls, frontiers at 0.3 and 1.0 besides the table's 0.6
    assert p.settings["evaluate"][-3:] == [
        "diversity.text=response",
        "diversity.secondary=[paper]",
        "diversity.length_cut=8",
    ]
    assert p.settings["ref_lm"] == {
        "samples_per_prompt": 2,
        "answer_tokens": 48,
        "context_tokens": 64,
        "batch_size": 16,
    }
    assert p.settings["controls"] == ["reference", "shuffled", "random", "base"]
    assert p.settings["frontier"] == {"temperatures": [0.3, 1.0], "methods": ["ce", "gem", "ts2"], "seeds": 1}
    assert (p.settings["jobs"], p.settings["threads"], p.settings["launcher"]) == (2, 1, "python")
    assert p.settings["sampler"] == ["sampler=hf", "sampler.torch_threads=1"]
    # the judge: the RM build's TinyRMSpec and the evaluate overrides say the same
    # the judge: the RM build's TinyRMSpec is the one conf/rm/tiny.yaml gives the evaluation (one folder, one judge)
    from omegaconf import OmegaConf

    from ts2.models.tiny_rm import TinyRMSpec, spec_from_args

    assert p.settings["rm"] == ["quirk=false", "max_train_pairs=400", "epochs=2"]
    conf = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "rm" / "tiny.yaml").tiny)
    assert spec_from_args(p.settings["rm"]) == TinyRMSpec.from_dict(conf)
    assert "rm=tiny" in p.settings["evaluate"] and not any(
        o.startswith(("rm.", "+rm.")) for o in p.settings["evaluate"]
    )
    paper = pipeline("paper_llama31_8b").settings
    assert (paper["launcher"], paper["shards"], paper["gpus"]) == ("accelerate", "gpus", 8)
    assert paper["evaluate"] == ["rm=fsfairx", "diversity=paper"] and paper["sample"]["prompts"] is None


def test_training_jobs_seeds_per_method_and_the_two_ts2_rows():
    """Issue 19 items 4-5: CE, GEM and TS² train 2 seeds (seeds_for), the others 1; TS² has its paper-α row (one
    seed) and the selected-α row (TS²'s seeds); the frontier takes the first seed of each claim row."""
    from ts2.conf import pipeline

    p = pipeline("table1_tiny")
    assert p.settings["selected_alpha"] == 1.0
    assert [j.key for j in p.jobs] == [
        "ce/1234", "ce/1235", "ce_wd/1234", "neft/1234", "gem/1234", "gem/1235", "ce_ls/1234", "sparsemax/1234",
        "entmax15/1234", "ts2/1234", "ts2@loss.alpha=1/1234", "ts2@loss.alpha=1/1235",
    ]  # fmt: skip
    assert [j.key for j in p.frontier] == ["ce/1234", "gem/1234", "ts2@loss.alpha=1/1234"]
    sel = p.jobs[-1]
    assert p.job_overrides(sel) == [
        "experiment=table1_tiny", "method=ts2", "name=table1_tiny", "seed=1235", "loss.alpha=1",
        "train.resume=true",
    ]  # fmt: skip
    assert (
        p.job_overrides(p.jobs[0])[3] == "train.resume=true"
    )  # seed 1234: no seed= (a one-seed run is reused)
    # SEEDS=3 (run.sh: pipeline.seeds=3 ++pipeline.seeds_for=null): every method and row 3 seeds, at any scale
    three = pipeline("table1_tiny", ["pipeline.seeds=3", "++pipeline.seeds_for=null"])
    paper = pipeline(
        "paper_llama31_8b", ["pipeline.seeds=3", "++pipeline.seeds_for=null", "pipeline.methods=[ce]"]
    )
    assert [j.key for j in paper.jobs] == ["ce/1234", "ce/1235", "ce/1236"]
    assert len(three.jobs) == 9 * 3 and {j.seed for j in three.jobs} == {1234, 1235, 1236}
    assert [j.key for j in three.frontier] == ["ce/1234", "gem/1234", "ts2@loss.alpha=1/1234"]
    # the selected α equal to TS²'s own (the paper's 0.25), or none: one TS² row, with TS²'s seeds
    for a in ("0.25", "null"):
        one = pipeline("table1_tiny", [f"pipeline.selected_alpha={a}", "pipeline.methods=[ts2]"])
        assert [j.key for j in one.jobs] == ["ts2/1234", "ts2/1235"] and [j.key for j in one.frontier] == [
            "ts2/1234"
        ]
    every = pipeline("table1_tiny", ["pipeline.frontier.seeds=null", "pipeline.methods=[ce,ts2]"])
    assert [j.key for j in every.frontier] == [
        "ce/1234",
        "ce/1235",
        "ts2@loss.alpha=1/1234",
        "ts2@loss.alpha=1/1235",
    ]


@pytest.mark.parametrize(
    "override, message",
    [
        ("pipeline.seeds_for={methods:[ce],seeds:0}", "pipeline.seeds_for="),
        ("pipeline.seeds_for={methods:[nope],seeds:2}", "pipeline.seeds_for="),
        ("pipeline.selected_alpha=-1", "pipeline.selected_alpha=-1 must be null or TS²'s α"),
        ("pipeline.controls=[reference,judge]", "pipeline.controls has ['judge']: choose among"),
        ("pipeline.frontier.temperatures=[0]", "pipeline.frontier="),
        ("pipeline.frontier.methods=[nope]", "pipeline.frontier="),
        ("pipeline.ref_lm.samples_per_prompt=0", "pipeline.ref_lm.samples_per_prompt=0 must be >= 1"),
        ("pipeline.report=x", "pipeline.report='x' must be a list"),
    ],
)
def test_bad_pipeline_settings_are_refused_naming_the_key(override, message):
    from ts2.conf import pipeline

    with pytest.raises(ValueError, match=re.escape(message)):
        pipeline("table1_tiny", [override])


def test_the_small_table_pipeline():
    """SCALE=small: SmolLM2 as the base (its GGUF converted first), the BT judge, answers with K = 24, the frontier's
    quality axis the judge's win rate and ref_lm out of the quality gate (report overrides)."""
    from ts2.conf import gguf_models, pipeline, shell_assignments

    p = pipeline("table1_small")
    assert (p.model, p.scale, p.name, p.results) == ("smollm2_135m", "small", "table1_small", "results")
    assert [p.limit(b) for b in p.settings["evals"]] == [32, 16, 16, 12]
    assert gguf_models(p) == ["smollm2_135m"] and p.ref_lm_n == 2
    assert "rm=smollm2_bt" in p.settings["evaluate"] and "diversity.length_cut=24" in p.settings["evaluate"]
    # 8 methods + a second seed of CE and GEM + the selected α = 1 TS² row's 2 seeds beside the paper's α row (1 seed);
    # the frontier of TS² is its selected-α row's
    assert len(p.jobs) == 12 and [j.key for j in p.frontier] == [
        "ce/1234",
        "gem/1234",
        "ts2@loss.alpha=1/1234",
    ]
    sh = shell_assignments(p)
    assert (
        "REPORT=(frontier.quality=alpaca_eval/win_rate@1 'quality.metrics={ref_lm/ref_lm:{margin:null}}' "
        "ts2_alpha.selected=1)" in sh
    )
    assert "BASE_MODEL=smollm2_135m" in sh and "RM=()" in sh and "RM_BUILD=(-m ts2.models.feature_rm)" in sh


def test_a_method_subset_never_takes_the_full_tables_name():
    from ts2.conf import pipeline

    p = pipeline("table1_tiny", ["pipeline.methods=[ce,ts2]", "pipeline.seeds=2", "debug=cpu"])
    assert (p.name, p.results, p.methods, p.seeds) == (
        "table1_tiny_subset_ce-ts2", "results/table1_tiny_subset_ce-ts2", ("ce", "ts2"), (1234, 1235)
    )  # fmt: skip
    assert p.train_args == ("debug=cpu",)
    assert p.train_overrides("ts2", 1235) == [
        "experiment=table1_tiny", "method=ts2", "name=table1_tiny_subset_ce-ts2", "seed=1235", "train.resume=true",
        "debug=cpu",
    ]  # fmt: skip
    with pytest.raises(
        ValueError, match=r"name=table1_tiny with the method subset ce would overwrite the full"
    ):
        pipeline("table1_tiny", ["pipeline.methods=[ce]", "name=table1_tiny"])
    other = pipeline("table1_tiny", ["pipeline.methods=[ce]", "name=check"])
    assert (other.name, other.results) == ("check", "results/check")
    with pytest.raises(ValueError, match=r"pipeline.methods=\['nope'\]"):
        pipeline("table1_tiny", ["pipeline.methods=[nope]"])
    with pytest.raises(ValueError, match="pipeline.seeds=0"):
        pipeline("table1_tiny", ["pipeline.seeds=0"])


def test_run_sh_reads_the_pipeline_as_bash_assignments():
    import subprocess
    import sys

    script = (
        f'eval "$({sys.executable} -m ts2.conf pipeline table1_tiny pipeline.seeds=2 debug=cpu)"; '
        'echo "${SEEDS[1]} ${LIMIT[humaneval]} ${LIMIT[alpaca_eval]} ${#EVALUATE[@]} ${TRAIN_ARGS[0]} $SAMPLE_N '
        "$SAMPLE_MAX_NEW_TOKENS $NAME ${METHODS[7]} [$SHARDS] ${#CONTROLS[@]} ${FRONTIER_TEMPERATURES[1]} $REF_LM_N "
        '${REPORT[1]} $BASE_MODEL ${GGUF[0]} ${#HELDOUT_CE[@]} ${#RM_BUILD[@]} ${REF_LM[0]}"'
    )
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == [
        "1235", "8", "28", "5", "debug=cpu", "8", "48", "table1_tiny", "ts2", "[]", "4", "1.0", "2",
        "ts2_alpha.selected=1", "tiny_base", "smollm2_135m", "0", "0", "eval.metrics.samples_per_prompt=2",
    ]  # fmt: skip
    bad = subprocess.run([sys.executable, "-m", "ts2.conf", "pipeline", "table1_tiny", "pipeline.seeds=-1"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "pipeline.seeds=-1 must be a positive number" in bad.stderr


def test_training_leaves_the_pipeline_block_out_of_the_run_config(compose):
    """ts2.train drops `pipeline:` (it sizes run.sh, not the SFT), so changing a sampling size does not make
    another training run, and runs made before the block existed keep their hash."""
    from ts2.conf import training_config
    from ts2.runs import config_hash, identity

    cfg = compose(["experiment=table1_tiny", "method=ts2"])
    assert "pipeline" in cfg
    base = training_config(cfg)
    assert "pipeline" not in base and not any(k.startswith("pipeline") for k in identity(base))
    other = training_config(compose(["experiment=table1_tiny", "method=ts2", "pipeline.sample.n=2"]))
    assert config_hash(other) == config_hash(base)
    assert config_hash(training_config(compose(["experiment=table1_tiny", "method=ce"]))) != config_hash(base)
    # Dropping the checkpoints once finished is a disk setting: it leaves the hash (and so the finished runs) alone.
    dropped = training_config(
        compose(["experiment=table1_tiny", "method=ts2", "+train.keep_checkpoints=false"])
    )
    assert config_hash(dropped) == config_hash(base) and dropped.train.keep_checkpoints is False
    small = compose(["experiment=table1_small", "method=ts2"])
    assert small.train.keep_checkpoints is False and "train.keep_checkpoints" not in identity(
        training_config(small)
    )


def test_scale_key_reads_the_metrics_labels():
    from ts2.conf import scale_key

    tiny = "tiny-scale (tiny CPU models and tiny RM): a small real experiment, not comparable to the paper"
    assert scale_key([tiny]) == "tiny" and scale_key(["small"]) == scale_key(["small", "paper"]) == "small"
    assert scale_key(["paper"]) == "paper" and scale_key(["unspecified"]) == scale_key([]) == "unspecified"
    assert (
        scale_key(["tinyish"]) == "unspecified"
    )  # a label is a scale name, or starts with it and "-" or " "


@pytest.mark.parametrize("experiment", ["table1_tiny", "table1_small"])
def test_every_command_of_the_pipeline_composes(compose, experiment):
    """The overrides run.sh gives each stage compose into the entry points' configs (a bad key would fail the run
    after its training): evaluate of every benchmark, ref_lm, held-out CE and the frontier's folders; the controls'
    sampling; and the report's overrides."""
    from ts2.conf import pipeline, shell_assignments

    p = pipeline(experiment)
    s = p.settings
    n, new = s["sample"]["n"], s["sample"]["max_new_tokens"]
    for bench in s["evals"]:
        subset = [
            f"eval.sample.limit={p.limit(bench)}",
            f"eval.sample.n={n}",
            f"eval.sample.max_new_tokens={new}",
        ]
        cfg = compose([f"eval={bench}", *subset, *s["evaluate"]], config_name="evaluate")
        assert cfg.eval.sample.limit == p.limit(bench)
    assert cfg.diversity.text == "response" and list(cfg.diversity.secondary) == ["paper"]
    ref_args = [x.split("=", 1)[1] for x in shell_assignments(p).splitlines() if x.startswith("REF_LM=")]
    ref = compose(
        ["eval=ref_lm", "samples_dir=/x/frontier/t0.3/samples", *ref_args[0][1:-1].split()], "evaluate"
    )
    assert (ref.eval.metrics.samples_per_prompt, ref.eval.metrics.answer_tokens) == (2, 48)
    held = compose(["eval=heldout_ce", *s["heldout_ce"]], "evaluate")
    assert held.eval.metrics.max_length == (256 if experiment == "table1_small" else 512)
    for kind in s["controls"]:
        over = [f"model={p.model}", "eval=alpaca_eval", f"sample.limit={p.limit('alpaca_eval')}"]
        made = [] if kind == "base" else ["sampler=control", f"sampler.kind={kind}"]
        cfg = compose([*over, *made, *([] if made else s["sampler"])], "sample")
        assert cfg.sampler.get("kind", "base") == kind
    report = compose(list(s["report"]), "report")
    assert report.frontier.quality == (
        "ref_lm/ref_lm" if experiment == "table1_tiny" else "alpaca_eval/win_rate@1"
    )
