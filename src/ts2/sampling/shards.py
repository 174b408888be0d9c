"""Data-parallel sampling shards and their merge into the one samples file the evaluators read.

``python -m ts2.sample ... shard=i/k`` (``i`` in ``0..k-1``) samples the ``i``-th of ``k`` shards of a
benchmark: every ``k``-th batch of the backend's fixed plan (:meth:`HFBackend.plan` / :meth:`VLLMBackend.plan`
over *all* the benchmark's prompts), starting at batch ``i``. A batch keeps its global prompt indices, so it is
the very batch an unsharded run would generate, with the same composition, padding and seed
(:func:`ts2.sampling.backends.derive_seed` of the run seed and the batch's first global (prompt, sample)
index; vLLM: one seed per prompt): the union of the ``k`` shards is, line for line, the unsharded file.
Each shard is an ordinary resumable samples file of its own:
``<out_dir>/<bench>.shard-<i>-of-<k>.jsonl`` and ``.meta.json`` (whose ``shard`` entry lists the benchmark's
prompt ids and ``n``). Shards can run on different GPUs or nodes, each with vLLM tensor parallelism
(``sampler.tensor_parallel_size``).

``python -m ts2.sampling.shards merge <out_dir or run_dir> [bench ...]`` then writes ``<bench>.jsonl`` and
``<bench>.meta.json``:

- it refuses shards whose fingerprints (model, backend, dtype, sampling settings, prompts), prompt lists,
  ``n`` or shard counts differ, a missing shard, a pair two shards disagree on, and an existing
  ``<bench>.jsonl`` made with other settings;
- it is idempotent (the merged file is rebuilt from the shards plus the pairs already in ``<bench>.jsonl``,
  sorted by prompt then sample, and replaced atomically under the samples-file lock);
- it is resumable: shards that are still incomplete give a merged file marked incomplete, which a rerun
  of the merge (after the shards finish) or a plain unsharded ``ts2.sample`` run completes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("ts2.sampling")

_SHARD_FILE = re.compile(r"^(?P<bench>.+)\.shard-(?P<i>\d+)-of-(?P<k>\d+)\.jsonl$")


class ShardError(ValueError):
    """A shard spec or a set of shard files that cannot be used; the message names the problem and file."""


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def suffix(self) -> str:
        return f"shard-{self.index}-of-{self.count}"


def parse_shard(spec: Any) -> ShardSpec | None:
    """``"i/k"`` -> ``ShardSpec(i, k)``; ``None`` / ``""`` / ``"0/1"`` -> ``None`` (no sharding)."""
    if spec is None or spec == "":
        return None
    if isinstance(spec, ShardSpec):
        parsed = spec
    else:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
        if not m:
            raise ShardError(
                f"shard={spec!r} must look like i/k: shard i (counted from 0) of k, e.g. shard=0/4 ... shard=3/4."
            )
        parsed = ShardSpec(int(m.group(1)), int(m.group(2)))
    if parsed.count < 1:
        raise ShardError(f"shard={spec}: the number of shards k must be >= 1.")
    if not 0 <= parsed.index < parsed.count:
        raise ShardError(
            f"shard={spec} is out of range: with k={parsed.count} shards, i must be 0..{parsed.count - 1} "
            "(shards are counted from 0)."
        )
    return None if parsed.count == 1 else parsed


def shard_batches(batches: Sequence[Any], shard: ShardSpec | None) -> list[Any]:
    """The batches of the full plan that belong to ``shard`` (every k-th, from the i-th); all when None."""
    batches = list(batches)
    return batches if shard is None else batches[shard.index :: shard.count]


def shard_pairs(batches: Sequence[Any], prompt_ids: Sequence[Hashable]) -> set[tuple[Hashable, int]]:
    """The (prompt_id, sample_idx) pairs the batches generate."""
    return {(prompt_ids[i], s) for b in batches for i in b.prompts for s in b.samples}


def samples_path(out_dir: str | Path, bench: str, shard: ShardSpec | None) -> Path:
    """``<out_dir>/<bench>.jsonl``, or ``<out_dir>/<bench>.shard-<i>-of-<k>.jsonl`` for a shard."""
    name = f"{bench}.jsonl" if shard is None else f"{bench}.{shard.suffix}.jsonl"
    return Path(out_dir) / name


def shard_meta(shard: ShardSpec, prompt_ids: Sequence[Hashable], n: int) -> dict[str, Any]:
    """The ``shard`` entry of a shard's meta file: what the merge checks and orders by."""
    return {"index": shard.index, "count": shard.count, "n": n, "prompt_ids": list(prompt_ids)}


