"""The embedding model behind two calls: ``embed_images`` and ``embed_texts``.

Indexing and search see a model only as an ``Embedder``, made by ``load_embedder`` from the model setting
(``IMGSEARCH_MODEL``). The setting names one of these families:

- A sentence-transformers model, by hub name or local directory (``SentenceTransformerEmbedder``): the
  sentence-transformers CLIP checkpoints (``clip-ViT-B-32``, ``clip-ViT-B-16``, ``clip-ViT-L-14``), any Hugging
  Face CLIP checkpoint, which sentence-transformers wraps itself (FashionCLIP, PLIP, StreetCLIP, CLIP-RSICD,
  PubmedCLIP ...), and SigLIP and SigLIP 2, whose texts are padded to the length they were trained with.
- A pair ``IMAGE_MODEL+TEXT_MODEL``: a text model trained to put texts where an image model puts pictures,
  such as ``clip-ViT-B-32+sentence-transformers/clip-ViT-B-32-multilingual-v1``; a name in ``KNOWN_PAIRS``
  alone means its pair. Both load through sentence-transformers (``SentenceTransformerEmbedder`` too).
- An open_clip model (the [openclip] extra; ``OpenClipEmbedder``): ``hf-hub:org/name`` (BioCLIP is
  ``hf-hub:imageomics/bioclip``) or a directory in open_clip's layout alone (``open_clip_config.json``, no
  config.json or modules.json). open_clip and torchvision are imported only then.

A collection records ``model_identity`` of the setting: a local directory by absolute path, a pair as both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from imgsearch.errors import ImgsearchError
from imgsearch.media.safe_files import private_dir

log = logging.getLogger(__name__)

# Text models published alone that are one half of a pair: the name means the pair.
_MULTILINGUAL_B32 = ("clip-ViT-B-32", "sentence-transformers/clip-ViT-B-32-multilingual-v1")
KNOWN_PAIRS: dict[str, tuple[str, str]] = {
    "clip-ViT-B-32-multilingual-v1": _MULTILINGUAL_B32,
    "sentence-transformers/clip-ViT-B-32-multilingual-v1": _MULTILINGUAL_B32,
}
OPEN_CLIP_HUB = "hf-hub:"  # open_clip's own prefix for a hub model: what model cards tell users to load


class ModelSettingError(ImgsearchError, ValueError):
    """IMGSEARCH_MODEL names something imgsearch cannot load as it is: a malformed pair, two models that do not
    make a pair, or an open_clip model without the [openclip] extra."""


@dataclass(frozen=True)
class TextEmbedding:
    vectors: np.ndarray  # (n, dim) float32, L2-normalised
    truncated: list[bool]  # True where a text was longer than the model's token limit


class Embedder(Protocol):
    """What indexing and search need from a model."""

    name: str  # recorded with a collection: model_identity of the model setting
    device: str  # cpu, cuda, cuda:1 ...
    dim: int
    image_size: int  # the shortest side the model looks at: images are decoded to about this
    max_text_tokens: int | None
    fingerprint: list[float]  # what these weights make of fixed probes (see fingerprint())
    precision: str  # how the model runs: fp32, bf16, int8 or fp16 (imgsearch/precision.py)
    backend: str  # what runs it: torch, onnx or openvino (imgsearch/backends.py)
    logit_scale: float  # what zero-shot classification multiplies cosine similarities by (100 for CLIP)

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """(n, dim) float32 rows of unit length."""

    def embed_texts(self, texts: list[str]) -> TextEmbedding: ...


def _check_cache_dir(folder: Path) -> None:
    """Refuse another user's cache folder, or a link in its place (UnsafeFileError): what it holds decides what
    runs as the model. One that cannot be made (a read-only place) only costs the cache, and says so."""
    try:
        private_dir(folder)
    except OSError as exc:
        log.warning(
            "imgsearch: cannot keep a cache in %s (%s); set IMGSEARCH_CACHE_DIR to a folder this user can "
            "write. Until then auto measures again at every start, and no backend can build its graphs",
            folder,
            exc,
        )


def model_pair(model: str) -> tuple[str, str | None]:
    """(image model, text model) of a model setting; the text model is None where one model does both.

    ``IMAGE+TEXT`` is a pair, unless the whole setting is a directory; a name in KNOWN_PAIRS is its pair."""
    if Path(model).expanduser().is_dir():
        return model, None
    if model in KNOWN_PAIRS:
        return KNOWN_PAIRS[model]
    if "+" not in model:
        return model, None
    sides = model.split("+")
    if len(sides) != 2 or not all(side.strip() for side in sides):
        raise ModelSettingError(
            f"model '{model}': name a pair of models as IMAGE_MODEL+TEXT_MODEL, each a hub name "
            "or a directory with no + in it"
        )
    image, text = (side.strip() for side in sides)
    if is_open_clip(image) or is_open_clip(text):
        raise ModelSettingError(
            f"model '{model}': a pair is two sentence-transformers models; an open_clip model "
            "has a text tower of its own"
        )
    return image, text


def model_identity(model: str) -> str:
    """The name recorded with a collection: a local directory by absolute path, else the name; a pair as
    ``IMAGE+TEXT`` of the two (a known pair's name too)."""
    image, text = model_pair(model)
    if text is None:
        return _one_identity(image)
    sides = _one_identity(image), _one_identity(text)
    if any("+" in side for side in sides):
        raise ModelSettingError(
            f"model '{model}': a pair's models must have no + in their names or absolute paths "
            f"({' and '.join(sides)}); move or link the folder elsewhere"
        )
    return "+".join(sides)


def _one_identity(model: str) -> str:
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


def is_open_clip(model: str) -> bool:
    """Whether open_clip loads ``model``: a ``hf-hub:`` name, or a directory in open_clip's layout only. A
    directory that sentence-transformers loads too (many hub repositories hold both layouts) stays with it: it
    needs no extra."""
    folder = Path(model).expanduser()
    return model.startswith(OPEN_CLIP_HUB) or (
        (folder / "open_clip_config.json").is_file()
        and not any((folder / name).is_file() for name in ("modules.json", "config.json"))
    )


def fingerprint(embedder: Embedder) -> list[float]:
    """What ``embedder`` makes of a fixed text and a fixed picture (first 32 dimensions of each): recorded with
    a collection, it tells other weights under the same name apart."""
    size = embedder.image_size
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    pixels = np.stack(
        [np.add.outer(ramp, ramp) / 2, np.outer(ramp, np.ones_like(ramp)), np.outer(np.ones_like(ramp), ramp[::-1])],
        axis=-1,
    ).astype(np.uint8)
    image = embedder.embed_images([Image.fromarray(pixels, "RGB")])[0]
    text = embedder.embed_texts(["a photo of a red bicycle leaning on a wall"]).vectors[0]
    if image.shape != text.shape:
        raise ModelSettingError(
            f"model '{embedder.name}': its images get {image.shape[0]}-dimensional vectors and "
            f"its texts {text.shape[0]}-dimensional ones; they cannot be compared"
        )
    return [float(v) for v in np.concatenate([text[:32], image[:32]])]


def fingerprints_match(a: Sequence[float], b: Sequence[float]) -> bool:
    """Same weights give nearly the same probe embeddings on any device or precision; other weights do not."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or not a.size:
        return False
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)) >= 0.98
