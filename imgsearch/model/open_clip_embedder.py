"""The open_clip family (the [openclip] extra): ``hf-hub:org/name`` or a directory in open_clip's layout."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

from imgsearch.errors import BackendNotSupportedError
from imgsearch.model.embedder import OPEN_CLIP_HUB, ModelSettingError, TextEmbedding, fingerprint, model_identity
from imgsearch.model.precision import BASELINE, check_supported
from imgsearch.model.runtimes import autocast, quantized
from imgsearch.settings import BackendSetting, PrecisionSetting


class OpenClipEmbedder:
    """A loaded open_clip model (the [openclip] extra): ``hf-hub:org/name`` or a directory in open_clip's layout.
    Create once; share between threads.

    Runs on torch only, in fp32, bf16, int8 or fp16 as given; ``auto`` runs fp32 without measuring."""

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        batch_size: int = 32,
        precision: PrecisionSetting = "fp32",
        cache_dir: Path | None = None,
        backend: BackendSetting = "torch",
    ):
        try:
            import open_clip
        except ImportError as exc:
            raise ModelSettingError(
                f"model '{model}' is an open_clip model: pip install 'imgsearch[openclip]'"
            ) from exc

        if backend not in ("torch", "auto"):
            raise BackendNotSupportedError(
                f"IMGSEARCH_BACKEND={backend} runs sentence-transformers models; "
                f"'{model}' is an open_clip model: use torch"
            )
        chosen = "fp32" if precision == "auto" else precision
        check_supported(chosen, device)
        self.name = model_identity(model)
        self.device = device
        self.batch_size = batch_size
        source = self.name if self.name.startswith(OPEN_CLIP_HUB) else f"local-dir:{self.name}"
        network, _, self._preprocess = open_clip.create_model_and_transforms(source, device=device)
        self._model = network.eval()
        self._tokenizer = open_clip.get_tokenizer(source)
        self._pad = getattr(getattr(self._tokenizer, "tokenizer", None), "pad_token_id", None) or 0
        self._lock = threading.Lock()  # one batch at a time; callers queue here
        self.backend, self.precision = BASELINE  # the fingerprint is taken in fp32
        self.max_text_tokens = int(self._tokenizer.context_length)
        size = open_clip.get_model_preprocess_cfg(network)["size"]
        self.image_size = int(size) if isinstance(size, int) else int(min(size))
        self.logit_scale = float(network.logit_scale.detach().exp())
        self.dim = int(self.embed_texts(["warm-up"]).vectors.shape[1])
        self.fingerprint = fingerprint(self)
        if chosen == "int8":
            self._model = quantized(network)
        self.precision = chosen

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """Embed RGB images; returns (n, dim) float32 rows of unit length."""
        import torch

        return self._encode(
            images,
            lambda batch: self._model.encode_image(
                torch.stack([self._preprocess(image) for image in batch]).to(self.device)
            ),
        )

    def embed_texts(self, texts: list[str]) -> TextEmbedding:
        """Embed texts, truncating each to the model's context length (reported per text)."""
        vectors = self._encode(texts, lambda batch: self._model.encode_text(self._tokenizer(batch).to(self.device)))
        if not texts:
            return TextEmbedding(vectors, [])
        # Tokenized one position longer, a text reaches the last position only if the context cut it.
        with self._lock:  # a Hugging Face tokenizer's truncation setting is shared state
            longer = self._tokenizer(texts, context_length=self.max_text_tokens + 1)[:, -1]
        return TextEmbedding(vectors, [bool(token != self._pad) for token in longer])

    def _encode(self, inputs: list, run) -> np.ndarray:
        """``run`` over ``inputs`` batch by batch: rows of unit length in float32."""
        import torch

        if not inputs:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock, torch.inference_mode(), autocast(self.precision, self.device):
            batches = [
                run(inputs[start : start + self.batch_size]).float() for start in range(0, len(inputs), self.batch_size)
            ]
        vectors = torch.nn.functional.normalize(torch.cat(batches), dim=-1)
        return np.ascontiguousarray(vectors.cpu().numpy(), dtype=np.float32)