# ------------------------------------------------------------------------------------------- merge
def _meta(path: Path) -> dict[str, Any]:
    meta_path = path.with_suffix(".meta.json")
    if not meta_path.is_file():
        raise ShardError(f"{path}: no {meta_path.name}, so how it was sampled is unknown; rerun that shard.")
    try:
        return json.loads(meta_path.read_text())
    except ValueError as err:
        raise ShardError(f"{meta_path}: not valid JSON ({err}).") from err


def find_shards(out_dir: Path, bench: str) -> dict[int, Path]:
    """Shard files of ``bench`` in ``out_dir`` by index; all must agree on k and all k must be there."""
    found: dict[int, dict[int, Path]] = {}
    for p in out_dir.glob(f"{bench}.shard-*-of-*.jsonl"):
        m = _SHARD_FILE.match(p.name)
        if m and m.group("bench") == bench:
            found.setdefault(int(m.group("k")), {})[int(m.group("i"))] = p
    if not found:
        raise ShardError(f"No shard files {bench}.shard-<i>-of-<k>.jsonl in {out_dir}.")
    if len(found) > 1:
        raise ShardError(
            f"{out_dir}: shards of {bench} from different shard counts k={sorted(found)}; remove the stale ones."
        )
    ((k, shards),) = found.items()
    missing = sorted(set(range(k)) - set(shards))
    if missing:
        raise ShardError(
            f"{out_dir}: shard(s) {', '.join(f'{i}/{k}' for i in missing)} of {bench} are missing "
            f"(found {sorted(shards)}); run them with shard=i/{k}."
        )
    return dict(sorted(shards.items()))


def _line(s: Any) -> dict[str, Any]:
    return {
        "prompt_id": s.prompt_id,
        "sample_idx": s.sample_idx,
        "prompt": s.prompt,
        "completion": s.completion,
        "finish_reason": s.finish_reason,
        "num_tokens": s.num_tokens,
        **s.fields,
    }


