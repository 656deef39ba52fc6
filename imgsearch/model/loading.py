"""``load_embedder``: the model a ``Settings`` names, in the family that loads it."""

from __future__ import annotations

from imgsearch.errors import ImgsearchError
from imgsearch.model.embedder import Embedder, ModelSettingError, is_open_clip
from imgsearch.model.hub import check_available
from imgsearch.model.open_clip_embedder import OpenClipEmbedder
from imgsearch.model.sentence_transformer_embedder import SentenceTransformerEmbedder
from imgsearch.settings import Settings


def load_embedder(settings: Settings) -> Embedder:
    """The model that ``settings.model`` names, on ``settings``' device, at ``settings.precision``, run by
    ``settings.backend``."""
    check_available(settings.model)  # seconds, not minutes of retries, when the hub cannot be reached
    device = settings.resolved_device()
    options = dict(
        device=device,
        batch_size=settings.for_device(device).batch_size,
        precision=settings.precision,
        cache_dir=settings.cache_dir,
        backend=settings.backend,
    )
    loader = OpenClipEmbedder if is_open_clip(settings.model) else SentenceTransformerEmbedder
    try:
        return loader(settings.model, **options)
    except ImgsearchError:
        raise
    except Exception as exc:  # the libraries' many ways to fail on a name, a folder or a file in it
        raise ModelSettingError(
            f"model '{settings.model}' cannot be loaded: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        ) from exc
