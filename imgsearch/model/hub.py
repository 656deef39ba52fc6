"""Models named on the Hugging Face hub: found in the local cache, or downloaded with a progress bar; with no way to
the hub, a prompt error that says how to use a model folder instead of minutes of retries."""

from __future__ import annotations

import os
from pathlib import Path

from imgsearch.model.embedder import OPEN_CLIP_HUB, ModelSettingError, model_pair

REACH_TIMEOUT_S = 5.0  # how long the hub gets to answer before imgsearch calls it unreachable


def hub_names(model: str) -> list[str]:
    """The hub repositories a model setting loads from: none for local folders; a bare sentence-transformers name
    (``clip-ViT-B-32``) is in the sentence-transformers organisation."""
    if model.startswith(OPEN_CLIP_HUB):
        return [model.removeprefix(OPEN_CLIP_HUB)]
    names = []
    for side in model_pair(model):
        if side is None or Path(side).expanduser().exists():
            continue
        names.append(side if "/" in side else f"sentence-transformers/{side}")
    return names


def is_cached(repo: str) -> bool:
    """Whether the hub cache on this machine holds the model (its configuration, at least)."""
    from huggingface_hub import try_to_load_from_cache

    return any(
        isinstance(try_to_load_from_cache(repo, name), str)
        for name in ("modules.json", "config.json", "open_clip_config.json")
    )


def hub_reachable(timeout_s: float = REACH_TIMEOUT_S) -> bool:
    """Whether the hub's address answers at all within ``timeout_s`` (any HTTP status counts)."""
    import httpx
    from huggingface_hub import constants

    try:
        httpx.head(constants.ENDPOINT, timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return True


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_available(model: str) -> None:
    """Raise ModelSettingError at once when ``model`` must come from the hub and cannot: it is not in the local
    cache, and the hub is switched off (HF_HUB_OFFLINE) or does not answer. A model that will be downloaded shows
    huggingface_hub's progress bars."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    repos = hub_names(model)
    for repo in repos:
        try:
            validate_repo_id(repo)
        except HFValidationError:
            raise ModelSettingError(
                f"model '{model}' cannot be loaded: {repo} is no folder on this machine, nor a "
                "name on the hub; set IMGSEARCH_MODEL to a model folder or a hub name"
            ) from None
    missing = [repo for repo in repos if not is_cached(repo)]
    if not missing:
        return
    if offline():
        why = "HF_HUB_OFFLINE is set"
    elif not hub_reachable():
        why = f"the hub does not answer within {REACH_TIMEOUT_S:.0f} s (no network?)"
    else:
        from huggingface_hub.utils import enable_progress_bars

        enable_progress_bars()  # a first download of hundreds of MB says how far it is
        return
    raise ModelSettingError(
        f"model '{model}' is not on this machine and cannot be downloaded: {why}. Set IMGSEARCH_MODEL to a local "
        f"model folder (a sentence-transformers or Hugging Face CLIP/SigLIP directory), or download "
        f"{', '.join(missing)} on a machine with a network and copy the hub cache (~/.cache/huggingface) here; "
        f"with HF_HUB_OFFLINE=1 imgsearch never tries the network."
    )
