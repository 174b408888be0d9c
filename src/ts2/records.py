"""The run record: one reader of a run folder, one typed record (issue #18 item 1).

:func:`load_run` reads a folder of :mod:`ts2.runs` (``config.yaml``, ``run.json``, ``train_summary.json``,
``train_log.jsonl``, ``metrics/<bench>.json``, ``frontier/t<T>/metrics/``) into a :class:`RunRecord`: config,
status, method, seed, scale, metrics and their sizes, training numbers. :func:`collect` reads a runs folder;
:func:`group_runs` pools the seed runs of one configuration into a table row (:class:`RunGroup`). ``report``,
``table``, ``claims``, ``figures`` and the α sweep read runs through here; ``run.json`` itself is read only by
:func:`ts2.runs.run_meta` (the planner's status checks use it directly).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ts2.conf import Method, method_info
from ts2.runs import CONTROLS, identity, is_run_folder, log_records, read_json, run_meta, saved_config

DIAGNOSTICS = ("entropy", "support_size")  # training diagnostics whose last logged value a record keeps


@dataclass(frozen=True)
class Sizes:
    """What stands behind a benchmark's numbers in one run: prompts, samples, and whether none is missing."""

    prompts: int | None
    samples: int | None
    complete: bool


@dataclass(frozen=True)
class RunRecord:
    """A training run folder read back (:func:`load_run`)."""

    path: Path
    config: DictConfig | None  # the saved resolved config (config.yaml)
    status: str  # running | finished | failed (run.json), else finished/unknown by train_summary.json
    method: Method
    seed: int | None
    model: str | None  # the model id (run.json)
    scale: str | None  # run.json's scale
    metrics: dict[str, dict[str, Any]]  # benchmark -> its metrics/<bench>.json
    sizes: dict[str, Sizes]  # benchmark -> its sizes
    train: dict[str, Any]  # first/last loss and steps (train_summary.json), first/last token CE (the log)
    last_logged: dict[str, float]  # the last logged softmax entropy / sparsemax support_size (the log)
    control: str | None = None  # a judge control's kind (run.json ``control``), None for a training run
    frontier: dict[float, dict[str, dict[str, Any]]] = field(default_factory=dict)  # T -> bench -> metrics

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def scales(self) -> set[str]:
        """The scale labels of its metrics files, else its run.json scale."""
        labels = {str(m.get("scale", "unspecified")) for m in self.metrics.values()}
        return labels or {self.scale or "unspecified"}


def _metrics_files(folder: Path) -> dict[str, dict[str, Any]]:
    files = [(f, read_json(f)) for f in sorted(folder.glob("*.json"))]
    return {m.get("benchmark", f.stem): m for f, m in files}


def _frontier(run: Path) -> dict[float, dict[str, dict[str, Any]]]:
    """``<run>/frontier/t<T>/metrics/*.json`` by temperature T (a folder named otherwise is an error)."""
    out: dict[float, dict[str, dict[str, Any]]] = {}
    for d in sorted((run / "frontier").glob("*")) if (run / "frontier").is_dir() else []:
        try:
            t = float(d.name.removeprefix("t")) if d.name.startswith("t") else None
        except ValueError:
            t = None
        if t is None or not d.is_dir():
            raise ValueError(
                f"{d}: a frontier folder is named t<temperature> (e.g. t0.6) and holds samples/ and metrics/."
            )
        if files := _metrics_files(d / "metrics"):
            out[t] = files
    # The run's own metrics are the frontier's point at the table's temperature (sampled once, not twice).
    own = _metrics_files(run / "metrics") if out else {}
    for bench, m in own.items():
        t0 = ((m.get("sampling") or {}).get("sample") or {}).get("temperature")
        if isinstance(t0, (int, float)) and any(bench in f for f in out.values()):
            out.setdefault(float(t0), {}).setdefault(bench, m)
    return dict(sorted(out.items()))


def load_run(run: Path) -> RunRecord:
    """A run folder as a :class:`RunRecord`: run.json, config.yaml, the training summary and log, metrics files,
    the frontier's metrics; a control folder (run.json ``control``) as a record whose method is the control."""
    meta, cfg = run_meta(run), saved_config(run)
    control = meta.get("control")
    if control:
        method: Any = {"id": f"control={control}", "name": f"Control: {CONTROLS.get(control, control)}"}
        method["order"] = 1000 + (list(CONTROLS).index(control) if control in CONTROLS else len(CONTROLS))
    else:
        method = (
            OmegaConf.to_container(cfg.method) if cfg is not None and "method" in cfg else meta.get("method")
        )
    if not method:
        raise ValueError(
            f"{run}: neither config.yaml nor run.json names its method (not a ts2.train folder)."
        )
    s = read_json(run / "train_summary.json") if (run / "train_summary.json").is_file() else None
    keys = {"first_loss": "first_loss", "last_loss": "last_loss", "steps": "global_step"}
    train: dict[str, Any] = {k: s.get(v) for k, v in keys.items()} if s is not None else {}
    logged = log_records(run / "train_log.jsonl")
    ces = [r["ce"] for r in logged if "ce" in r]  # token CE of the logged steps: comparable across methods
    train.update({"first_ce": ces[0], "last_ce": ces[-1]} if ces else {})
    last = {k: float(r[k]) for r in logged for k in DIAGNOSTICS if isinstance(r.get(k), (int, float))}
    metrics = _metrics_files(run / "metrics")
    sizes = {
        b: Sizes(m.get("num_prompts"), m.get("num_samples"), bool(m.get("complete", False)))
        for b, m in metrics.items()
    }
    status = meta.get("status", "finished" if (run / "train_summary.json").is_file() else "unknown")
    seed, model, scale = cfg.get("seed") if cfg is not None else None, meta.get("model"), meta.get("scale")
    return RunRecord(
        run,
        cfg,
        status,
        method_info(method),
        seed,
        model,
        scale,
        metrics,
        sizes,
        train,
        last,
        control,
        _frontier(run),
    )


