"""ssae_lens.distributed: sharding, the chunk store, and 2-process gloo runs under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from _distributed_worker import HOOK, item_rows, library_results, tiny_sae
from safetensors.torch import load_file

from ssae_lens import harvest_shifts, load_pairs
from ssae_lens.distributed import (
    DEFAULT_TIMEOUT_S,
    TIMEOUT_ENV,
    ChunkStore,
    DistributedContext,
    compute_chunks,
    current,
    process_group,
    run_sharded,
    shard,
    timeout_from_env,
)

WORKER = Path(__file__).with_name("_distributed_worker.py")
ROOT = Path(__file__).resolve().parents[1]
N_ITEMS, CHUNK = 23, 3  # the worker's defaults: 8 chunks, the last one of 2 items
CHUNKS = [(a, min(a + CHUNK, N_ITEMS)) for a in range(0, N_ITEMS, CHUNK)]
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


# ------------------------------------------------------------------------------ sharding
@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [0, 1, 2, 7, 23])
def test_shard_is_a_balanced_partition(n, world):
    shares = [list(shard(n, rank, world)) for rank in range(world)]
    flat = [i for share in shares for i in share]
    assert sorted(flat) == list(range(n))  # disjoint and covering
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    for rank, share in enumerate(shares):  # strided, and a pure function of its arguments
        assert share == [i for i in range(n) if i % world == rank]
        assert list(shard(n, rank, world)) == share


@pytest.mark.parametrize("args", [(5, 2, 2), (5, -1, 2), (5, 0, 0), (-1, 0, 1)])
def test_shard_rejects_bad_arguments(args):
    with pytest.raises(ValueError, match="rank|n_items"):
        shard(*args)


# ------------------------------------------------------------------------------ context
def test_current_single_process_and_torchrun_env(monkeypatch):
    for name in (*TORCHRUN_ENV, TIMEOUT_ENV):
        monkeypatch.delenv(name, raising=False)
    ctx = current()
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main) == (0, 1, 0, True)
    assert ctx.timeout_s == DEFAULT_TIMEOUT_S
    with process_group() as inside:  # one process: no process group
        assert inside == ctx
        assert not torch.distributed.is_initialized()

    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv(TIMEOUT_ENV, "7.5")
    ctx = current()
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main) == (3, 4, 0, False)
    assert ctx.timeout_s == 7.5
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert ctx.device.type == expected


def test_current_rejects_incomplete_environment(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="RANK, LOCAL_RANK is not.*torchrun"):
        current()
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match="0 <= RANK < WORLD_SIZE"):
        current()
    monkeypatch.setenv("RANK", "1")
    with (
        pytest.raises(ValueError, match="MASTER_ADDR, MASTER_PORT is not set"),
        process_group(),
    ):
        pass


@pytest.mark.parametrize("raw", ["abc", "0", "-3", "inf"])
def test_bad_timeout_is_refused(monkeypatch, raw):
    monkeypatch.setenv(TIMEOUT_ENV, raw)
    with pytest.raises(ValueError, match=f"{TIMEOUT_ENV}=.*seconds"):
        timeout_from_env()


# ------------------------------------------------------------------------------ one process
def _single() -> DistributedContext:
    return DistributedContext(0, 1, 0, torch.device("cpu"), 10.0)


def _counting(work):
    calls: list[tuple[int, int]] = []

    def compute(items: range) -> dict[str, torch.Tensor]:
        calls.append((items.start, items.stop))
        return work(items)

    return compute, calls


def test_single_process_run_matches_a_plain_loop_and_resumes(tmp_path):
    store = ChunkStore(tmp_path / "s", {"task": "rows"}, N_ITEMS, CHUNK)
    assert [(c.start, c.stop) for c in store.chunks] == CHUNKS
    store.open()
    store.write(range(6, 9), item_rows(range(6, 9)))  # as left by an interrupted run
    compute, calls = _counting(item_rows)
    result = run_sharded(compute, store, ctx=_single())
    assert calls == [c for c in CHUNKS if c != (6, 9)]
    expected = item_rows(range(N_ITEMS))
    assert torch.equal(result["rows"], expected["rows"])
    assert torch.equal(result["index"], torch.arange(N_ITEMS))

    compute, calls = _counting(item_rows)
    again = run_sharded(compute, ChunkStore(tmp_path / "s", {"task": "rows"}, N_ITEMS, CHUNK))
    assert calls == []  # everything was on disk
    assert torch.equal(again["rows"], expected["rows"])
    assert not [p for p in (tmp_path / "s").iterdir() if p.name.startswith(".")]  # no temp files


def test_rerun_recomputes_a_damaged_chunk(tmp_path):
    from ssae_lens._core.cache import CacheWarning

    store = ChunkStore(tmp_path / "s", {"task": "rows"}, N_ITEMS, CHUNK)
    run_sharded(item_rows, store, ctx=_single())
    damaged = store.path(range(9, 12))
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 1  # one bit of the payload
    damaged.write_bytes(bytes(data))
    compute, calls = _counting(item_rows)
    with pytest.warns(CacheWarning, match=damaged.name):
        result = run_sharded(compute, store, ctx=_single())
    assert calls == [(9, 12)]
    assert torch.equal(result["rows"], item_rows(range(N_ITEMS))["rows"])


def test_single_process_error_propagates_unchanged(tmp_path):
    def compute(items: range) -> dict[str, torch.Tensor]:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        run_sharded(compute, ChunkStore(tmp_path, {}, 4, 2), ctx=_single())


def test_compute_chunks_in_memory_and_in_a_store_agree_and_resume(tmp_path):
    made = []

    def baseline() -> dict[str, torch.Tensor]:
        made.append("baseline")
        return {"x": torch.arange(3.0)}

    compute, calls = _counting(item_rows)
    in_memory, named = compute_chunks(compute, N_ITEMS, CHUNK, entries={"base": baseline})
    assert calls == CHUNKS and made == ["baseline"]
    assert torch.equal(in_memory["rows"], item_rows(range(N_ITEMS))["rows"])
    assert torch.equal(named["base"]["x"], torch.arange(3.0))

    def stored() -> ChunkStore:
        return ChunkStore(tmp_path / "s", {"task": "rows"}, N_ITEMS, CHUNK)

    compute, calls = _counting(item_rows)
    kept, named = compute_chunks(
        compute, N_ITEMS, CHUNK, store=stored(), entries={"base": baseline}
    )
    assert calls == CHUNKS and made == ["baseline"] * 2
    assert torch.equal(kept["rows"], in_memory["rows"])
    compute, calls = _counting(item_rows)
    again, named = compute_chunks(
        compute, N_ITEMS, CHUNK, store=stored(), entries={"base": baseline}
    )
    assert calls == [] and made == ["baseline"] * 2  # all on disk, the entry too
    assert torch.equal(again["rows"], in_memory["rows"])
    assert torch.equal(named["base"]["x"], torch.arange(3.0))
    with pytest.raises(ValueError, match="holds 23 items, not 5"):
        compute_chunks(item_rows, 5, CHUNK, store=stored())


def test_several_machines_need_a_shared_folder(tmp_path, monkeypatch):
    """Without a store, ranks on several machines (LOCAL_WORLD_SIZE < WORLD_SIZE) would each
    write to their own temporary folder: refused before any work, naming the fix."""
    store = torch.distributed.FileStore(str(tmp_path / "rendezvous"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
        two = DistributedContext(0, 2, 0, torch.device("cpu"), 10.0)
        compute, calls = _counting(item_rows)
        with pytest.raises(ValueError, match="several machines .* pass cache_dir"):
            compute_chunks(compute, N_ITEMS, CHUNK, ctx=two)
        assert calls == []
    finally:
        torch.distributed.destroy_process_group()


# ------------------------------------------------------------------------------ torchrun
def _torchrun(
    tmp_path: Path,
    *args: str,
    timeout_s: float = 120,
    limit_s: float = 150,
    nproc: int = 2,
    env_extra: dict[str, str] | None = None,
) -> tuple[subprocess.CompletedProcess, float]:
    """Run the worker on ``nproc`` CPU processes (gloo) with store, output and log in
    ``tmp_path``; ``nproc=0``: one plain process, without torchrun."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",  # gloo on CPU even where a GPU exists
        HF_HUB_OFFLINE="1",
        **{TIMEOUT_ENV: str(timeout_s)},
        **(env_extra or {}),
    )
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [
        sys.executable,
        *(launcher if nproc else []),  # --standalone: rendezvous on a free local port
        str(WORKER),
        str(tmp_path / "store"),
        str(tmp_path / "out"),
        str(tmp_path / "log"),
        *args,
    ]
    start = time.monotonic()
    proc = subprocess.run(
        cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=limit_s
    )
    return proc, time.monotonic() - start


