"""The one on-disk cache: keys that cover everything, checked files, chunks and folders.

Every cache in ssae-lens (activations, SAE-TS effects, reference SAEs, trained SSAEs, the
converted embedded model) is built from three parts here:

- **Keys** (:func:`model_fingerprint`, :func:`dictionary_fingerprint`, :func:`tensor_digest`):
  full sha256 digests of every weight, with the config and dtype. A model's digest is computed
  once per object and recomputed when a parameter changes (see :func:`module_digest`).
  :func:`refuse_active_hooks` stops a cache from storing values computed under hooks
  (steering, ablations) under the plain model's key.
- **Chunks** (:class:`ChunkStore`): a folder of safetensors files, each covering a range of
  work items, beside a manifest of the settings that made them. Each file records the sha256
  of every tensor and the digest of the manifest in its header, and both are verified on read.
  An interrupted run resumes at the first missing chunk.
- **Folders** (:func:`cached_folder_settings`, :func:`is_cached`, :func:`write_cached_folder`):
  a result saved as a folder (an SAE, a model checkpoint), written atomically with a manifest
  of its settings and of every file's size and sha256, verified on read.

Whatever fails verification (a truncated, zeroed or foreign file, an unreadable manifest) is
reported with a :class:`CacheWarning` naming the file and recomputed: a cache never returns
wrong values and never raises a raw ``SafetensorError`` or ``JSONDecodeError``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ssae_lens._core.io import atomic_dir, atomic_path, write_json_atomic

__all__ = [
    "CacheWarning",
    "ChunkStore",
    "cached_folder_settings",
    "dictionary_fingerprint",
    "is_cached",
    "model_fingerprint",
    "module_digest",
    "refuse_active_hooks",
    "tensor_digest",
    "write_cached_folder",
]

_STORE_FORMAT = 2  # 2: per-tensor sha256 and the manifest digest in every chunk's header
_MANIFEST = "manifest.json"
_FOLDER_MANIFEST = "ssae_lens_cache.json"
_FOLDER_FORMAT = 1
_STORE_KEY = "ssae_lens.store"
_SHA_PREFIX = "ssae_lens.sha256."
_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, SafetensorError, RuntimeError)


class CacheWarning(UserWarning):
    """A cache file failed verification and is being recomputed."""


def _stale(path: Path, reason: str, action: str = "recomputing it") -> None:
    warnings.warn(f"Cache file {str(path)!r} {reason}; {action}.", CacheWarning, stacklevel=3)


# ------------------------------------------------------------------------------------ keys
def _tensor_bytes(t: Tensor) -> memoryview:
    """The raw bytes of ``t`` (any dtype, any device) in row-major order."""
    flat = t.detach().reshape(-1).contiguous().to("cpu")
    return memoryview(flat.view(torch.uint8).numpy())


def _update(digest: Any, name: str, t: Tensor) -> None:
    digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    digest.update(_tensor_bytes(t))


def tensor_digest(*tensors: Tensor) -> str:
    """The sha256 of the tensors' dtypes, shapes and values (the device does not matter)."""
    digest = hashlib.sha256()
    for i, t in enumerate(tensors):
        _update(digest, str(i), t)
    return digest.hexdigest()


# module -> (signature, digest); weak keys: a deleted model takes its entry with it.
_digests: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str]] = weakref.WeakKeyDictionary()
_SAMPLE = 64


def _tensors(module: nn.Module, buffers: bool) -> list[tuple[str, Tensor]]:
    named = list(module.named_parameters())
    return named + list(module.named_buffers()) if buffers else named