def collect(runs_dir: Path) -> list[RunRecord]:
    """Every run folder under ``runs_dir`` (sub-folders with run.json), in table order (model, method order, name)."""
    if not Path(runs_dir).is_dir():
        raise FileNotFoundError(
            f"runs_dir={runs_dir} is not a folder: pass runs_dir=<the folder holding the run "
            "folders> (python -m ts2.train ... name=<x> writes runs/<x>/)."
        )
    runs = [load_run(p) for p in sorted(Path(runs_dir).iterdir()) if is_run_folder(p)]
    if not runs:
        raise FileNotFoundError(
            f"No run folders (sub-folders with run.json) under runs_dir={runs_dir}: train "
            "into it first, or point runs_dir= at the folder ts2.train wrote."
        )
    return sorted(runs, key=lambda r: (str(r.model), r.method.order, r.name))


# Table rows: seed runs of one configuration pooled (issue #19 item 6)

NOT_A_SETTING = ("seed", "name")
"""Config keys that do not set two runs of one method apart as rows: runs differing only in these are seeds."""
SETTING_LABELS = {"loss.alpha": "α"}


@dataclass(frozen=True)
class RunGroup:
    """One table row: the seed runs of one method whose configs differ in ``seed`` alone."""

    key: str  # the method id, or "<method id>[<setting>=<value>,...]" when the method has several rows
    method: Method
    settings: dict[str, Any]  # the config values that set this row apart from the method's other rows
    runs: tuple[RunRecord, ...]
    tag: str | None = None  # "selected" / "paper" for the TS² α rows (see :func:`group_runs`)

    @property
    def label(self) -> str:
        """``CE``, ``CE (2 seeds)``, ``TS² (α=1, selected)``."""
        parts = [f"{SETTING_LABELS.get(k, k.split('.')[-1])}={_short(v)}" for k, v in self.settings.items()]
        parts += [self.tag] if self.tag else []
        parts += [f"{len(self.runs)} seeds"] if len(self.runs) > 1 else []
        return self.method.name + (f" ({', '.join(parts)})" if parts else "")

    @property
    def finished(self) -> bool:
        return all(r.finished for r in self.runs)


def _short(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _setting_key(r: RunRecord) -> tuple[tuple[str, str], ...]:
    if r.config is None:
        return ()
    ident = identity(r.config)
    return tuple(sorted((k, json.dumps(v, default=str)) for k, v in ident.items() if k not in NOT_A_SETTING))


def group_runs(runs: list[RunRecord], alpha: dict[str, float | None] | None = None) -> list[RunGroup]:
    """Rows of a table: runs of one method pooled when their configs differ in ``seed`` alone (controls left
    out). A method with several rows names in each row the settings that differ between them (``α=1``).

    ``alpha``: ``{"selected": α or None, "paper": α}`` tags the TS² rows (a loss with ``alpha``) whose α is the
    scale's selected one ("selected") or the paper's ("paper"), when TS² has several rows.
    """
    by: dict[str, dict[tuple, list[RunRecord]]] = {}
    for r in runs:
        if r.control is None:
            by.setdefault(r.method.id, {}).setdefault(_setting_key(r), []).append(r)
    out = []
    for mid, sets in by.items():
        diff: set[str] = set()
        if len(sets) > 1:
            keys = [dict(k) for k in sets]
            diff = {k for k in set().union(*keys) if len({d.get(k) for d in keys}) > 1}
        for k, members in sets.items():
            values = dict(k)
            settings = {x: json.loads(values[x]) if x in values else None for x in sorted(diff)}
            key = mid if not diff else f"{mid}[{','.join(f'{x}={_short(v)}' for x, v in settings.items())}]"
            tag = None
            a = settings.get("loss.alpha")
            if alpha and a is not None:
                tag = (
                    "selected" if alpha.get("selected") == a else "paper" if alpha.get("paper") == a else None
                )
            members = sorted(members, key=lambda r: (r.seed if r.seed is not None else 0, r.name))
            out.append(RunGroup(key, members[0].method, settings, tuple(members), tag))
    return sorted(out, key=lambda g: (str(g.runs[0].model), g.method.order, g.key))


def claim_groups(groups: list[RunGroup]) -> dict[str, RunGroup]:
    """The row each method's claims compare: its only row, else its ``selected`` row, else its ``paper`` row;
    a method with several rows and neither tag has no claim row (its claims are not measured)."""
    out: dict[str, RunGroup] = {}
    for mid in dict.fromkeys(g.method.id for g in groups):
        mine = [g for g in groups if g.method.id == mid]
        pick = (
            mine[0]
            if len(mine) == 1
            else next((g for tag in ("selected", "paper") for g in mine if g.tag == tag), None)
        )
        if pick is not None:
            out[mid] = pick
    return out
