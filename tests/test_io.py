"""ssae_lens._core.io: atomic files and folders, overwrite policies, and permissions."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from safetensors.torch import save_file

from ssae_lens._core.io import atomic_dir, atomic_path, write_text_atomic
from ssae_lens.publish import publish


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    """Run the test under a given umask (process-wide, so restored right after)."""
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_and_folders_get_the_users_umask(tmp_path, umask):
    # What a plain open()/mkdir() gives is the reference: 0666/0777 less the umask.
    plain_file, plain_dir = tmp_path / "plain.txt", tmp_path / "plain"
    plain_file.write_text("x")
    plain_dir.mkdir()
    assert mode(plain_file) == 0o666 & ~umask
    written = write_text_atomic(tmp_path / "a.txt", "hello")
    assert mode(written) == mode(plain_file)
    with atomic_dir(tmp_path / "run", exists="replace") as tmp:
        (tmp / "w.txt").write_text("w")
    assert mode(tmp_path / "run") == mode(plain_dir) == 0o777 & ~umask
    assert mode(tmp_path / "run" / "w.txt") == mode(plain_file)


def test_safetensors_files_get_the_users_umask(tmp_path, umask):
    # safetensors' save_file makes its files 0600 by itself; the atomic writer corrects that.
    target = tmp_path / "t.safetensors"
    with atomic_path(target, suffix=".safetensors") as tmp:
        save_file({"x": torch.zeros(2)}, tmp)
    assert mode(target) == 0o666 & ~umask


def test_published_folder_is_readable_by_the_group(tmp_path, umask):
    cfg = StandardSAEConfig(d_in=4, d_sae=3)
    sae = StandardSAE(cfg)
    folder = publish(sae, "me/x", "blocks.0.hook_resid_post", out_dir=tmp_path, dry_run=True)
    paths = [folder / "blocks.0.hook_resid_post", *folder.rglob("*.*")]
    assert paths and all(mode(p) == (0o777 if p.is_dir() else 0o666) & ~umask for p in paths), {
        str(p): oct(mode(p)) for p in paths
    }


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new")
        raise RuntimeError
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def _fill(folder, text):
    (folder / "f.txt").write_text(text)
    (folder / "sub").mkdir()
    (folder / "sub" / "g.txt").write_text(text)


@pytest.mark.parametrize("existing", [None, "folder", "empty folder", "file"])
@pytest.mark.parametrize("exists", ["replace", "keep"])
def test_atomic_dir_policies(tmp_path, exists, existing):
    target = tmp_path / "out"
    if existing == "folder":
        target.mkdir()
        _fill(target, "old")
    elif existing == "empty folder":
        target.mkdir()
    elif existing == "file":
        target.write_text("old file")
    with atomic_dir(target, exists=exists) as tmp:
        assert tmp.parent == tmp_path and tmp.is_dir() and not any(tmp.iterdir())
        _fill(tmp, "new")
    if existing is None or exists == "replace":
        assert (target / "f.txt").read_text() == "new"
        assert (target / "sub" / "g.txt").read_text() == "new"
    elif existing == "folder":
        assert (target / "f.txt").read_text() == "old"
    elif existing == "empty folder":
        assert not any(target.iterdir())
    else:
        assert target.read_text() == "old file"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or old folder left


def test_atomic_dir_keeps_the_old_folder_on_error(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    _fill(target, "old")
    with pytest.raises(KeyboardInterrupt), atomic_dir(target, exists="replace") as tmp:
        _fill(tmp, "new")
        raise KeyboardInterrupt
    assert (target / "f.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_needs_a_policy(tmp_path):
    with (
        pytest.raises(ValueError, match="'replace' or 'keep'"),
        atomic_dir(tmp_path / "x", exists="overwrite"),
    ):  # type: ignore[arg-type]
        pass
    assert not list(tmp_path.iterdir())


def test_atomic_dir_keep_yields_to_a_concurrent_finisher(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target, exists="keep") as tmp:
        _fill(tmp, "ours")
        target.mkdir()  # another process finished first
        _fill(target, "theirs")
    assert (target / "f.txt").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