def _signature(tensors: list[tuple[str, Tensor]]) -> tuple:
    """What changes when a tensor does: identity, storage, torch's version counter, a sample.

    ``_version`` counts in-place writes (``param[:, 3] *= 5`` under ``no_grad``, ``copy_``,
    optimiser steps) and ``data_ptr`` catches reassigned storage. Writes through ``.data``
    bypass the version counter; the strided sample of each tensor catches those that touch
    a sampled element (any write to the whole tensor).
    """
    parts = []
    for name, t in tensors:
        index = torch.arange(0, t.numel(), max(1, t.numel() // _SAMPLE))[:_SAMPLE]
        # Indexing, not reshape(-1): that copies a whole non-contiguous (transposed) weight.
        sample = t.detach()[torch.unravel_index(index.to(t.device), t.shape)]
        parts.append(
            (name, id(t), t._version, t.data_ptr(), str(t.dtype), tuple(t.shape))
            + (bytes(_tensor_bytes(sample)),)
        )
    return tuple(parts)


def module_digest(module: nn.Module, *, buffers: bool) -> str:
    """The sha256 of every parameter (and buffer, with ``buffers``) of ``module``: full values.

    The digest is computed once per module object and kept until a parameter changes (see
    :func:`_signature`), so asking again costs a pass over the parameter list, not a hash of
    the weights. The device does not matter; the dtype does.
    """
    tensors = _tensors(module, buffers)
    signature = _signature(tensors)
    known = _digests.get(module)
    if known is not None and known[0] == signature:
        return known[1]
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, t in tensors:
            _update(digest, name, t)
    value = digest.hexdigest()
    _digests[module] = (signature, value)
    return value


def _config_json(cfg: Mapping[str, Any], drop: tuple[str, ...]) -> str:
    return json.dumps({k: v for k, v in cfg.items() if k not in drop}, sort_keys=True, default=str)


def model_fingerprint(model: nn.Module) -> str:
    """The identity of a ``HookedTransformer``'s values: its config and all of its weights.

    A sha256 of the config (without the device) and of :func:`module_digest` over the
    parameters. Buffers are left out: TransformerLens's buffers (causal masks, rotary tables)
    follow from the config and grow with the longest input a model has seen.
    """
    cfg = _config_json(model.cfg.to_dict(), ("device", "n_devices"))
    digest = hashlib.sha256(cfg.encode())
    digest.update(module_digest(model, buffers=False).encode())
    return digest.hexdigest()


def dictionary_fingerprint(sae: nn.Module) -> str:
    """The identity of an SAE's encoding: its config (without device and metadata) and every
    parameter and buffer (normalisation statistics live in buffers)."""
    cfg = _config_json(sae.cfg.to_dict(), ("device", "metadata"))
    digest = hashlib.sha256(cfg.encode())
    digest.update(module_digest(sae, buffers=True).encode())
    return digest.hexdigest()


def _active_hooks(module: nn.Module) -> list[str]:
    from ssae_lens._core.backend import machinery_hook  # lazy: TransformerLens

    found = []
    for name, sub in module.named_modules():
        hooks = [*sub._forward_hooks.values(), *sub._forward_pre_hooks.values()]
        n = sum(not machinery_hook(hook) for hook in hooks)
        if n:
            found.append(f"{name or type(module).__name__} ({n})")
    nn_module = torch.nn.modules.module
    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        found.append("global module hooks")
    return found


def refuse_active_hooks(*modules: nn.Module, what: str) -> None:
    """Raise when any of ``modules`` runs with forward hooks (steering, ablation, patching).

    The cache keys describe the weights, not the hooks, so values computed under hooks would
    be stored, and later returned, as if they came from the plain model. Hooks that a
    ``TransformerBridge`` and transformers install on the model themselves (to capture
    activations) do not count.
    """
    found = [hook for module in modules for hook in _active_hooks(module)]
    if found:
        shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise RuntimeError(
            f"{what} cannot use its cache while hooks are active on the model ({shown}), "
            "e.g. inside steer(...) or model.hooks(...): the cache would store hooked values "
            "under the plain model's key. Pass cache_dir=None, or run it outside that context."
        )


# ---------------------------------------------------------------------------- checked files
def _save_checked(path: Path, tensors: Mapping[str, Tensor], tag: str) -> None:
    cpu = {str(k): t.detach().to("cpu").contiguous() for k, t in tensors.items()}
    metadata = {_STORE_KEY: tag}
    metadata.update(
        {_SHA_PREFIX + k: hashlib.sha256(_tensor_bytes(t)).hexdigest() for k, t in cpu.items()}
    )
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(cpu, tmp, metadata=metadata)


def _load_checked(path: Path, tag: str) -> dict[str, Tensor] | None:
    """The tensors of ``path`` if it exists and verifies; otherwise ``None`` (with a warning
    and the file removed when it exists but fails)."""
    if not path.is_file():
        return None
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not iterable)
    except _READ_ERRORS as exc:
        reason = f"cannot be read ({type(exc).__name__}: {exc})"
    else:
        if metadata.get(_STORE_KEY) != tag:
            reason = "belongs to other settings or an older format"
        elif sorted(k[len(_SHA_PREFIX) :] for k in metadata if k.startswith(_SHA_PREFIX)) != sorted(
            tensors
        ):
            reason = "lists other tensors than it holds"
        else:
            bad = [
                k
                for k, t in tensors.items()
                if hashlib.sha256(_tensor_bytes(t)).hexdigest() != metadata[_SHA_PREFIX + k]
            ]
            if not bad:
                return tensors
            reason = f"fails its checksum (tensor {bad[0]!r})"
    _stale(path, reason)
    path.unlink(missing_ok=True)
    return None


# ------------------------------------------------------------------------------- chunk store
class ChunkStore:
    """A folder of safetensors chunks keyed by item range, and a manifest of their settings.

    Work is ``n_items`` items cut into chunks of ``chunk_size`` consecutive items. Chunk
    ``[start, stop)`` is ``chunk_<start>_<stop>.safetensors``, written atomically, so a file
    exists only when complete: the files are the record of progress and no shared list is
    ever rewritten by two processes (so several ranks can fill one store). ``manifest.json``
    holds the layout (``n_items``, ``chunk_size``) and the caller's ``settings`` (JSON
    values); opening a folder made with other values raises. A few named entries outside the
    item ranges (e.g. a baseline) may sit beside the chunks: :meth:`read` and :meth:`write`
    take a name for them.

    Every file records the sha256 of each tensor and the digest of the manifest; a file that
    fails either check is reported (:class:`CacheWarning`), removed and computed again. An
    unreadable manifest is reported and rewritten; the chunks are then checked one by one.

    Args:
        folder: the store's folder (on a file system every rank sees, for several machines).
        settings: everything that changes the values (JSON values).
        n_items: number of work items.
        chunk_size: items per chunk.
        keep_stored_layout: adopt the chunk size of an existing store with the same settings
            and ``n_items`` instead of raising (a resumed run keeps the layout it began with).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        settings: Mapping[str, Any],
        n_items: int,
        chunk_size: int,
        *,
        keep_stored_layout: bool = False,
    ):
        if n_items < 1 or chunk_size < 1:
            raise ValueError(f"n_items and chunk_size must be >= 1, got {n_items}, {chunk_size}.")
        self.folder = Path(folder)
        self.n_items = int(n_items)
        self.keep_stored_layout = keep_stored_layout
        try:
            self.settings = json.loads(json.dumps(dict(settings)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"ChunkStore settings must be JSON values: {exc}") from None
        self._set_chunk_size(int(chunk_size))

    def _set_chunk_size(self, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self.chunks = [
            range(a, min(a + chunk_size, self.n_items)) for a in range(0, self.n_items, chunk_size)
        ]
        self._tag = hashlib.sha256(
            json.dumps(self._manifest(), sort_keys=True).encode()
        ).hexdigest()

    def _manifest(self) -> dict[str, Any]:
        layout = {"format": _STORE_FORMAT, "n_items": self.n_items, "chunk_size": self.chunk_size}
        return {"layout": layout, "settings": self.settings}

    def _stored_manifest(self, path: Path) -> dict[str, Any] | None:
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            if all(isinstance(stored.get(s), dict) for s in ("layout", "settings")):
                return stored
            reason = "is not a chunk-store manifest"
        except (OSError, ValueError, AttributeError) as exc:
            reason = f"cannot be read ({type(exc).__name__}: {exc})"
        _stale(path, reason, "rewriting it and checking every chunk against the new one")
        return None

    def open(self) -> None:
        """Write the manifest, or check that the one there matches (run this on one rank)."""
        path = self.folder / _MANIFEST
        stored = self._stored_manifest(path) if path.is_file() else None
        if stored is None:
            write_json_atomic(path, self._manifest())
            return
        layout = stored["layout"]
        if (
            self.keep_stored_layout
            and stored["settings"] == self.settings
            and layout.get("format") == _STORE_FORMAT
            and layout.get("n_items") == self.n_items
            and isinstance(layout.get("chunk_size"), int)
            and layout["chunk_size"] >= 1
        ):
            self._set_chunk_size(layout["chunk_size"])
        wanted = self._manifest()
        changed = [
            f"{section}.{key}"
            for section in ("layout", "settings")
            for key in sorted(wanted[section].keys() | stored[section].keys())
            if wanted[section].get(key) != stored[section].get(key)
        ]
        if changed:
            raise ValueError(
                f"The chunk store {str(self.folder)!r} was made with other settings "
                f"({', '.join(changed)} differ): pass a new folder or delete this one."
            )

    def path(self, items: range | str) -> Path:
        """The file of the chunk holding ``items``, or of the named entry ``items``."""
        if isinstance(items, str):
            if not items.isidentifier() or items.startswith("chunk"):
                raise ValueError(
                    f"An entry name must be an identifier not starting with 'chunk', got {items!r}."
                )
            return self.folder / f"{items}.safetensors"
        return self.folder / f"chunk_{items.start:010d}_{items.stop:010d}.safetensors"

    def pending(self) -> list[range]:
        """The chunks with no file yet, in item order (files are verified when read)."""
        return [items for items in self.chunks if not self.path(items).is_file()]

    def read(self, items: range | str) -> dict[str, Tensor] | None:
        """A chunk's (or named entry's) tensors, or ``None`` when absent or failing its checks."""
        return _load_checked(self.path(items), self._tag)

    def write(self, items: range | str, tensors: Mapping[str, Tensor]) -> None:
        """Save one chunk's tensors (each with a leading dimension) atomically, on the CPU."""
        if isinstance(items, range) and items not in self.chunks:
            raise ValueError(
                f"{items} is not a chunk of this store (chunk size {self.chunk_size})."
            )
        if not isinstance(tensors, Mapping):
            raise TypeError(
                f"compute({items}) must return a dict of tensors, got {type(tensors).__name__}."
            )
        bad = {
            k: tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            for k, t in tensors.items()
            if not (isinstance(t, Tensor) and t.dim() >= 1)
        }
        if not tensors or bad:
            raise ValueError(
                f"compute({items}) must return a non-empty dict of tensors with a leading "
                f"dimension; got {len(tensors)} entries, these not fitting: {bad}."
            )
        _save_checked(self.path(items), tensors, self._tag)

    def merge(
        self, compute: Callable[[range], Mapping[str, Tensor]] | None = None
    ) -> dict[str, Tensor]:
        """All chunks concatenated along dimension 0 in item order.

        A chunk whose file fails its checks is computed again with ``compute`` (and written);
        without ``compute`` that raises.
        """
        missing = self.pending()
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} chunks are missing from {str(self.folder)!r} (first: items "
                f"{missing[0].start}..{missing[0].stop - 1}). If every rank finished, the "
                "folder is not shared between them: put it on a file system all ranks see."
            )
        parts = []
        for items in self.chunks:
            part = self.read(items)
            if part is None:
                if compute is None:
                    raise ValueError(
                        f"Chunk {self.path(items).name} of {str(self.folder)!r} failed its "
                        "checks and was removed: run the computation again to rebuild it."
                    )
                self.write(items, compute(items))
                part = self.read(items)
                assert part is not None  # just written and verified
            parts.append(part)
        names = set(parts[0])
        for items, part in zip(self.chunks, parts, strict=True):
            if set(part) != names:
                raise ValueError(
                    f"Chunk {self.path(items).name} holds {sorted(part)} but the first chunk "
                    f"holds {sorted(names)}: compute must return the same names for every chunk."
                )
        return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


