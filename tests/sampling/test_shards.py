"""Sharded sampling (``shard=i/k``) and the merge: k shards then a merge give exactly the unsharded file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ts2.sampling.backends import Batch, HFBackend
from ts2.sampling.shards import (
    ShardError,
    ShardSpec,
    find_shards,
    main,
    merge_shards,
    parse_shard,
    samples_path,
    shard_batches,
    shard_meta,
    shard_pairs,
)
from ts2.sampling.store import SampleStore, read_samples


def test_parse_shard_accepts_i_of_k_and_names_bad_specs():
    assert parse_shard("0/2") == ShardSpec(0, 2) and parse_shard(" 3 / 4 ") == ShardSpec(3, 4)
    assert parse_shard(None) is None and parse_shard("") is None and parse_shard("0/1") is None
    with pytest.raises(ShardError, match=r"shard=2/2 is out of range: with k=2 shards, i must be 0\.\.1"):
        parse_shard("2/2")
    with pytest.raises(ShardError, match="k must be >= 1"):
        parse_shard("0/0")
    with pytest.raises(ShardError, match="must look like i/k"):
        parse_shard("1of2")
    with pytest.raises(ShardError, match="must look like i/k"):
        parse_shard("-1/2")


def test_shards_partition_the_plan_and_keep_global_indices():
    plan = HFBackend.plan(type("B", (), {"batch_size": 8})(), 5, 4)  # 2 prompts x 4 samples per batch
    assert plan == [Batch((0, 1), range(0, 4)), Batch((2, 3), range(0, 4)), Batch((4,), range(0, 4))]
    ids = [f"p{i}" for i in range(5)]
    parts = [shard_batches(plan, ShardSpec(i, 3)) for i in range(3)]
    assert parts == [[plan[0]], [plan[1]], [plan[2]]]
    two = [shard_batches(plan, ShardSpec(i, 2)) for i in range(2)]
    assert two == [[plan[0], plan[2]], [plan[1]]]
    pairs = [shard_pairs(p, ids) for p in two]
    assert pairs[0].isdisjoint(pairs[1]) and pairs[0] | pairs[1] == {(p, s) for p in ids for s in range(4)}
    assert shard_batches(plan, None) == plan
    assert samples_path("out", "humaneval", ShardSpec(1, 4)) == Path("out/humaneval.shard-1-of-4.jsonl")
    assert samples_path("out", "humaneval", None) == Path("out/humaneval.jsonl")


# ------------------------------------------------------------------ merge on hand-written shard files
IDS = ["a", "b", "c"]
FP = {"model_path": "m", "backend": "hf", "dtype": "float32", "sample": {"seed": 42}, "prompts": {}}


def _line(pid: str, s: int, text: str | None = None) -> dict:
    return {
        "prompt_id": pid,
        "sample_idx": s,
        "prompt": f"Q {pid}",
        "completion": text or f"{pid}{s}",
        "finish_reason": "stop",
        "num_tokens": 3,
        "instruction": pid,
    }


def _write_shard(out: Path, i: int, k: int, pairs, *, complete=True, fp=FP, ids=IDS, n=2) -> Path:
    path = samples_path(out, "bench", ShardSpec(i, k))
    with SampleStore(path) as st:
        st.append([_line(p, s) for p, s in pairs])
        st.write_meta(
            {
                "benchmark": "bench",
                "complete": complete,
                "fingerprint": fp,
                "shard": shard_meta(ShardSpec(i, k), ids, n),
                "written_samples": len(pairs),
                "started_at": f"2026-01-0{i + 1}",
            }
        )
    return path


def _all() -> list[tuple[str, int]]:
    return [(p, s) for p in IDS for s in range(2)]


def test_merge_writes_the_union_sorted_and_is_idempotent(tmp_path):
    _write_shard(tmp_path, 0, 2, [("c", 0), ("a", 1), ("a", 0)])
    _write_shard(tmp_path, 1, 2, [("b", 0), ("b", 1), ("c", 1)])
    meta = merge_shards(tmp_path, "bench")
    merged = tmp_path / "bench.jsonl"
    assert [(s.prompt_id, s.sample_idx) for s in read_samples(merged)] == _all()  # prompt order, then sample
    assert [s.fields for s in read_samples(merged)][0] == {"instruction": "a"}
    assert meta["complete"] and meta["written_samples"] == meta["expected_samples"] == 6
    on_disk = json.loads((tmp_path / "bench.meta.json").read_text())
    assert on_disk["fingerprint"] == FP and "shard" not in on_disk and on_disk["started_at"] == "2026-01-01"
    assert [m["file"] for m in on_disk["merged_from"]] == [
        "bench.shard-0-of-2.jsonl",
        "bench.shard-1-of-2.jsonl",
    ]
    before = merged.read_bytes()
    merge_shards(tmp_path, "bench")
    assert merged.read_bytes() == before


def test_merge_of_unfinished_shards_is_marked_incomplete_then_completed(tmp_path):
    _write_shard(tmp_path, 0, 2, [("a", 0), ("a", 1), ("c", 0)])
    _write_shard(tmp_path, 1, 2, [("b", 0)], complete=False)
    meta = merge_shards(tmp_path, "bench")
    assert not meta["complete"] and meta["written_samples"] == 4
    # The shard resumes and finishes; merging again completes the file.
    _write_shard(tmp_path, 1, 2, [("b", 1), ("c", 1)])
    meta = merge_shards(tmp_path, "bench")
    assert (
        meta["complete"]
        and [(s.prompt_id, s.sample_idx) for s in read_samples(tmp_path / "bench.jsonl")] == _all()
    )


def test_merge_refuses_mismatched_missing_or_conflicting_shards(tmp_path):
    _write_shard(tmp_path, 0, 2, [("a", 0)])
    with pytest.raises(ShardError, match=r"shard\(s\) 1/2 of bench are missing"):
        merge_shards(tmp_path, "bench")
    other = _write_shard(tmp_path, 1, 2, [("b", 0)], fp={**FP, "sample": {"seed": 7}})
    with pytest.raises(
        ShardError, match=r"bench.shard-1-of-2.meta.json: sampled with other settings.*\['sample'\]"
    ):
        merge_shards(tmp_path, "bench")
    other.unlink()
    other.with_suffix(".meta.json").unlink()
    _write_shard(tmp_path, 1, 2, [("b", 0)], ids=["a", "b"])
    with pytest.raises(ShardError, match="shard.prompt_ids differs"):
        merge_shards(tmp_path, "bench")
    _write_shard(tmp_path, 0, 3, [("a", 0)])
    with pytest.raises(ShardError, match=r"different shard counts k=\[2, 3\]"):
        find_shards(tmp_path, "bench")
    assert main(["merge", str(tmp_path), "bench"]) == 2  # the CLI prints the error and exits 2


def test_merge_refuses_a_pair_two_files_disagree_on_and_a_foreign_target(tmp_path):
    _write_shard(tmp_path, 0, 2, [("a", 0)])
    _write_shard(tmp_path, 1, 2, [("b", 0)])
    with SampleStore(tmp_path / "bench.jsonl") as st:  # an unsharded run wrote ("a", 0) differently
        st.append([_line("a", 0, text="other")])
        st.write_meta({"fingerprint": FP})
    with pytest.raises(ShardError, match=r"\('a', 0\) differs from the same pair in bench.jsonl"):
        merge_shards(tmp_path, "bench")
    with SampleStore(tmp_path / "bench.jsonl") as st:
        st.reset()
        st.append([_line("c", 1)])  # an unsharded resume added a pair: the merge keeps it
        st.write_meta({"fingerprint": FP})
    meta = merge_shards(tmp_path, "bench")
    assert meta["written_samples"] == 3
    with SampleStore(tmp_path / "bench.jsonl") as st:
        st.write_meta({"fingerprint": {**FP, "model_path": "other"}})
    with pytest.raises(ShardError, match="already holds samples made with other settings"):
        merge_shards(tmp_path, "bench")


# ------------------------------------------------------------------------- end to end, HF backend
def _sample(sample_cfg, out: Path, *extra: str) -> None:
    from ts2.sample import run

    cfg = sample_cfg(
        [
            "model=tiny",
            "eval=alpaca_eval",
            "sample.limit=5",
            "sample.n=4",
            "sample.max_new_tokens=6",
            "sampler.batch_size=8",  # 2 prompts x 4 samples per batch: 3 batches, shards of unequal size
            f"out_dir={out}",
            *extra,
        ]
    )
    run([cfg])


def _lines(path: Path) -> set[tuple]:
    return {
        (s.prompt_id, s.sample_idx, s.completion, s.finish_reason, s.num_tokens) for s in read_samples(path)
    }


def test_two_shards_then_merge_equal_one_run(sample_cfg, tmp_path):
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    _sample(sample_cfg, one)
    for i in (1, 0):  # order does not matter
        _sample(sample_cfg, sharded, f"shard={i}/2")
    assert not (sharded / "alpaca_eval.jsonl").exists()
    parts = [_lines(sharded / f"alpaca_eval.shard-{i}-of-2.jsonl") for i in range(2)]
    assert len(parts[0]) == 12 and len(parts[1]) == 8 and parts[0].isdisjoint(parts[1])
    assert main(["merge", str(sharded)]) == 0
    expected = _lines(one / "alpaca_eval.jsonl")
    assert len(expected) == 20 and _lines(sharded / "alpaca_eval.jsonl") == expected
    full = {(s.prompt_id, s.sample_idx, s.prompt) for s in read_samples(one / "alpaca_eval.jsonl")}
    assert {
        (s.prompt_id, s.sample_idx, s.prompt) for s in read_samples(sharded / "alpaca_eval.jsonl")
    } == full
    meta = json.loads((sharded / "alpaca_eval.meta.json").read_text())
    assert meta["complete"] and meta["expected_samples"] == 20
    assert meta["fingerprint"] == json.loads((one / "alpaca_eval.meta.json").read_text())["fingerprint"]
    # A plain run on the merged folder finds nothing left to do (the merged file resumes like any other).
    _sample(sample_cfg, sharded)
    assert _lines(sharded / "alpaca_eval.jsonl") == expected


def test_shard_out_of_range_is_refused_before_loading(sample_cfg, tmp_path):
    with pytest.raises(ShardError, match="out of range"):
        _sample(sample_cfg, tmp_path, "shard=2/2")
    assert not any(tmp_path.iterdir())
