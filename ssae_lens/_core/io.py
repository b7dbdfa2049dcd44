"""Atomic file and folder writes shared by every module that saves something.

A file (or folder) is written under a temporary name beside its destination and moved into
place with ``os.replace``, so a reader never sees a half-written result and a killed process
never destroys the previous version.

Temporary files and folders are created with ``os.open(..., 0o666)`` and ``os.mkdir(...,
0o777)``, so the kernel applies the user's umask (and any default ACL) exactly as for an
ordinary ``open``; ``tempfile.mkstemp``/``mkdtemp`` would make every result private (0600 /
0700). No process-wide state (such as the umask) is read or changed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

__all__ = ["atomic_dir", "atomic_path", "save_figure", "write_json_atomic", "write_text_atomic"]

DirPolicy = Literal["replace", "keep"]
"""What :func:`atomic_dir` does when the destination exists once the new folder is complete."""


def _new_sibling(path: Path, suffix: str, create: Callable[[Path], None]) -> Path:
    """Create a fresh ``.<name>.<random><suffix>`` next to ``path`` with ``create``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        candidate = path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"
        try:
            create(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"Could not create a temporary name next to {str(path)!r}.")


def _create_file(path: Path) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))


def _create_dir(path: Path) -> None:
    os.mkdir(path, 0o777)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it to ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    ``suffix`` keeps an extension for writers that infer the format from it.
    """
    path = Path(path)
    tmp = _new_sibling(path, suffix, _create_file)
    try:
        yield tmp
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
    tmp = _new_sibling(path, ".tmp", _create_dir)
    try:
        yield tmp
        if not os.path.lexists(path):
            try:
                os.replace(tmp, path)
                return
            except OSError:  # another process created it meanwhile
                if not os.path.lexists(path):
                    raise
        if exists == "replace":
            if path.is_dir() and not path.is_symlink():
                aside = _new_sibling(path, ".old", _create_dir)
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