# ------------------------------------------------------------------------------ folders
def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def cached_folder_settings(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The settings a cached folder was made with, if it is complete and every file verifies.

    ``None`` when the folder does not exist, or (with a :class:`CacheWarning`) when its
    manifest is missing or unreadable or a file is missing, resized or fails its sha256.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    manifest = folder / _FOLDER_MANIFEST
    try:
        stored = json.loads(manifest.read_text(encoding="utf-8"))
        files, settings = stored["files"], stored["settings"]
        if stored.get("format") != _FOLDER_FORMAT or not isinstance(files, dict):
            raise ValueError("unknown manifest format")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        what = "is missing" if not manifest.exists() else f"cannot be read ({type(exc).__name__})"
        _stale(manifest, f"{what}, so the folder may be half-written", "rebuilding the folder")
        return None
    for name, record in sorted(files.items()):
        path = folder / name
        try:
            if path.stat().st_size != record["size"]:
                reason = f"has {path.stat().st_size} bytes, not {record['size']}"
            elif _file_sha256(path) != record["sha256"]:
                reason = "fails its sha256 checksum"
            else:
                continue
        except (OSError, KeyError, TypeError) as exc:
            reason = f"cannot be checked ({type(exc).__name__}: {exc})"
        _stale(path, reason, "rebuilding the folder")
        return None
    return settings


def is_cached(folder: str | os.PathLike, settings: Mapping[str, Any]) -> bool:
    """Whether ``folder`` is a complete, verified cache entry made with ``settings``."""
    stored = cached_folder_settings(folder)
    wanted = json.loads(json.dumps(dict(settings), default=str))
    if stored is None or stored == wanted:
        return stored is not None
    changed = sorted(k for k in wanted.keys() | stored.keys() if wanted.get(k) != stored.get(k))
    _stale(
        Path(folder) / _FOLDER_MANIFEST,
        f"was made with other settings ({', '.join(changed)} differ)",
        "rebuilding the folder",
    )
    return False


@contextmanager
def write_cached_folder(
    folder: str | os.PathLike, settings: Mapping[str, Any], info: Mapping[str, Any] | None = None
) -> Iterator[Path]:
    """Yield an empty folder to fill; on success it becomes the cache entry ``folder``.

    The files written into it are listed (size and sha256) in its manifest with ``settings``
    (compared by :func:`is_cached`) and ``info`` (recorded only). Call it when
    :func:`is_cached` said no: whatever is at ``folder`` now is stale and is deleted first.
    A folder that appears while this one is built (another process finished first) is kept.
    """
    folder = Path(folder)
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder)
    elif os.path.lexists(folder):
        folder.unlink()
    with atomic_dir(folder, exists="keep") as build:
        yield build
        files = {
            path.relative_to(build).as_posix(): {
                "size": path.stat().st_size,
                "sha256": _file_sha256(path),
            }
            for path in sorted(build.rglob("*"))
            if path.is_file()
        }
        manifest = {
            "format": _FOLDER_FORMAT,
            "settings": json.loads(json.dumps(dict(settings), default=str)),
            "info": dict(info or {}),
            "files": files,
        }
        write_json_atomic(build / _FOLDER_MANIFEST, manifest)