def merge_shards(out_dir: str | Path, bench: str) -> dict[str, Any]:
    """Merge ``bench``'s shards in ``out_dir`` into ``<bench>.jsonl`` + meta (module docstring); returns the meta."""
    from ts2.sampling.store import SampleStore, read_samples

    out_dir = Path(out_dir)
    shards = find_shards(out_dir, bench)
    metas = {i: _meta(p) for i, p in shards.items()}
    first_i = next(iter(shards))
    ref = metas[first_i]
    ref_shard = ref.get("shard") or {}
    for i, meta in metas.items():
        info = meta.get("shard") or {}
        where = shards[i].with_suffix(".meta.json")
        if info.get("index") != i or info.get("count") != len(shards):
            raise ShardError(
                f"{where}: says shard {info.get('index')}/{info.get('count')}, file name says {i}/{len(shards)}."
            )
        if meta.get("fingerprint") != ref.get("fingerprint"):
            diff = sorted(
                k
                for k in set(meta.get("fingerprint") or {}) | set(ref.get("fingerprint") or {})
                if (meta.get("fingerprint") or {}).get(k) != (ref.get("fingerprint") or {}).get(k)
            )
            raise ShardError(
                f"{where}: sampled with other settings than {shards[first_i].name} (fingerprint keys differ: "
                f"{diff}); resample that shard with the same model, backend and sample settings."
            )
        for key in ("n", "prompt_ids"):
            if info.get(key) != ref_shard.get(key):
                raise ShardError(
                    f"{where}: shard.{key} differs from {shards[first_i].name}'s (sample.n / sample.limit "
                    "must be the same for every shard)."
                )
    prompt_ids = list(ref_shard["prompt_ids"])
    n = int(ref_shard["n"])
    order = {pid: k for k, pid in enumerate(prompt_ids)}

    lines: dict[tuple[Hashable, int], dict[str, Any]] = {}
    origin: dict[tuple[Hashable, int], str] = {}

    def add(sample: Any, source: str) -> None:
        key = (sample.prompt_id, sample.sample_idx)
        line = _line(sample)
        if key in lines and lines[key] != line:
            raise ShardError(
                f"{source}: (prompt_id, sample_idx)={key} differs from the same pair in {origin[key]}; "
                "the shards were not sampled identically."
            )
        lines.setdefault(key, line)
        origin.setdefault(key, source)

    target = out_dir / f"{bench}.jsonl"
    with SampleStore(target) as store:  # holds the samples-file lock: no sampler appends meanwhile
        old = store.read_meta()
        if store.done:
            if old is None or old.get("fingerprint") != ref.get("fingerprint"):
                raise ShardError(
                    f"{target} already holds samples made with other settings (or without a meta file); "
                    "move it away before merging these shards."
                )
            for s in read_samples(target):
                add(s, target.name)
        for p in shards.values():
            for s in read_samples(p):
                add(s, p.name)
        unknown = sorted({str(k[0]) for k in lines if k[0] not in order})
        if unknown:
            raise ShardError(
                f"{bench}: samples for prompt ids not in the shards' prompt list: {unknown[:5]}."
            )
        keys = sorted(lines, key=lambda k: (order[k[0]], k[1]))
        body = "".join(json.dumps(lines[k], ensure_ascii=False) + "\n" for k in keys).encode()
        tmp = target.with_name(f".{target.name}.merge-{os.getpid()}")
        with open(tmp, "wb") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        expected = len(prompt_ids) * n
        incomplete = [f"{i}/{len(shards)}" for i, m in metas.items() if not m.get("complete")]
        meta = {k: v for k, v in ref.items() if k not in ("shard", "last_run", "samples_file")}
        meta.update(
            samples_file=target.name,
            num_prompts=len(prompt_ids),
            expected_samples=expected,
            written_samples=len(keys),
            complete=len(keys) == expected,
            merged_from=[
                {
                    "file": p.name,
                    "complete": bool(metas[i].get("complete")),
                    "written_samples": metas[i].get("written_samples"),
                    "last_run": metas[i].get("last_run"),
                }
                for i, p in shards.items()
            ],
            started_at=min((m.get("started_at") or "" for m in metas.values()), default=None) or None,
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        store.write_meta(meta)
    if incomplete:
        log.warning(
            "%s: shard(s) %s are incomplete: %s has %d/%d samples and is marked incomplete; finish them "
            "and merge again.",
            bench,
            ", ".join(incomplete),
            target,
            len(keys),
            expected,
        )
    else:
        log.info(
            "%s: merged %d shards into %s (%d/%d samples).", bench, len(shards), target, len(keys), expected
        )
    return meta


def _resolve_dir(path: Path) -> Path:
    """An out_dir, or a training run folder whose samples are in ``<run_dir>/samples``."""
    if not path.is_dir():
        raise ShardError(f"{path} is not a directory.")
    if not any(path.glob("*.shard-*-of-*.jsonl")) and (path / "samples").is_dir():
        return path / "samples"
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ts2.sampling.shards",
        description="Merge sampling shards (<bench>.shard-i-of-k.jsonl) into <bench>.jsonl.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("merge", help="merge the shards of each benchmark (all found when none is named)")
    m.add_argument("dir", type=Path, help="the samples folder (out_dir), or a training run folder")
    m.add_argument("bench", nargs="*", help="benchmark ids (default: every benchmark with shard files)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        out_dir = _resolve_dir(args.dir)
        benches = args.bench or sorted(
            {mm.group("bench") for p in out_dir.glob("*.jsonl") if (mm := _SHARD_FILE.match(p.name))}
        )
        if not benches:
            raise ShardError(f"No shard files (<bench>.shard-<i>-of-<k>.jsonl) in {out_dir}.")
        for bench in benches:
            meta = merge_shards(out_dir, bench)
            print(
                f"{bench}: {meta['written_samples']}/{meta['expected_samples']} samples -> "
                f"{out_dir / meta['samples_file']} ({'complete' if meta['complete'] else 'INCOMPLETE'})"
            )
    except (ValueError, OSError, RuntimeError) as err:  # ShardError, SampleFileError, a held lock
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from ts2 import cli

    cli.run(main, interrupted=cli.RERUN)
