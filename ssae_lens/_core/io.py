"""Atomic file and folder writes shared by every module that saves something.

A file (or folder) is written under a temporary name beside its destination and moved into
place with ``os.replace``, so a reader never sees a half-written result and a killed process
never destroys the previous version.

Before the move, the result gets the permissions an ordinary ``open``/``mkdir`` would give it
(``0o666``/``0o777`` less the user's umask): ``mkstemp``/``mkdtemp`` create private 0600/0700
entries, and so does safetensors' ``save_file`` (which SAELens's ``save_model`` uses), so a
lab's shared runs and caches would otherwise be unreadable to colleagues.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

__all__ = ["atomic_dir", "atomic_path", "save_figure", "write_json_atomic", "write_text_atomic"]

DirPolicy = Literal["replace", "keep"]
"""What :func:`atomic_dir` does when the destination exists once the new folder is complete."""


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    # Elsewhere it can only be read by setting it. A restrictive value for that instant means a
    # file another thread creates meanwhile is private rather than world-writable.
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _share(path: Path) -> None:
    """Give ``path`` (and everything in it) the modes ``open``/``mkdir`` would have given."""
    mask = _umask()
    if not path.is_dir():
        os.chmod(path, 0o666 & ~mask)
        return
    for root, _, files in os.walk(path):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            file = os.path.join(root, name)
            if not os.path.islink(file):
                os.chmod(file, 0o666 & ~mask)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it to ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    ``suffix`` keeps an extension for writers that infer the format from it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _share(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | os.PathLike, *, exists: DirPolicy) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; on success move it to ``path``.

    Args:
        path: the folder to create.
        exists: what happens when ``path`` exists once the new folder is complete:
            ``"replace"`` swaps the new folder in and deletes the old one (for outputs a rerun
            overwrites); ``"keep"`` keeps the existing folder and discards the new one (for
            content-addressed caches, where another process finished the same result first).

    On an exception the temporary folder is removed and ``path`` is left untouched.
    """
    if exists not in ("replace", "keep"):
        raise ValueError(f"exists must be 'replace' or 'keep', got {exists!r}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        _share(tmp)
        if not os.path.lexists(path):
            try:
                os.replace(tmp, path)
                return
            except OSError:  # another process created it meanwhile
                if not os.path.lexists(path):
                    raise
        if exists == "replace":
            if path.is_dir() and not path.is_symlink():
                aside = tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old")
                os.replace(path, aside)  # onto the empty placeholder folder
                os.replace(tmp, path)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                path.unlink()
                os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, default=str))


def save_figure(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """Write a matplotlib figure atomically; the format comes from the suffix."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if not fmt:
        raise ValueError(f"Cannot tell the image format of {str(path)!r}: add a suffix, e.g. .png")
    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, format=fmt, **savefig_kwargs)
    return path
