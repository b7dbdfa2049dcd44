"""Processes started by ``torchrun``: the process group, and sharded, resumable work.

PyTorch's own ``torch.distributed`` does the communication (gloo on CPU, NCCL on CUDA with a
gloo group beside it for control messages). Work is a list of ``n_items`` items cut into
chunks of ``chunk_size`` consecutive items. Every rank computes its share of the chunks not
yet on disk and writes each chunk to a :class:`~ssae_lens._core.cache.ChunkStore` folder (the
package's one chunked cache); the files are keyed by item range, so the folder is the same
whatever the number of processes, a single process uses the same store, and a killed run
resumes from the chunks already written.

The library's data-parallel functions (:func:`~ssae_lens.harvest_shifts`,
:func:`~ssae_lens.sae_ts.measure_effects`, :func:`~ssae_lens.sae_ts.calibrate_scales`,
:func:`~ssae_lens.steering.evaluate_steering`) compute through :func:`compute_chunks`: in
one process exactly as before, and inside :func:`process_group` under ``torchrun`` shared by
all ranks, every rank returning the same full result. Steps that fill a cache the other
ranks then read (a model conversion, a reference SAE) run on rank 0 first (:func:`main_first`).

Typical use, the same script for ``python script.py`` and ``torchrun --nproc_per_node=N
script.py``::

    with process_group() as ctx:
        store = ChunkStore("out/chunks", settings={"seed": 0}, n_items=n, chunk_size=64)
        result = run_sharded(lambda items: {"x": f(items)}, store, ctx=ctx)
        if ctx.is_main:
            save(result)
"""

from __future__ import annotations

import contextvars
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from ssae_lens._core.cache import ChunkStore

TIMEOUT_ENV = "SSAE_LENS_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

# The gloo group that process_group() creates beside an NCCL default group; None otherwise.
_control_group: dist.ProcessGroup | None = None
# Set while run_sharded computes one rank's chunk: work inside it is that rank's alone.
_inside_chunk = contextvars.ContextVar("ssae_lens_inside_chunk", default=False)


class DistributedError(RuntimeError):
    """A rank failed, or did not reach a collective within the timeout."""


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands among the processes ``torchrun`` started.

    Attributes:
        rank: global rank, ``0 .. world_size - 1``.
        world_size: number of processes (1 without ``torchrun``).
        local_rank: rank on this machine; picks the CUDA device.
        device: ``cuda:<local_rank>`` where CUDA exists, otherwise the CPU.
        timeout_s: seconds any collective waits before failing.
        group: the gloo group for control messages (``None``: the default group).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    timeout_s: float
    group: Any = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the rank that writes shared files."""
        return self.rank == 0


def timeout_from_env() -> float:
    """Seconds a collective may wait: ``$SSAE_LENS_DIST_TIMEOUT`` or 1800.

    It must exceed the longest time one rank waits for another at a barrier, i.e. the
    difference in work between the slowest and the fastest rank.
    """
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds > 0, e.g. 600.")
    return value


def _env_int(name: str) -> int:
    raw = os.environ[name]
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"Environment variable {name}={raw!r} is not an integer.") from None


def current(timeout_s: float | None = None) -> DistributedContext:
    """This process's rank, world size, local rank and device.

    From the initialised process group if there is one, else from the ``torchrun``
    environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); without it, a single process
    (rank 0 of 1).
    """
    timeout = timeout_from_env() if timeout_s is None else float(timeout_s)
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    elif "WORLD_SIZE" in os.environ:
        missing = [k for k in ("RANK", "LOCAL_RANK") if k not in os.environ]
        if missing:
            raise ValueError(
                f"WORLD_SIZE is set but {', '.join(missing)} is not: start the processes with "
                "torchrun, which sets RANK, WORLD_SIZE and LOCAL_RANK, or unset WORLD_SIZE."
            )
        rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    else:
        rank, world, local = 0, 1, 0
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world} need 0 <= RANK < WORLD_SIZE.")
    if torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} CUDA "
                "devices: start torchrun with --nproc_per_node at most the number of GPUs."
            )
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return DistributedContext(rank, world, local, device, timeout, _control_group)


def work_context(timeout_s: float | None = None) -> DistributedContext:
    """The processes that share the work of a call now: :func:`current`, or this process
    alone while :func:`run_sharded` computes one of its chunks (a library call inside a
    chunk, e.g. ``harvest_shifts`` in a ``compute`` function, does not shard again)."""
    ctx = current(timeout_s)
    if not _inside_chunk.get() or ctx.world_size == 1:
        return ctx
    return DistributedContext(0, 1, ctx.local_rank, ctx.device, ctx.timeout_s)


@contextmanager
def _alone() -> Iterator[None]:
    token = _inside_chunk.set(True)
    try:
        yield
    finally:
        _inside_chunk.reset(token)


def _alone_call(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run as this process's own work (see :func:`work_context`)."""

    def call(*args: Any) -> Any:
        with _alone():
            return fn(*args)

    return call


