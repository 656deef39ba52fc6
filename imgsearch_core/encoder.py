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

from imgsearch_core.backends import Backend, CompiledModel, check_backend, graph_folder
from imgsearch_core.precision import (
    BASELINE,
    PROBE_TEXTS,
    Choice,
    ChoiceCache,
    Option,
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
    backend: str  # what runs it: torch, onnx or openvino (imgsearch_core/backends.py)
    logit_scale: float  # what zero-shot classification multiplies cosine similarities by (100 for CLIP)

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """(n, dim) float32 rows of unit length."""

    def embed_texts(self, texts: list[str]) -> TextEmbedding: ...


def load_embedder(settings) -> Embedder:
    """The model that ``settings.model`` names, on ``settings``' device, at ``settings.precision``, run by
    ``settings.backend``."""
    return SentenceTransformerEmbedder(settings.model, device=settings.resolved_device(), batch_size=settings.batch_size,
                                       precision=settings.precision, cache_dir=settings.cache_dir,
                                       backend=settings.backend)


def model_identity(model: str) -> str:
    """The name recorded with a collection: an existing local directory by absolute path, else the name."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


class SentenceTransformerEmbedder:
    """A loaded sentence-transformers model. Create once; share between threads.

    ``precision`` is fp32, bf16, int8, fp16, or auto: the fastest of those that agrees with fp32, measured once
    and remembered in ``cache_dir`` (see imgsearch_core/precision.py). ``backend`` is torch, or onnx or openvino
    to run the two towers there (imgsearch_core/backends.py); auto then measures that backend's settings against
    torch fp32. ``precision_choice`` says what auto measured."""

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 32, precision: PrecisionSetting = "fp32",
                 cache_dir: Path | None = None, backend: Backend = "torch"):
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()

        check_backend(backend, precision, device)  # a wrong setting fails before the model loads
        if precision != "auto" and backend == "torch":
            check_supported(precision, device)
        self.name = model_identity(model)
        self.device = device
        self.batch_size = batch_size
        self._cache_dir = Path(cache_dir) if cache_dir else Path("./data/cache")
        self._model = SentenceTransformer(self.name, device=device)
        self._lock = threading.Lock()  # one batch at a time; callers queue here
        self.backend, self.precision = BASELINE  # the fingerprint and the probes below are taken in torch fp32
        self._runners: dict[Option, object] = {BASELINE: self._model}
        self.max_text_tokens = self._text_token_limit()
        if self.max_text_tokens:
            self._model.max_seq_length = self.max_text_tokens
        self.image_size = self._image_input_size()
        self.logit_scale = self._logit_scale()
        self.dim = int(self.embed_texts(["warm-up"]).vectors.shape[1])
        self.fingerprint = self._fingerprint()
        self.precision_choice: Choice | None = None
        chosen: Option = (backend, precision)
        if precision == "auto":
            self.precision_choice = self._choose_precision(cache_dir, backend)
            log.info("%s", self.precision_choice.describe())
            chosen = (self.precision_choice.backend, self.precision_choice.precision)
        runner = self._runner(chosen)
        self._runners = {chosen: runner}  # what the probe prepared and did not choose is freed
        self.backend, self.precision = chosen

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """Embed RGB images; returns (n, dim) float32 rows of unit length."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._encode(images)

    def embed_texts(self, texts: list[str]) -> TextEmbedding:
        """Embed texts, truncating each to the model's token limit (reported per text)."""
        truncated = [self._token_count(t) > self.max_text_tokens for t in texts] if self.max_text_tokens else [False] * len(texts)
        return TextEmbedding(self._encode(texts), truncated)

    def _encode(self, inputs: list, option: Option | None = None) -> np.ndarray:
        """Rows of unit length in float32, whatever precision and backend the model ran in."""
        import torch

        backend, precision = option or (self.backend, self.precision)
        with self._lock:
            runner = self._runner((backend, precision))
            if isinstance(runner, CompiledModel):
                vectors = torch.from_numpy(runner.encode(inputs, self.batch_size))
            else:
                with autocast(precision, self.device):
                    vectors = runner.encode(inputs, batch_size=self.batch_size, convert_to_tensor=True,
                                            normalize_embeddings=False, show_progress_bar=False)
        vectors = torch.nn.functional.normalize(vectors.float(), dim=-1)
        return np.ascontiguousarray(vectors.cpu().numpy(), dtype=np.float32)

    def _runner(self, option: Option):
        """What runs ``option``, made on first use: the model itself, its int8 copy, or its exported towers."""
        if option not in self._runners:
            backend, precision = option
            if backend != "torch":
                import torch

                folder = graph_folder(self._cache_dir, self.name, self.fingerprint, backend, precision)
                self._runners[option] = CompiledModel(self._model, backend, precision, folder, torch.get_num_threads(),
                                                      self.image_size)
            elif precision == "int8":
                self._runners[option] = quantized(self._model)
            else:
                self._runners[option] = self._model
        return self._runners[option]

    def _choose_precision(self, cache_dir: Path | None, backend: str) -> Choice:
        """auto: the cached choice for this model, backend, device and machine, else a probe of each candidate
        against torch fp32."""
        cache = ChoiceCache(cache_dir) if cache_dir else None
        key = ChoiceCache.key(self.name, self.fingerprint, self.device, self.batch_size, backend)
        if cache and (known := cache.get(key)):
            return known
        options = [(backend, precision) for precision in candidates(self.device, cpu_flags(), backend)]
        if not options:
            return Choice("fp32", [])
        log.warning("imgsearch: measuring which precision runs this model fastest (once per model and machine)")
        pictures = probe_pictures(self.image_size)
        trials = run_probe(lambda option: self._encode(pictures, option),
                           lambda option: self._encode(PROBE_TEXTS, option), options)
        best = pick(trials)
        choice = Choice(best.precision, trials, backend=best.backend)
        if cache:
            cache.put(key, choice)
        return choice

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

    def _logit_scale(self) -> float:
        """CLIP's learnt temperature, exp(logit_scale) (100 for OpenAI's CLIP); 100 if the model has none."""
        scale = getattr(getattr(self._model[0], "model", None), "logit_scale", None)
        try:
            return float(scale.detach().exp()) if scale is not None else 100.0
        except (AttributeError, TypeError, RuntimeError):
            return 100.0

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

