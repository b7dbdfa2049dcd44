"""ssae_lens._core.cache: keys, the chunk store's checks, verified folders (issue 14 item 1)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

import ssae_lens._core.cache as cache
from ssae_lens._core.cache import (
    CacheWarning,
    ChunkStore,
    cached_folder_settings,
    is_cached,
    module_digest,
    refuse_active_hooks,
    tensor_digest,
    write_cached_folder,
)


def rows(items: range) -> dict[str, torch.Tensor]:
    """Per item i: the row [i, i^2, sqrt(i)] (independent of how the items are chunked)."""
    i = torch.arange(items.start, items.stop, dtype=torch.float64)
    return {"rows": torch.stack([i, i**2, i.sqrt()], dim=1), "index": i.long()}


# ------------------------------------------------------------------------------ chunk store
def test_store_refuses_other_settings_or_layout(tmp_path):
    ChunkStore(tmp_path, {"seed": 0, "n": [1, 2]}, 10, 4).open()
    ChunkStore(tmp_path, {"n": (1, 2), "seed": 0}, 10, 4).open()  # same JSON: accepted
    with pytest.raises(ValueError, match=r"settings\.seed differ.*new folder"):
        ChunkStore(tmp_path, {"seed": 1, "n": [1, 2]}, 10, 4).open()
    with pytest.raises(ValueError, match=r"layout\.chunk_size, settings\.extra differ"):
        ChunkStore(tmp_path, {"seed": 0, "n": [1, 2], "extra": 1}, 10, 5).open()
    with pytest.raises(ValueError, match="JSON"):
        ChunkStore(tmp_path, {"model": object()}, 10, 4)
    with pytest.raises(ValueError, match="n_items and chunk_size must be >= 1"):
        ChunkStore(tmp_path, {}, 0, 4)


def test_store_checks_what_compute_returns(tmp_path):
    store = ChunkStore(tmp_path, {}, 4, 2)
    store.open()
    with pytest.raises(TypeError, match="dict of tensors"):
        store.write(range(0, 2), torch.zeros(2))
    with pytest.raises(ValueError, match=r"leading dimension.*'s': \(\)"):
        store.write(range(0, 2), {"s": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="not a chunk"):
        store.write(range(1, 3), {"x": torch.zeros(2)})
    with pytest.raises(ValueError, match="identifier"):
        store.write("chunk_x", {"x": torch.zeros(2)})
    store.write(range(0, 2), {"x": torch.zeros(2)})
    with pytest.raises(FileNotFoundError, match="1 chunks are missing.*items 2..3"):
        store.merge()
    store.write(range(2, 4), {"y": torch.zeros(2)})
    with pytest.raises(ValueError, match="same names for every chunk"):
        store.merge()


def _filled(folder, settings=None, n=10, size=4) -> ChunkStore:
    store = ChunkStore(folder, settings or {"task": "rows"}, n, size)
    store.open()
    for items in store.chunks:
        store.write(items, rows(items))
    store.write("baseline", {"b": torch.ones(1, 3)})
    return store


def _zero_payload(path):
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start:] = bytes(len(data) - start)
    path.write_bytes(bytes(data))


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-3])


def _zero_all(path):
    path.write_bytes(bytes(path.stat().st_size))


@pytest.mark.parametrize("damage", [_zero_payload, _flip_last_byte, _truncate, _zero_all])
def test_damaged_chunk_is_never_returned(tmp_path, damage):
    store = _filled(tmp_path)
    chunk = store.path(store.chunks[1])
    damage(chunk)
    with pytest.warns(CacheWarning, match=chunk.name):
        assert store.read(store.chunks[1]) is None
    assert not chunk.exists()  # removed, so it is pending again
    assert store.pending() == [store.chunks[1]]
    named = store.path("baseline")
    damage(named)
    with pytest.warns(CacheWarning, match="baseline.safetensors"):
        assert store.read("baseline") is None


def test_merge_recomputes_a_damaged_chunk(tmp_path):
    store = _filled(tmp_path)
    _flip_last_byte(store.path(store.chunks[2]))
    calls = []

    def compute(items):
        calls.append(items)
        return rows(items)

    with pytest.warns(CacheWarning, match="chunk_0000000008_0000000010"):
        merged = store.merge(compute)
    assert calls == [store.chunks[2]]
    assert torch.equal(merged["rows"], rows(range(10))["rows"])
    _flip_last_byte(store.path(store.chunks[0]))
    with pytest.warns(CacheWarning), pytest.raises(ValueError, match="failed its checks"):
        store.merge()


def test_chunk_of_other_settings_is_rejected(tmp_path):
    other = _filled(tmp_path / "other", {"task": "rows", "seed": 1})
    store = _filled(tmp_path / "mine")
    target = store.path(store.chunks[0])
    shutil.copy(other.path(other.chunks[0]), target)  # valid file, other settings
    with pytest.warns(CacheWarning, match="other settings"):
        assert store.read(store.chunks[0]) is None


@pytest.mark.parametrize("text", ["", '{"layout": {"n_items": 10', "[1, 2]", "\0\0\0\0"])
def test_unreadable_manifest_is_rewritten_and_chunks_still_verify(tmp_path, text):
    _filled(tmp_path)
    (tmp_path / "manifest.json").write_text(text)
    store = ChunkStore(tmp_path, {"task": "rows"}, 10, 4)
    with pytest.warns(CacheWarning, match="manifest.json"):
        store.open()
    assert json.loads((tmp_path / "manifest.json").read_text())["settings"] == {"task": "rows"}
    assert store.pending() == []
    assert torch.equal(store.merge()["rows"], rows(range(10))["rows"])  # no warning, no compute


def test_resumed_store_keeps_its_layout_when_asked(tmp_path):
    _filled(tmp_path, n=10, size=4)
    with pytest.raises(ValueError, match="layout.chunk_size"):
        ChunkStore(tmp_path, {"task": "rows"}, 10, 3).open()
    store = ChunkStore(tmp_path, {"task": "rows"}, 10, 3, keep_stored_layout=True)
    store.open()
    assert store.chunk_size == 4 and store.pending() == []
    with pytest.raises(ValueError, match="layout.n_items"):  # a layout for other items: no
        ChunkStore(tmp_path, {"task": "rows"}, 11, 4, keep_stored_layout=True).open()


# ---------------------------------------------------------------------------------- keys
def test_tensor_digest_covers_values_shape_and_dtype():
    x = torch.arange(6.0)
    assert tensor_digest(x) == tensor_digest(x.clone())
    assert tensor_digest(x) != tensor_digest(x.reshape(2, 3))
    assert tensor_digest(x) != tensor_digest(x.double())
    assert tensor_digest(x, x) != tensor_digest(torch.cat([x, x]))
    y = x.clone()
    y[4] = torch.nextafter(y[4], torch.tensor(10.0))  # one ulp
    assert tensor_digest(x) != tensor_digest(y)


def test_module_digest_is_computed_once_and_follows_every_kind_of_edit(monkeypatch):
    net = nn.Sequential(nn.Linear(300, 200), nn.Linear(200, 3))
    base = module_digest(net, buffers=False)
    hashed = []
    original = cache._update
    monkeypatch.setattr(cache, "_update", lambda *a: hashed.append(a[1]) or original(*a))
    assert module_digest(net, buffers=False) == base
    assert hashed == []  # remembered: no weight was hashed again

    def changed(edit) -> bool:
        before = module_digest(net, buffers=False)
        with torch.no_grad():
            edit()
        return module_digest(net, buffers=False) != before

    w = net[0].weight
    assert changed(lambda: w[:, 3].mul_(5))  # in place through a view: _version
    assert changed(lambda: w.data.mul_(2))  # .data bypasses _version: the sample sees it
    assert changed(lambda: setattr(w, "data", w.data.clone() + 1))  # new storage
    assert changed(lambda: setattr(net[1], "bias", nn.Parameter(torch.zeros(3))))
    assert len(hashed) == 4 * 4  # each edit rehashed all four tensors once


def test_buffers_count_only_when_asked():
    norm = nn.BatchNorm1d(4)
    plain, full = module_digest(norm, buffers=False), module_digest(norm, buffers=True)
    norm.running_mean += 1
    assert module_digest(norm, buffers=False) == plain
    assert module_digest(norm, buffers=True) != full


def test_active_hooks_are_refused():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    refuse_active_hooks(net, what="Test")
    handle = net[1].register_forward_pre_hook(lambda module, args: None)
    with pytest.raises(RuntimeError, match=r"Test cannot use its cache.*1 \(1\).*cache_dir=None"):
        refuse_active_hooks(net, what="Test")
    handle.remove()
    handle = nn.modules.module.register_module_forward_hook(lambda *args: None)
    try:
        with pytest.raises(RuntimeError, match="global module hooks"):
            refuse_active_hooks(net, what="Test")
    finally:
        handle.remove()
    refuse_active_hooks(net, what="Test")


# ------------------------------------------------------------------------------- folders
def _write(folder, settings, text="weights"):
    with write_cached_folder(folder, settings, info={"note": 1}) as build:
        (build / "w.bin").write_text(text)
        (build / "sub").mkdir()
        (build / "sub" / "cfg.json").write_text("{}")


def test_cached_folder_round_trip_and_checks(tmp_path):
    folder = tmp_path / "entry"
    assert not is_cached(folder, {"a": 1})  # absent: no warning
    _write(folder, {"a": 1})
    assert is_cached(folder, {"a": 1})
    assert cached_folder_settings(folder) == {"a": 1}
    with pytest.warns(CacheWarning, match=r"other settings \(a, b differ\)"):
        assert not is_cached(folder, {"a": 2, "b": 0})
    (folder / "sub" / "cfg.json").write_text("{ }")  # same name, other bytes
    with pytest.warns(CacheWarning, match=r"cfg.json.*has 3 bytes, not 2"):
        assert not is_cached(folder, {"a": 1})
    _write(folder, {"a": 1}, text="new")  # replaces the damaged folder
    assert is_cached(folder, {"a": 1}) and (folder / "w.bin").read_text() == "new"
    (folder / "w.bin").write_text("NEW")  # same size
    with pytest.warns(CacheWarning, match="w.bin.*sha256"):
        assert not is_cached(folder, {"a": 1})
    (folder / "w.bin").unlink()
    with pytest.warns(CacheWarning, match="w.bin.*cannot be checked"):
        assert not is_cached(folder, {"a": 1})
    (folder / "ssae_lens_cache.json").write_text('{"format": 1, "settings"')
    with pytest.warns(CacheWarning, match="ssae_lens_cache.json.*cannot be read"):
        assert not is_cached(folder, {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_interrupted_folder_write_leaves_nothing(tmp_path):
    folder = tmp_path / "entry"
    with pytest.raises(KeyboardInterrupt), write_cached_folder(folder, {"a": 1}) as build:
        (build / "w.bin").write_text("half")
        raise KeyboardInterrupt
    assert not list(tmp_path.iterdir())