@contextmanager
def process_group(timeout_s: float | None = None) -> Iterator[DistributedContext]:
    """Initialise ``torch.distributed`` when ``torchrun`` started several processes.

    Nothing happens for a single process or when a process group already exists. Otherwise
    the default group is gloo on CPU, or NCCL bound to ``cuda:LOCAL_RANK`` with a gloo group
    for control messages; collectives time out after ``timeout_s`` (default
    :func:`timeout_from_env`). A group created here is destroyed on exit.
    """
    global _control_group
    ctx = current(timeout_s)
    if ctx.world_size == 1 or dist.is_initialized():
        yield ctx
        return
    missing = [k for k in _TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={ctx.world_size} but {', '.join(missing)} is not set: launch with "
            "torchrun (e.g. torchrun --nproc_per_node=2 script.py)."
        )
    timeout = timedelta(seconds=ctx.timeout_s)
    if ctx.device.type == "cuda":
        dist.init_process_group("nccl", timeout=timeout, device_id=ctx.device)
        _control_group = dist.new_group(backend="gloo", timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    try:
        yield current(ctx.timeout_s)
    finally:
        _control_group = None
        dist.destroy_process_group()


def shard(n_items: int, rank: int, world_size: int) -> range:
    """The items of ``rank``: ``rank, rank + world_size, ...`` below ``n_items``.

    Strided rather than contiguous: work lists here are often sorted by cost (e.g. texts by
    length), and striding gives every rank a similar mix. Ranks' shares are disjoint, cover
    all items, and differ in size by at most one.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"Need 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")
    if n_items < 0:
        raise ValueError(f"n_items must be >= 0, got {n_items}.")
    return range(rank, n_items, world_size)


def _collective_error(ctx: DistributedContext, what: str, exc: Exception) -> DistributedError:
    return DistributedError(
        f"rank {ctx.rank}/{ctx.world_size}: {what} failed: not every rank arrived within "
        f"{ctx.timeout_s:g} s ({TIMEOUT_ENV}) or a rank exited; see that rank's error. "
        f"Rerun the same command to resume from the chunks already written. ({exc})"
    )


def barrier(ctx: DistributedContext | None = None, what: str = "barrier") -> None:
    """Wait for every rank; raise :class:`DistributedError` naming the problem on timeout.

    On gloo this is ``monitored_barrier``, whose error on rank 0 names the missing ranks.
    """
    ctx = current() if ctx is None else ctx
    if ctx.world_size == 1:
        return
    try:
        if dist.get_backend(ctx.group) == dist.Backend.GLOO:
            dist.monitored_barrier(
                ctx.group, timeout=timedelta(seconds=ctx.timeout_s), wait_all_ranks=True
            )
        else:
            dist.barrier(ctx.group)
    except RuntimeError as exc:
        raise _collective_error(ctx, what, exc) from exc


def _on_main(ctx: DistributedContext, fn: Callable[[], Any]) -> Any:
    """``fn()`` run on rank 0 and its result sent to every rank; its error fails every rank."""
    if ctx.world_size == 1:
        return fn()
    box: list[Any] = [None]
    error: Exception | None = None
    if ctx.is_main:
        try:
            box[0] = ("ok", fn())
        except Exception as exc:
            error = exc
            box[0] = ("error", f"{type(exc).__name__}: {exc}")
    try:
        dist.broadcast_object_list(box, src=0, group=ctx.group)
    except RuntimeError as exc:
        raise _collective_error(ctx, "receiving rank 0's work list", exc) from exc
    if error is not None:
        raise error
    status, value = box[0]
    if status == "error":
        raise DistributedError(f"rank {ctx.rank}/{ctx.world_size}: rank 0 failed: {value}")
    return value


def run_sharded(
    compute: Callable[[range], Mapping[str, Tensor]],
    store: ChunkStore,
    *,
    ctx: DistributedContext | None = None,
    all_ranks: bool = True,
    entries: Mapping[str, Callable[[], Mapping[str, Tensor]]] | None = None,
    desc: str | None = None,
) -> dict[str, Tensor] | None:
    """Compute the chunks missing from ``store`` across all ranks; return them all merged.

    Rank 0 opens the store and lists the chunks without a file; every rank computes
    ``compute(items)`` for its strided share of that list (:func:`shard`) and writes each
    result as soon as it is done; after a barrier the chunks are read back and concatenated
    in item order (:meth:`ChunkStore.merge`; a chunk whose file fails its checksum is computed
    again there). The result therefore depends only on ``compute`` and the chunk layout, not
    on the number of ranks or on how often the run was interrupted, and no valid chunk on disk
    is computed again.

    Args:
        compute: maps a range of item indices to tensors whose first dimension runs over the
            chunk's rows; it must not depend on the rank.
        store: where the chunks live; the same folder for every rank.
        ctx: the processes sharing the work (default :func:`work_context`).
        all_ranks: merge on every rank; ``False`` returns ``None`` on ranks other than 0.
        entries: named results outside the item ranges (e.g. a baseline every chunk is
            compared with): each one missing from ``store`` is computed by rank 0 before its
            chunks and written there; read them with ``store.read(name)`` afterwards.
        desc: label of a progress bar over rank 0's chunks (``None``: no bar).

    Raises:
        DistributedError: on every rank, when a rank fails or a rank is missing at a
            collective for longer than ``ctx.timeout_s``.
    """
    ctx = work_context() if ctx is None else ctx
    _require_group(ctx)
    compute = _alone_call(compute)

    def open_and_list() -> list[tuple[int, int]]:
        store.open()
        return [(items.start, items.stop) for items in store.pending()]

    pending = [range(a, b) for a, b in _on_main(ctx, open_and_list)]
    if not ctx.is_main:
        store.open()  # the manifest rank 0 checked: adopts a stored chunk size
    if ctx.is_main:
        for name, make in (entries or {}).items():
            if store.read(name) is None:
                store.write(name, _alone_call(make)())
    mine = shard(len(pending), ctx.rank, ctx.world_size)
    shown = desc is not None and ctx.is_main
    bar = tqdm(total=len(mine), desc=desc, unit="chunk", disable=None if shown else True)
    for i in mine:
        items = pending[i]
        try:
            tensors = compute(items)
        except Exception as exc:
            if ctx.world_size == 1:
                raise
            raise DistributedError(
                f"rank {ctx.rank}/{ctx.world_size} failed computing items "
                f"{items.start}..{items.stop - 1}: {type(exc).__name__}: {exc}. Chunks already "
                f"written to {str(store.folder)!r} are kept: rerun the same command to resume."
            ) from exc
        store.write(items, tensors)
        bar.update()
    bar.close()
    barrier(ctx, "the barrier after computing the chunks")
    if not (all_ranks or ctx.is_main):
        return None
    return store.merge(compute)


def compute_chunks(
    compute: Callable[[range], Mapping[str, Tensor]],
    n_items: int,
    chunk_size: int,
    *,
    store: ChunkStore | None = None,
    entries: Mapping[str, Callable[[], Mapping[str, Tensor]]] | None = None,
    ctx: DistributedContext | None = None,
    desc: str | None = None,
) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
    """Every chunk of ``n_items`` items computed, in one process or shared by all ranks.

    The library's data-parallel functions (harvesting, SAE-TS effects and calibration,
    steering sweeps) compute through this. The chunks are ``chunk_size`` consecutive items
    (or ``store``'s layout) and are computed the same way whatever the number of processes,
    so the result is too:

    - one process without ``store``: chunk by chunk in memory;
    - with ``store`` (one process or several): :func:`run_sharded` over it (resumable);
    - several processes on one machine without ``store``: :func:`run_sharded` over a
      temporary folder that rank 0 creates and removes; several machines need a ``store``
      on a file system all of them see (a :class:`ValueError` says so).

    Under ``torchrun`` the call must run inside :func:`process_group` on every rank, and
    every rank gets the full result.

    Args:
        compute: maps a range of item indices to tensors with a leading dimension over them;
            it must not depend on the rank.
        n_items: number of items.
        chunk_size: items per chunk (without ``store``).
        store: where the chunks are kept; its ``n_items`` must be ``n_items``.
        entries: named results besides the chunks, each computed once (by rank 0).
        ctx: the processes sharing the work (default :func:`work_context`).
        desc: label of a progress bar over the chunks (``None``: no bar).

    Returns:
        ``(chunks, named)``: the chunks' tensors concatenated in item order, and the tensors
        of each entry by name.
    """
    ctx = work_context() if ctx is None else ctx
    entries = {name: _alone_call(make) for name, make in (entries or {}).items()}
    if n_items < 1 or chunk_size < 1:
        raise ValueError(f"n_items and chunk_size must be >= 1, got {n_items}, {chunk_size}.")
    if store is not None and store.n_items != n_items:
        raise ValueError(f"The store holds {store.n_items} items, not {n_items}.")
    if store is not None:
        merged = run_sharded(compute, store, ctx=ctx, entries=entries, desc=desc)
        assert merged is not None  # all_ranks
        return merged, {name: _read_entry(store, name, make) for name, make in entries.items()}
    if ctx.world_size == 1:
        named = {name: dict(make()) for name, make in entries.items()}
        chunks = [range(a, min(a + chunk_size, n_items)) for a in range(0, n_items, chunk_size)]
        shown = tqdm(chunks, desc=desc, unit="chunk", disable=None if desc else True)
        parts = [dict(compute(items)) for items in shown]
        return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}, named
    _require_group(ctx)
    local = os.environ.get("LOCAL_WORLD_SIZE")
    if local is not None and local.strip() and int(local) != ctx.world_size:
        raise ValueError(
            f"{ctx.world_size} processes on several machines ({local} on this one) need a "
            "folder on a file system all of them see to share their results: pass cache_dir "
            "(or use_cache for the command line, with SSAE_LENS_CACHE on that file system)."
        )
    folder = Path(_on_main(ctx, lambda: tempfile.mkdtemp(prefix="ssae-lens-chunks-")))
    try:
        temporary = ChunkStore(folder, {"temporary": True}, n_items, chunk_size)
        merged = run_sharded(compute, temporary, ctx=ctx, entries=entries, desc=desc)
        assert merged is not None
        named = {name: _read_entry(temporary, name, make) for name, make in entries.items()}
        barrier(ctx, "the barrier after reading the temporary chunks")
    finally:
        if ctx.is_main:
            shutil.rmtree(folder, ignore_errors=True)
    return merged, named


def _read_entry(
    store: ChunkStore, name: str, make: Callable[[], Mapping[str, Tensor]]
) -> dict[str, Tensor]:
    """A named entry of ``store``, computed again (and rewritten) if it fails its checks."""
    found = store.read(name)
    if found is None:
        found = dict(make())
        store.write(name, found)
    return found


@contextmanager
def main_first(ctx: DistributedContext | None = None, what: str = "rank 0") -> Iterator[None]:
    """Run the body on rank 0 first, then on the other ranks together.

    For steps that fill a cache every rank then reads (converting a model, training a
    reference SAE): rank 0 computes and writes it, the others load it. The other ranks wait
    for rank 0 for up to the collective timeout (``$SSAE_LENS_DIST_TIMEOUT``). Library calls
    in the body are each rank's own work (:func:`work_context`): they do not shard.
    """
    ctx = work_context() if ctx is None else ctx
    if ctx.world_size == 1:
        yield
        return
    _require_group(ctx)
    if not ctx.is_main:
        barrier(ctx, f"waiting for {what}")
    with _alone():  # the body's own library calls must not wait for the other ranks
        yield
    if ctx.is_main:
        barrier(ctx, f"waiting for {what}")


def _require_group(ctx: DistributedContext) -> None:
    if ctx.world_size > 1 and not dist.is_initialized():
        raise RuntimeError(
            f"WORLD_SIZE={ctx.world_size} but no process group: call this inside "
            "`with ssae_lens.distributed.process_group() as ctx:` on every rank."
        )
