"""The embedding model behind two calls: ``embed_images`` and ``embed_texts``.

Indexing and search see a model only as an ``Embedder``, made by ``load_embedder``. Today every model loads
through sentence-transformers (``SentenceTransformerEmbedder``): a hub name such as ``clip-ViT-B-32`` or a local
directory in sentence-transformers format (CLIP, SigLIP, OpenCLIP conversions, BioCLIP, FashionCLIP ...). Other
model families (open_clip, a multilingual text tower paired with a CLIP image tower) plug in behind the same
interface.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from imgsearch_core.precision import (
    PROBE_TEXTS,
    Choice,
    ChoiceCache,
    Precision,
    PrecisionSetting,
    autocast,
    candidates,
    check_supported,
    cpu_flags,
    pick,
    probe_pictures,
    quantized,
    run_probe,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextEmbedding:
    vectors: np.ndarray  # (n, dim) float32, L2-normalised
    truncated: list[bool]  # True where a text was longer than the model's token limit


class Embedder(Protocol):
    """What indexing and search need from a model."""

    name: str  # recorded with a collection: a hub name, or a local directory's absolute path
    dim: int
    image_size: int  # the shortest side the model looks at: images are decoded to about this
    max_text_tokens: int | None
    fingerprint: list[float]  # what these weights make of fixed probes (see SentenceTransformerEmbedder)
    precision: str  # how the model runs: fp32, bf16, int8 or fp16 (imgsearch_core/precision.py)

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """(n, dim) float32 rows of unit length."""

    def embed_texts(self, texts: list[str]) -> TextEmbedding: ...


def load_embedder(settings) -> Embedder:
    """The model that ``settings.model`` names, on ``settings``' device, at ``settings.precision``."""
    return SentenceTransformerEmbedder(settings.model, device=settings.resolved_device(), batch_size=settings.batch_size,
                                       precision=settings.precision, cache_dir=settings.cache_dir)


def model_identity(model: str) -> str:
    """The name recorded with a collection: an existing local directory by absolute path, else the name."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


class SentenceTransformerEmbedder:
    """A loaded sentence-transformers model. Create once; share between threads.

    ``precision`` is fp32, bf16, int8, fp16, or auto: the fastest of those that agrees with fp32, measured once
    and remembered in ``cache_dir`` (see imgsearch_core/precision.py). ``precision_choice`` says what auto
    measured."""

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 32, precision: PrecisionSetting = "fp32",
                 cache_dir: Path | None = None):
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()

        if precision != "auto":
            check_supported(precision, device)  # a wrong setting fails before the model loads
        self.name = model_identity(model)
        self.device = device
        self.batch_size = batch_size
        self._model = SentenceTransformer(self.name, device=device)
        self._lock = threading.Lock()  # torch runs one batch at a time; callers queue here
        self.precision: Precision = "fp32"  # the fingerprint and the probes below are taken in fp32
        self.max_text_tokens = self._text_token_limit()
        if self.max_text_tokens:
            self._model.max_seq_length = self.max_text_tokens
        self.image_size = self._image_input_size()
        self.dim = int(self.embed_texts(["warm-up"]).vectors.shape[1])
        self.fingerprint = self._fingerprint()
        self.precision_choice: Choice | None = None
        prepared = {}
        if precision == "auto":
            self.precision_choice, prepared = self._choose_precision(cache_dir)
            log.info("%s", self.precision_choice.describe())
            precision = self.precision_choice.precision
        if precision == "int8":
            self._model = prepared["int8"] if "int8" in prepared else quantized(self._model)
        self.precision = precision

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """Embed RGB images; returns (n, dim) float32 rows of unit length."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._encode(images)

    def embed_texts(self, texts: list[str]) -> TextEmbedding:
        """Embed texts, truncating each to the model's token limit (reported per text)."""
        truncated = [self._token_count(t) > self.max_text_tokens for t in texts] if self.max_text_tokens else [False] * len(texts)
        return TextEmbedding(self._encode(texts), truncated)

    def _encode(self, inputs: list, model=None, precision: Precision | None = None) -> np.ndarray:
        """Rows of unit length in float32, whatever precision the model ran in."""
        import torch

        precision = precision or self.precision
        with self._lock, autocast(precision, self.device):
            vectors = (self._model if model is None else model).encode(
                inputs, batch_size=self.batch_size, convert_to_tensor=True, normalize_embeddings=False,
                show_progress_bar=False,
            )
        vectors = torch.nn.functional.normalize(vectors.float(), dim=-1)
        return np.ascontiguousarray(vectors.cpu().numpy(), dtype=np.float32)

    def _choose_precision(self, cache_dir: Path | None) -> tuple[Choice, dict]:
        """auto: the cached choice for this model, device and machine, else a probe of each candidate. Also
        the models the probe prepared (an int8 copy), by precision."""
        cache = ChoiceCache(cache_dir) if cache_dir else None
        key = ChoiceCache.key(self.name, self.fingerprint, self.device, self.batch_size)
        if cache and (known := cache.get(key)):
            return known, {}
        options = candidates(self.device, cpu_flags())
        if not options:
            return Choice("fp32", []), {}
        log.warning("imgsearch: measuring which precision runs this model fastest (once per model and machine)")
        pictures = probe_pictures(self.image_size)
        models = {"int8": quantized(self._model)} if "int8" in options else {}
        choice = Choice("fp32", run_probe(lambda p: self._encode(pictures, models.get(p), p),
                                          lambda p: self._encode(PROBE_TEXTS, models.get(p), p), options))
        choice.precision = pick(choice.trials)
        if cache:
            cache.put(key, choice)
        return choice, models

    def _fingerprint(self) -> list[float]:
        """What these weights make of a fixed text and a fixed picture (first 32 dimensions of each): recorded
        with a collection, it tells other weights under the same name apart."""
        ramp = np.linspace(0, 255, self.image_size, dtype=np.float32)
        pixels = np.stack([np.add.outer(ramp, ramp) / 2, np.outer(ramp, np.ones_like(ramp)),
                           np.outer(np.ones_like(ramp), ramp[::-1])], axis=-1).astype(np.uint8)
        image = self.embed_images([Image.fromarray(pixels, "RGB")])[0]
        text = self.embed_texts(["a photo of a red bicycle leaning on a wall"]).vectors[0]
        return [float(v) for v in np.concatenate([text[:32], image[:32]])]

    def _token_count(self, text: str) -> int:
        tokenizer = self._model[0].tokenizer
        encoded = tokenizer(text, add_special_tokens=True, truncation=True, max_length=self.max_text_tokens + 1)
        return len(encoded["input_ids"])

    def _text_token_limit(self) -> int | None:
        config = getattr(self._model[0], "config", None)
        text_config = getattr(config, "text_config", config)
        limit = getattr(text_config, "max_position_embeddings", None)
        return int(limit) if limit else None

    def _image_input_size(self) -> int:
        """The shortest side the model's processor resizes to (224 for ViT-B/32)."""
        processor = getattr(self._model[0], "processor", None)
        image_processor = getattr(processor, "image_processor", processor)
        for attribute in ("crop_size", "size"):
            size = getattr(image_processor, attribute, None)
            if size is None:
                continue
            values = [v for k in ("shortest_edge", "height", "width")
                      if (v := (size.get(k) if isinstance(size, dict) else getattr(size, k, None)))]
            if values:
                return int(max(values))
        return 224

