"""The Hugging Face Hub: repo-id checks, model cards, uploading a folder, downloading files.

Every upload of the package (``ssae_lens.publish`` for dictionaries,
``SteeringVector.push_to_hub`` for steering vectors) and every download of a steering
vector goes through these functions. Downloads use the Hugging Face cache and honour
``HF_HUB_OFFLINE``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

CARD_FILENAME = "README.md"


def check_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it looks like ``"user/name"``; raise a ``ValueError`` otherwise."""
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id must look like 'user/name', got {repo_id!r}.")
    return repo_id


def check_path_in_repo(path: str | None, what: str) -> str:
    """A relative folder inside a repository, as a POSIX path (``""`` for the root).

    Raises:
        ValueError: an absolute path, ``..`` or a backslash (``what`` names the argument).
    """
    if path is None or path in ("", "."):
        return ""
    if not isinstance(path, str) or "\\" in path:
        raise ValueError(f"{what} must be a relative folder such as 'french', got {path!r}.")
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts:
        raise ValueError(
            f"{what} must be a relative folder inside the repository such as 'french', "
            f"got {path!r}."
        )
    return pure.as_posix().strip("/")


def card_text(library_name: str, tags: Sequence[str], body: str) -> str:
    """A model card: Hub metadata front matter (library and tags), then the Markdown ``body``."""
    unique = list(dict.fromkeys(tags))
    front = ["---", f"library_name: {library_name}", "tags:", *(f"- {t}" for t in unique), "---"]
    return "\n".join(front) + "\n\n" + body


def hub_api(api: Any | None, *, token: str | None, endpoint: str | None) -> Any:
    """``api`` if given, else ``huggingface_hub.HfApi(endpoint=endpoint, token=token)``."""
    if api is not None:
        return api
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint, token=token)


def upload_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    api: Any,
    commit_message: str,
    private: bool | None = None,
) -> str:
    """Create ``repo_id`` if needed and upload every file of ``folder`` in one commit.

    Files already in the repository and absent from ``folder`` are kept. Returns the
    commit URL.
    """
    api.create_repo(repo_id, repo_type="model", exist_ok=True, private=private)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        commit_message=commit_message,
    )
    return str(getattr(commit, "commit_url", commit))


def repo_files(repo_id: str, *, api: Any) -> list[str]:
    """Every file path on ``repo_id``'s main branch (empty if the repository does not exist)."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        return list(api.list_repo_files(repo_id))
    except RepositoryNotFoundError:
        return []


def download(
    repo_id: str,
    filenames: Sequence[str],
    *,
    api: Any,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> list[Path]:
    """Download ``filenames`` (paths inside the repository) into the Hugging Face cache.

    Files already cached are not fetched again; with ``HF_HUB_OFFLINE=1`` or
    ``local_files_only=True`` only the cache is read.

    Raises:
        FileNotFoundError: a file is not in the repository, or (offline) not in the cache;
            the message says which and what to do.
    """
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    paths = []
    for filename in filenames:
        try:
            local = api.hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
            )
        except RemoteEntryNotFoundError as err:
            raise FileNotFoundError(
                f"{repo_id} has no file {filename!r}"
                + (f" at revision {revision!r}" if revision else "")
                + ". Check the subfolder (the model card lists the repository's contents)."
            ) from err
        except LocalEntryNotFoundError as err:
            raise FileNotFoundError(
                f"{filename!r} of {repo_id} is not in the Hugging Face cache and the Hub cannot "
                "be used (offline mode, local_files_only=True, or no connection). Download it "
                "once with network access, or unset HF_HUB_OFFLINE."
            ) from err
        paths.append(Path(local))
    return paths