def _log(tmp_path: Path) -> list[tuple[int, int, int]]:
    path = tmp_path / "log"
    lines = path.read_text().split("\n") if path.exists() else []
    return [tuple(map(int, line.split())) for line in lines if line]


def _written(tmp_path: Path) -> set[tuple[int, int]]:
    store = ChunkStore(tmp_path / "store", {"task": "rows"}, N_ITEMS, CHUNK)
    return {(c.start, c.stop) for c in store.chunks if store.path(c).is_file()}


def _outputs(tmp_path: Path) -> list[dict[str, torch.Tensor]]:
    return [load_file(tmp_path / f"out.rank{r}.safetensors") for r in range(2)]


def test_two_ranks_equal_one_process_and_skip_chunks_on_disk(tmp_path):
    store = ChunkStore(tmp_path / "store", {"task": "rows"}, N_ITEMS, CHUNK)
    store.open()
    for a, b in [(3, 6), (12, 15)]:  # left by an earlier, interrupted run
        store.write(range(a, b), item_rows(range(a, b)))
    proc, _ = _torchrun(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    pending = [c for c in CHUNKS if c not in {(3, 6), (12, 15)}]
    # Each pending chunk computed once, by the rank its position in the pending list gives.
    assert sorted(_log(tmp_path)) == sorted((j % 2, a, b) for j, (a, b) in enumerate(pending))
    one = run_sharded(item_rows, ChunkStore(tmp_path / "one", {"task": "rows"}, N_ITEMS, CHUNK))
    for out in _outputs(tmp_path):  # every rank gets the merged result
        assert torch.equal(out["rows"], one["rows"])
        assert torch.equal(out["rows"], item_rows(range(N_ITEMS))["rows"])
        assert torch.equal(out["index"], torch.arange(N_ITEMS))


def test_killed_rank_then_rerun_resumes_without_recomputing(tmp_path):
    proc, _ = _torchrun(tmp_path, "--exit-rank", "1", "--exit-after", "1")
    assert proc.returncode != 0
    written, first = _written(tmp_path), _log(tmp_path)
    # Rank 1 wrote its first chunk (3, 6) and died when asked for its second, (9, 12).
    assert (3, 6) in written and (9, 12) not in written
    assert written <= {(a, b) for _, a, b in first}
    assert len(first) == len(set(first))

    (tmp_path / "log").unlink()
    proc, _ = _torchrun(tmp_path)  # the same command again
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = [(a, b) for _, a, b in _log(tmp_path)]
    assert sorted(second) == sorted(set(CHUNKS) - written)  # only the missing, each once
    for out in _outputs(tmp_path):
        assert torch.equal(out["rows"], item_rows(range(N_ITEMS))["rows"])


def test_failing_rank_fails_every_rank_quickly(tmp_path):
    proc, seconds = _torchrun(tmp_path, "--raise-rank", "1", timeout_s=300)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "rank 1/2 failed computing items 3..5: ValueError: test failure" in text
    assert "rerun the same command to resume" in text
    assert seconds < 100  # far below the 300 s collective timeout: nobody waited for it
    assert not (tmp_path / "out.rank0.safetensors").exists()


def test_stuck_rank_times_out_with_a_clear_message(tmp_path):
    proc, seconds = _torchrun(tmp_path, "--hang-rank", "1", timeout_s=4, limit_s=120)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "rank 0/2: the barrier after computing the chunks failed" in text
    assert f"within 4 s ({TIMEOUT_ENV})" in text
    assert "Rank 1 failed to pass monitoredBarrier" in text  # gloo names the missing rank
    assert seconds < 100


@pytest.mark.slow  # torchrun launches of the whole package: tens of seconds each
def test_two_rank_harvest_equals_one_process(tmp_path, tiny_model, tiny_tokenizer):
    """Example integration: activation shifts of pairs sharded across 2 ranks."""
    n, chunk = 10, 4
    args = ["--task", "harvest", "--n-items", str(n), "--chunk-size", str(chunk)]
    proc, _ = _torchrun(tmp_path, *args, "--tokenizer", tiny_tokenizer.name_or_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pairs = load_pairs("binary")
    sources, targets = pairs.sources[:n], pairs.targets[:n]

    def compute(items: range) -> dict[str, torch.Tensor]:
        chunk_pairs = (sources[items.start : items.stop], targets[items.start : items.stop])
        return {"shifts": harvest_shifts(tiny_model, chunk_pairs, HOOK, batch_size=4)}

    one = run_sharded(compute, ChunkStore(tmp_path / "one", {"task": "harvest"}, n, chunk))
    whole = harvest_shifts(tiny_model, (sources, targets), HOOK, batch_size=4)
    for out in _outputs(tmp_path):
        assert torch.equal(out["shifts"], one["shifts"])  # same chunks, same arithmetic
        torch.testing.assert_close(out["shifts"], whole, rtol=0, atol=1e-6)


@pytest.mark.slow  # torchrun launches of the whole package: tens of seconds each
def test_library_calls_under_two_ranks_equal_one_process(tmp_path, tiny_model, tiny_tokenizer):
    """harvest_shifts, measure_effects, calibrate_scales and evaluate_steering, called as in
    one process inside process_group(): every rank returns one process's result, bit for bit
    (each chunk is computed by the same arithmetic, and the random numbers are keyed by
    rollout and batch, never by rank)."""
    temporary = tmp_path / "tmp"  # where rank 0 puts the shared chunks (no cache_dir given)
    temporary.mkdir()
    proc, _ = _torchrun(
        tmp_path,
        *("--task", "library", "--tokenizer", tiny_tokenizer.name_or_path),
        env_extra={"TMPDIR": str(temporary)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected, texts = library_results(tiny_model)
    assert not list(temporary.glob("ssae-lens-chunks-*"))  # the temporary chunks were removed
    for rank, out in enumerate(_outputs(tmp_path)):
        assert set(out) == set(expected)
        for name, value in expected.items():
            assert torch.equal(out[name], value), (rank, name)
        assert json.loads((tmp_path / f"out.rank{rank}.json").read_text()) == texts
    # The comparison has teeth: effects and sweeps are not trivially zero or constant.
    assert float(expected["effects"].abs().sum()) > 0
    assert len(set(texts)) > 3


@pytest.mark.slow  # torchrun launches of the whole package: tens of seconds each
def test_killed_harvest_resumes_from_its_cache_without_recomputing(
    tmp_path, tiny_model, tiny_tokenizer
):
    """Rank 1 is killed on its second forward pass; the same command then computes only
    the shards missing on disk (counted in texts run through the model), leaves the shards
    written by the first run untouched, and gives the one-process shifts exactly."""
    args = ["--task", "harvest-cache", "--n-items", "20", "--chunk-size", "4"]
    args += ["--tokenizer", tiny_tokenizer.name_or_path]
    proc, _ = _torchrun(tmp_path, *args, "--exit-rank", "1", "--exit-after", "1")
    assert proc.returncode != 0
    (folder,) = (tmp_path / "store").iterdir()
    store = json.loads((folder / "manifest.json").read_text())["layout"]
    assert store["chunk_size"] == 4 and store["n_items"] > 24  # 4 shards or more per rank
    chunks = [(a, min(a + 4, store["n_items"])) for a in range(0, store["n_items"], 4)]

    def written() -> dict[tuple[int, int], int]:
        return {
            (a, b): path.stat().st_mtime_ns
            for a, b in chunks
            if (path := folder / f"chunk_{a:010d}_{b:010d}.safetensors").exists()
        }

    first = written()
    assert 0 < len(first) <= len(chunks) - 2  # at least rank 1's other shards are missing
    log = (tmp_path / "log").read_text().splitlines()
    assert [line for line in log if line.startswith("1 ")] == ["1 4"]  # one shard, then killed

    (tmp_path / "log").unlink()
    proc, _ = _torchrun(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = [tuple(map(int, line.split())) for line in (tmp_path / "log").read_text().splitlines()]
    missing = [c for c in chunks if c not in first]
    assert sum(rows for _, rows in second) == sum(b - a for a, b in missing)  # nothing twice
    assert {rank for rank, _ in second} == {0, 1}  # the ranks shared what was missing
    again = written()
    assert set(again) == set(chunks)
    assert {c: again[c] for c in first} == first  # the first run's shards were not rewritten

    pairs = load_pairs("binary")
    one = harvest_shifts(
        tiny_model, (pairs.sources[:20], pairs.targets[:20]), HOOK, batch_size=4, progress=False
    )
    for out in _outputs(tmp_path):
        assert torch.equal(out["shifts"], one)


@pytest.mark.slow  # torchrun launches of the whole package: tens of seconds each
def test_commands_under_torchrun_equal_one_process(tmp_path, tiny_tokenizer):
    """`ssae-lens harvest`, `effects` and `sae-ts` on 2 ranks and in one process: the same
    shifts, effects and vectors; only rank 0 prints and writes."""
    sae_dir = tmp_path / "sae"
    tiny_sae().save_model(sae_dir)
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": "tiny",
                "dataset": "binary",
                "hook_name": HOOK,
                "harvest": {"batch_size": 16, "use_cache": False},
                "effects": {
                    "sae_path": str(sae_dir),
                    "n_decoder": 4,
                    "n_mix": 2,
                    "n_random": 2,
                    "features": [3],
                    "calibration_directions": 2,
                    "calibration_texts": ["The cat sat on the mat.", "I love it."],
                    "target_loss_increase": 0.05,
                    "prompts": ["The cat sat", "The king"],
                    "max_new_tokens": 3,
                    "chunk_size": 2,
                    "batch_size": 8,
                },
                "sae_ts": {"targets": {"f3": [3], "mixed": {5: 1.0, 7: -0.5}}},
            }
        )
    )
    results = {}
    for nproc, name in ((2, "two"), (0, "one")):
        run = tmp_path / name
        run.mkdir()
        commands = [
            [cmd, str(config), "--set", f"out_dir={run / 'runs'}"]
            for cmd in ("harvest", "effects", "sae-ts")
        ]
        proc, _ = _torchrun(
            run,
            "--task", "cli", "--tokenizer", tiny_tokenizer.name_or_path,
            "--cli", json.dumps(commands),
            nproc=nproc,
            limit_s=400,
            env_extra={"SSAE_LENS_CACHE": str(run / "cache")},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        for line in ("Shifts:", "Effects of 8 directions", "Effect model:", "f3: SteeringVector"):
            assert proc.stdout.count(line) == 1, (name, line, proc.stdout)
        results[name] = run / "runs"

    one, two = results["one"], results["two"]
    shifts = [load_file(r / "harvest" / "shifts.safetensors") for r in (one, two)]
    effects = [load_file(r / "effects" / "effects.safetensors") for r in (one, two)]
    for a, b in (shifts, effects):
        assert set(a) == set(b)
        for key in a:
            assert torch.equal(a[key], b[key]), key
    assert float(effects[0]["effects"].abs().sum()) > 0
    for target in ("f3", "mixed"):
        vectors = [
            load_file(r / "sae-ts" / "vectors" / target / "vector.safetensors") for r in (one, two)
        ]
        assert torch.equal(vectors[0]["direction"], vectors[1]["direction"])
