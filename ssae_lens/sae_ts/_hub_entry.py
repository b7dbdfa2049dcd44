"""``push_to_hub`` / ``from_pretrained`` of the SAE-TS artefacts, written once for both.

:class:`~ssae_lens.sae_ts.effect_data.EffectData` and
:class:`~ssae_lens.sae_ts.effect_model.EffectModel` inherit them; the Hub format and the
model card are :mod:`ssae_lens.sae_ts.hub`'s.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from typing_extensions import Self

__all__ = ["HubEntry"]


class HubEntry:
    """An SAE-TS artefact that goes to and comes from a Hub repository (or a local folder)."""

    hub_kind: ClassVar[str]
    """``"effect data"`` or ``"effect model"``: the entry's files in a repository."""

    def push_to_hub(
        self,
        repo_id: str,
        *,
        path_in_repo: str | None = None,
        token: str | None = None,
        endpoint: str | None = None,
        api: Any | None = None,
        private: bool | None = None,
        commit_message: str | None = None,
    ) -> str:
        """Upload to ``repo_id`` (created if needed) and rewrite its model card; returns the
        commit URL. An effect model must record its SAE (fit it with ``EffectData.fit``)."""
        from ssae_lens.sae_ts.hub import push_effects

        return push_effects(
            self,  # type: ignore[arg-type]
            repo_id,
            path_in_repo=path_in_repo,
            token=token,
            endpoint=endpoint,
            api=api,
            private=private,
            commit_message=commit_message,
        )

    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_path: str | os.PathLike,
        *,
        sae: Any | None,
        subfolder: str | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | None = None,
        endpoint: str | None = None,
        local_files_only: bool = False,
    ) -> Self:
        """Load from a local folder or a Hub repository (through the Hugging Face cache),
        refusing an ``sae`` (a SAELens SAE) other than the one the effects were measured
        with (``None``: no check)."""
        from ssae_lens.sae_ts.hub import load_effects

        return load_effects(  # type: ignore[return-value]
            repo_id_or_path,
            cls.hub_kind,
            sae=sae,
            subfolder=subfolder,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            endpoint=endpoint,
            local_files_only=local_files_only,
        )
