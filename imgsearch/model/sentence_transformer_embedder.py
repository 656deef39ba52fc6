"""The sentence-transformers family: CLIP, SigLIP and pairs of an image and a text model, on torch or an exported runtime."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

from imgsearch.errors import BackendNotSupportedError
from imgsearch.model.agreement import probe_pictures
from imgsearch.model.cpu import cpu_flags
from imgsearch.model.embedder import (
    TextEmbedding,
    _check_cache_dir,
    _one_identity,
    fingerprint,
    model_identity,
    model_pair,
)
from imgsearch.model.precision import BASELINE, Choice, Option, check_backend, check_supported, choose
from imgsearch.model.runtimes import CompiledModel, autocast, compiles, graph_folder, quantized
from imgsearch.model.text_graphs import FastTextEmbedder, TextGraphError, build, exported_settings, text_folder
from imgsearch.model.text_tower import TextChoice, cached_text_choice, measure, remember, text_candidates
from imgsearch.settings import BackendSetting, PrecisionSetting, cache_home

# Text towers trained on texts padded to one fixed length. SigLIP's text vector is its last position's, which is
# a pad token for all but the longest text of a batch padded to its longest: a text would get another vector in
# every batch, and none of them the one it was trained to give.
_FIXED_LENGTH_TEXT = {"siglip", "siglip2"}


class SentenceTransformerEmbedder:
    """A loaded sentence-transformers model, or a pair of them (``model_pair``). Create once; share between
    threads.

    ``precision`` is fp32, bf16, int8, fp16, or auto: the fastest of those that agrees with fp32, measured once
    and remembered in ``cache_dir`` (see imgsearch/precision.py). ``backend`` is torch, or onnx or openvino
    to run the two towers there (imgsearch/backends.py); auto then measures that backend's settings against
    torch fp32. ``backend`` auto with precision auto measures every installed backend's; with a precision named
    it runs torch. A pair runs on torch only. ``precision_choice`` says what auto measured."""

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        batch_size: int = 32,
        precision: PrecisionSetting = "fp32",
        cache_dir: Path | None = None,
        backend: BackendSetting = "torch",
    ):
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()

        image_model, text_model = model_pair(model)
        check_backend(backend, precision, device)  # a wrong setting fails before the model loads
        if text_model and backend not in ("torch", "auto"):
            raise BackendNotSupportedError(
                f"IMGSEARCH_BACKEND={backend} runs one model with an image and a text "
                f"tower; '{model}' is a pair of models: use torch"
            )
        if precision != "auto" and backend in ("torch", "auto"):
            check_supported(precision, device)
        self.name = model_identity(model)
        self.device = device
        self.batch_size = batch_size
        self._cache_dir = Path(cache_dir) if cache_dir else cache_home()
        if (cache_dir and precision == "auto") or backend != "torch":
            _check_cache_dir(self._cache_dir)  # before the model loads
        self._model = SentenceTransformer(_one_identity(image_model), device=device)
        self._text_model = SentenceTransformer(_one_identity(text_model), device=device) if text_model else self._model
        self._lock = threading.Lock()  # one batch at a time; callers queue here
        self._text_lock = threading.Lock()  # taken before _lock; all an exported text tower's query takes
        self.backend, self.precision = BASELINE  # the fingerprint and the probes below are taken in torch fp32
        self.text_backend, self.text_precision = BASELINE  # texts: as images, until text_tower chooses
        self.text_choice: TextChoice | None = None
        self._fast_text: FastTextEmbedder | None = None
        self._tuning_text = threading.Lock()  # one measurement of the text tower at a time
        self._torch_freed = False
        # Keyed by (option, whether it runs a pair's text model): a single model's texts share its runner.
        self._runners: dict[tuple[Option, bool], object] = {}
        self.max_text_tokens = self._text_token_limit()
        if self.max_text_tokens:
            self._text_model.max_seq_length = self.max_text_tokens
        if backend == "auto" and (
            precision != "auto" or device.startswith("cuda") or text_model or not compiles(self._model)
        ):
            backend = "torch"  # only torch runs these; auto's choice among backends is auto precision's
        self._pad_as_trained()
        self.image_size = self._image_input_size()
        self.logit_scale = self._logit_scale()
        self.dim = int(self.embed_texts(["warm-up"]).vectors.shape[1])
        self.fingerprint = fingerprint(self)
        self.precision_choice: Choice | None = None
        self._auto = (cache_dir, backend)  # what tune() measures with
        # The text tower is chosen apart, for one query's latency (text_tower.py), where auto chooses everything.
        self._tunes_text = (
            precision == "auto" and backend == "auto" and device == "cpu" and not text_model and compiles(self._model)
        )
        self._choose((backend, precision), cache_dir)

    def _choose(self, named: Option, cache_dir: Path | None) -> None:
        """Run as ``named`` (backend, precision), or as auto chooses: the image tower now, the text tower as
        remembered (else later: tune_text)."""
        chosen = named
        if named[1] == "auto":
            self.precision_choice = choose(self, cache_dir, named[0])
            log.info("%s", self.precision_choice.describe())
            chosen = (self.precision_choice.backend, self.precision_choice.precision)
        self._use(chosen)
        if self._tunes_text and (known := cached_text_choice(self._text_folder())):
            try:
                self._use_text(known)
            except Exception as exc:  # noqa: BLE001 - an extra gone, a folder removed, other weights: measured again
                log.warning("imgsearch: the text tower's remembered %s does not run here (%s)", known.label, exc)

    @property
    def needs_tuning(self) -> bool:
        """Whether auto chose among torch's settings only, so far: the exported graphs (onnx, openvino) are measured
        by ``tune()``, when a job is large enough to pay for building them, or by ``imgsearch tune``."""
        return self.precision_choice is not None and not self.precision_choice.complete

    def tune(self) -> Choice:
        """Measure every setting, exported graphs included (minutes: each is built once), and switch to the
        fastest that agrees with fp32. Remembered in the cache directory, as auto's other choices."""
        cache_dir, backend = self._auto
        if self.backend != "torch":
            raise RuntimeError("tune() measures against torch's weights, which a model running elsewhere has freed")
        self.precision_choice = choose(self, cache_dir, backend, complete=True)
        log.info("%s", self.precision_choice.describe())
        self._use((self.precision_choice.backend, self.precision_choice.precision))
        if self.text_choice is not None:
            self._use_text(self.text_choice)  # a torch choice for texts now runs where images do
        return self.precision_choice

    @property
    def needs_text_tuning(self) -> bool:
        """Whether the text tower's setting is still to be measured (``tune_text``): auto, and not yet measured."""
        return self._tunes_text and self.text_choice is None

    def tune_text(self) -> TextChoice | None:
        """Export the text tower (once per model), time each text setting on one query and switch texts to the
        fastest that agrees with fp32 (text_tower.py); remembered for this machine. None where auto does not
        choose the text tower (a setting named, CUDA, a pair of models)."""
        if not self._tunes_text:
            return None
        with self._tuning_text:
            if self._torch_freed:  # both towers run elsewhere, as remembered: no torch fp32 left to measure against
                return self.text_choice
            folder = self._text_folder()
            exported = self._export_text(folder)
            embedders = {BASELINE: self._text_embedding(BASELINE)}
            for option in text_candidates(cpu_flags(), exported):
                embedders[option] = self._text_embedding(option, folder / "text")
            pictures = self.encode(probe_pictures(self.image_size), BASELINE)
            in_use = {(self.backend, self.precision), (self.text_backend, self.text_precision)}
            choice = measure(embedders, pictures, finished=lambda option: option in in_use or self.forget(option))
            remember(folder, choice)
            log.info("imgsearch: %s", choice.describe())
            self._use_text(choice)
            return choice

    def _export_text(self, folder: Path) -> list[Option]:
        """The exported text settings in ``folder``, built first if they are not there for these weights."""
        if not exported_settings():
            return []
        try:
            return build(folder, self._model[0], self._text_facts(), guard=self._lock)
        except TextGraphError as exc:
            log.info("imgsearch: the text tower stays in torch: %s", exc)
            return []

    def _text_embedding(self, option: Option, exported: Path | None = None) -> Callable[[list[str]], np.ndarray]:
        """A function from texts to their vectors as ``option`` runs them: torch's through this model, another
        backend's through the exported text tower (made on first use)."""
        if option[0] == "torch":
            return lambda texts: self.encode(texts, option, texts=True)
        made: list[FastTextEmbedder] = []

        def embed(texts: list[str]) -> np.ndarray:
            made or made.append(FastTextEmbedder(exported, *option, self.fingerprint))
            return made[0].embed_texts(texts).vectors

        return embed

    def _text_folder(self) -> Path:
        return text_folder(self._cache_dir, self.name)

    def _text_facts(self) -> dict:
        """What FastTextEmbedder needs to know of this model without loading it."""
        return {
            "model": self.name,
            "dim": self.dim,
            "fingerprint": self.fingerprint,
            "max_text_tokens": self.max_text_tokens,
            "logit_scale": self.logit_scale,
            "fixed_length": getattr(getattr(self._model[0], "config", None), "model_type", None) in _FIXED_LENGTH_TEXT,
        }

    def _use_text(self, choice: TextChoice) -> None:
        """Run texts as ``choice`` says from now on. Where it is torch's and images run elsewhere, texts run there
        too (they agree with fp32 there as well): torch's copy of the weights can then be freed."""
        option: Option = (choice.backend, choice.precision)
        as_images = option[0] == "torch" and self.backend != "torch"
        if as_images:
            option = (self.backend, self.precision)
        fast = None
        if option[0] != "torch" and not as_images:
            fast = FastTextEmbedder(self._text_folder() / "text", *option, self.fingerprint)
        else:
            self._runner(option, texts=True)
        with self._text_lock, self._lock:
            self._fast_text, self.text_choice = fast, choice
            self.text_backend, self.text_precision = option
            keep = {(self.backend, self.precision), option}
            self._runners = {key: runner for key, runner in self._runners.items() if key[0] in keep}
        self._free_torch()

    def _use(self, chosen: Option) -> None:
        """Run the image tower as ``chosen`` from now on (and texts, unless text_tower chose for them), and free
        the runners of every other setting."""
        for texts in (False, True):
            self._runner(chosen, texts)
        with self._lock:
            if self.text_choice is None:
                self.text_backend, self.text_precision = chosen
            keep = {chosen, (self.text_backend, self.text_precision)}
            self._runners = {key: runner for key, runner in self._runners.items() if key[0] in keep}
            self.backend, self.precision = chosen
        self._free_torch()

    def _free_torch(self) -> None:
        if self.backend != "torch" and self.text_backend != "torch" and not self.needs_text_tuning:
            # The towers run in other runtimes now: torch's copy of the weights is freed (490 MB of resident memory
            # for ViT-B/32); the processor and tokenizer, all the runtime needs of it, stay. Kept while the text
            # tower is still to be measured against it.
            with self._lock:
                self._model.to("meta")
                self._torch_freed = True

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """Embed RGB images; returns (n, dim) float32 rows of unit length."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode(images)

    def embed_texts(self, texts: list[str]) -> TextEmbedding:
        """Embed texts, truncating each to the model's token limit (reported per text)."""
        # One hold of the locks: the setting texts run as (the text tower may switch meanwhile), the tokenizer's
        # shared truncation setting, and the run; an OpenVINO request runs one batch at a time too.
        with self._text_lock:  # not _lock: a query does not wait behind an indexing job's batch of images
            if self._fast_text is not None:
                return self._fast_text.embed_texts(texts)
            with self._lock:
                truncated = [
                    self._token_count(t) > self.max_text_tokens if self.max_text_tokens else False for t in texts
                ]
                vectors = self._run((self.text_backend, self.text_precision), texts, texts=True)
        return TextEmbedding(_unit_rows(vectors), truncated)

    def encode(self, inputs: list, option: Option | None = None, texts: bool = False) -> np.ndarray:
        """Rows of unit length in float32, whatever precision and backend the model ran in."""
        if texts and option is None:
            return self.embed_texts(inputs).vectors
        with self._lock:
            vectors = self._run(option or (self.backend, self.precision), inputs, texts)
        return _unit_rows(vectors)

    def _run(self, option: Option, inputs: list, texts: bool):
        """The model's output for ``inputs`` run as ``option``, not normalised (a torch tensor). Holds the lock."""
        import torch

        runner = self._runner(option, texts)
        if isinstance(runner, CompiledModel):
            return torch.from_numpy(runner.encode(inputs, self.batch_size))
        with autocast(option[1], self.device):
            return runner.encode(
                inputs,
                batch_size=self.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=False,
                show_progress_bar=False,
            )

    def _runner(self, option: Option, texts: bool = False):
        """What runs ``option`` for images, or for texts, made on first use: the model itself, its int8 copy, or
        its exported towers."""
        model = self._text_model if texts else self._model
        key = (option, model is not self._model)
        if key not in self._runners:
            backend, precision = option
            if backend != "torch":
                import torch

                folder = graph_folder(self._cache_dir, self.name, self.fingerprint, backend, precision)
                self._runners[key] = CompiledModel(
                    model, backend, precision, folder, torch.get_num_threads(), self.image_size
                )
            elif precision == "int8":
                self._runners[key] = quantized(model)
            else:
                self._runners[key] = model
        return self._runners[key]

    def forget(self, option: Option) -> None:
        """Free what runs ``option`` (a quantised copy, a runtime's session): the probe holds one setting at a time."""
        with self._lock:
            self._runners = {key: runner for key, runner in self._runners.items() if key[0] != option}

    def _pad_as_trained(self) -> None:
        """Pad every text to the model's token limit if it was trained on texts padded so (_FIXED_LENGTH_TEXT):
        sentence-transformers pads a batch to its longest text. Other backends' towers get the same tokens."""
        module = self._text_model[0]
        if getattr(getattr(module, "config", None), "model_type", None) not in _FIXED_LENGTH_TEXT:
            return
        text = {**module.processing_kwargs.get("text", {}), "padding": "max_length", "max_length": self.max_text_tokens}
        module.processing_kwargs = {**module.processing_kwargs, "text": text}

    def _token_count(self, text: str) -> int:
        tokenizer = self._text_model[0].tokenizer
        encoded = tokenizer(text, add_special_tokens=True, truncation=True, max_length=self.max_text_tokens + 1)
        return len(encoded["input_ids"])

    def _text_token_limit(self) -> int | None:
        """The text model's position limit, or the shorter length sentence-transformers' configuration sets (128
        for clip-ViT-B-32-multilingual-v1, whose DistilBERT has positions for 512)."""
        config = getattr(self._text_model[0], "config", None)
        text_config = getattr(config, "text_config", config)
        limits = [
            int(limit)
            for limit in (getattr(text_config, "max_position_embeddings", None), self._text_model.max_seq_length)
            if limit
        ]
        return min(limits) if limits else None

    def _logit_scale(self) -> float:
        """CLIP's learnt temperature, exp(logit_scale) (100 for OpenAI's CLIP; SigLIP's, without its bias); 100 if
        the model has none."""
        scale = getattr(getattr(self._model[0], "model", None), "logit_scale", None)
        try:
            return float(scale.detach().exp()) if scale is not None else 100.0
        except (AttributeError, TypeError, RuntimeError):
            return 100.0

    def _image_input_size(self) -> int:
        """The shortest side the model's processor resizes to (224 for ViT-B/32); for NaFlex SigLIP 2, which keeps
        the aspect ratio in at most max_num_patches patches, a square's side (256 for 256 patches of 16)."""
        processor = getattr(self._model[0], "processor", None)
        image_processor = getattr(processor, "image_processor", processor)
        for attribute in ("crop_size", "size"):
            size = getattr(image_processor, attribute, None)
            if size is None:
                continue
            values = [
                v
                for k in ("shortest_edge", "height", "width")
                if (v := (size.get(k) if isinstance(size, dict) else getattr(size, k, None)))
            ]
            if values:
                return int(max(values))
        patches, patch_size = (getattr(image_processor, name, None) for name in ("max_num_patches", "patch_size"))
        if patches and patch_size:
            return math.isqrt(int(patches)) * int(patch_size)
        return 224


def _unit_rows(vectors) -> np.ndarray:
    """A torch tensor of rows as float32 numpy rows of unit length."""
    import torch

    vectors = torch.nn.functional.normalize(vectors.float(), dim=-1)
    return np.ascontiguousarray(vectors.cpu().numpy(), dtype=np.float32)
