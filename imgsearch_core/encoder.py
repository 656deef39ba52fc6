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

import contextlib
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from imgsearch_core.backends import (
    BackendSetting,
    CompiledModel,
    check_backend,
    compiles,
    fast_settings,
    graph_folder,
    remove_graphs,
)
from imgsearch_core.errors import BackendNotSupportedError, ImgsearchError
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
from imgsearch_core.safe_files import private_dir

log = logging.getLogger(__name__)

# Text models published alone that are one half of a pair: the name means the pair.
_MULTILINGUAL_B32 = ("clip-ViT-B-32", "sentence-transformers/clip-ViT-B-32-multilingual-v1")
KNOWN_PAIRS: dict[str, tuple[str, str]] = {
    "clip-ViT-B-32-multilingual-v1": _MULTILINGUAL_B32,
    "sentence-transformers/clip-ViT-B-32-multilingual-v1": _MULTILINGUAL_B32,
}
OPEN_CLIP_HUB = "hf-hub:"  # open_clip's own prefix for a hub model: what model cards tell users to load
# Text towers trained on texts padded to one fixed length. SigLIP's text vector is its last position's, which is
# a pad token for all but the longest text of a batch padded to its longest: a text would get another vector in
# every batch, and none of them the one it was trained to give.
_FIXED_LENGTH_TEXT = {"siglip", "siglip2"}


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
    precision: str  # how the model runs: fp32, bf16, int8 or fp16 (imgsearch_core/precision.py)
    backend: str  # what runs it: torch, onnx or openvino (imgsearch_core/backends.py)
    logit_scale: float  # what zero-shot classification multiplies cosine similarities by (100 for CLIP)

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """(n, dim) float32 rows of unit length."""

    def embed_texts(self, texts: list[str]) -> TextEmbedding: ...


def load_embedder(settings) -> Embedder:
    """The model that ``settings.model`` names, on ``settings``' device, at ``settings.precision``, run by
    ``settings.backend``."""
    device = settings.resolved_device()
    options = dict(device=device, batch_size=settings.for_device(device).batch_size, precision=settings.precision,
                   cache_dir=settings.cache_dir, backend=settings.backend)
    loader = OpenClipEmbedder if is_open_clip(settings.model) else SentenceTransformerEmbedder
    try:
        return loader(settings.model, **options)
    except ImgsearchError:
        raise
    except Exception as exc:  # the libraries' many ways to fail on a name, a folder or a file in it
        raise ModelSettingError(f"model '{settings.model}' cannot be loaded: {type(exc).__name__}: "
                                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc


def _check_cache_dir(folder: Path) -> None:
    """Refuse another user's cache folder, or a link in its place (UnsafeFileError): what it holds decides what
    runs as the model. One that cannot be made (a read-only place) only costs the cache, and says so."""
    try:
        private_dir(folder)
    except OSError as exc:
        log.warning("imgsearch: cannot keep a cache in %s (%s); set IMGSEARCH_CACHE_DIR to a folder this user can "
                    "write. Until then auto measures again at every start, and no backend can build its graphs",
                    folder, exc)


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
        raise ModelSettingError(f"model '{model}': name a pair of models as IMAGE_MODEL+TEXT_MODEL, each a hub name "
                                "or a directory with no + in it")
    image, text = (side.strip() for side in sides)
    if is_open_clip(image) or is_open_clip(text):
        raise ModelSettingError(f"model '{model}': a pair is two sentence-transformers models; an open_clip model "
                                "has a text tower of its own")
    return image, text


def model_identity(model: str) -> str:
    """The name recorded with a collection: a local directory by absolute path, else the name; a pair as
    ``IMAGE+TEXT`` of the two (a known pair's name too)."""
    image, text = model_pair(model)
    if text is None:
        return _one_identity(image)
    sides = _one_identity(image), _one_identity(text)
    if any("+" in side for side in sides):
        raise ModelSettingError(f"model '{model}': a pair's models must have no + in their names or absolute paths "
                                f"({' and '.join(sides)}); move or link the folder elsewhere")
    return "+".join(sides)


def _one_identity(model: str) -> str:
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


def is_open_clip(model: str) -> bool:
    """Whether open_clip loads ``model``: a ``hf-hub:`` name, or a directory in open_clip's layout only. A
    directory that sentence-transformers loads too (many hub repositories hold both layouts) stays with it: it
    needs no extra."""
    folder = Path(model).expanduser()
    return model.startswith(OPEN_CLIP_HUB) or ((folder / "open_clip_config.json").is_file() and not any(
        (folder / name).is_file() for name in ("modules.json", "config.json")))


def fingerprint(embedder: Embedder) -> list[float]:
    """What ``embedder`` makes of a fixed text and a fixed picture (first 32 dimensions of each): recorded with
    a collection, it tells other weights under the same name apart."""
    size = embedder.image_size
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    pixels = np.stack([np.add.outer(ramp, ramp) / 2, np.outer(ramp, np.ones_like(ramp)),
                       np.outer(np.ones_like(ramp), ramp[::-1])], axis=-1).astype(np.uint8)
    image = embedder.embed_images([Image.fromarray(pixels, "RGB")])[0]
    text = embedder.embed_texts(["a photo of a red bicycle leaning on a wall"]).vectors[0]
    if image.shape != text.shape:
        raise ModelSettingError(f"model '{embedder.name}': its images get {image.shape[0]}-dimensional vectors and "
                                f"its texts {text.shape[0]}-dimensional ones; they cannot be compared")
    return [float(v) for v in np.concatenate([text[:32], image[:32]])]


class SentenceTransformerEmbedder:
    """A loaded sentence-transformers model, or a pair of them (``model_pair``). Create once; share between
    threads.

    ``precision`` is fp32, bf16, int8, fp16, or auto: the fastest of those that agrees with fp32, measured once
    and remembered in ``cache_dir`` (see imgsearch_core/precision.py). ``backend`` is torch, or onnx or openvino
    to run the two towers there (imgsearch_core/backends.py); auto then measures that backend's settings against
    torch fp32. ``backend`` auto with precision auto measures every installed backend's; with a precision named
    it runs torch. A pair runs on torch only. ``precision_choice`` says what auto measured."""

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 32, precision: PrecisionSetting = "fp32",
                 cache_dir: Path | None = None, backend: BackendSetting = "torch"):
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()

        image_model, text_model = model_pair(model)
        check_backend(backend, precision, device)  # a wrong setting fails before the model loads
        if text_model and backend not in ("torch", "auto"):
            raise BackendNotSupportedError(f"IMGSEARCH_BACKEND={backend} runs one model with an image and a text "
                                           f"tower; '{model}' is a pair of models: use torch")
        if precision != "auto" and backend in ("torch", "auto"):
            check_supported(precision, device)
        self.name = model_identity(model)
        self.device = device
        self.batch_size = batch_size
        self._cache_dir = Path(cache_dir) if cache_dir else Path("./data/cache")
        if (cache_dir and precision == "auto") or backend != "torch":
            _check_cache_dir(self._cache_dir)  # before the model loads
        self._model = SentenceTransformer(_one_identity(image_model), device=device)
        self._text_model = SentenceTransformer(_one_identity(text_model), device=device) if text_model else self._model
        self._lock = threading.Lock()  # one batch at a time; callers queue here
        self.backend, self.precision = BASELINE  # the fingerprint and the probes below are taken in torch fp32
        # Keyed by (option, whether it runs a pair's text model): a single model's texts share its runner.
        self._runners: dict[tuple[Option, bool], object] = {}
        self.max_text_tokens = self._text_token_limit()
        if self.max_text_tokens:
            self._text_model.max_seq_length = self.max_text_tokens
        if backend == "auto" and (precision != "auto" or device.startswith("cuda") or text_model
                                  or not compiles(self._model)):
            backend = "torch"  # only torch runs these; auto's choice among backends is auto precision's
        self._pad_as_trained()
        self.image_size = self._image_input_size()
        self.logit_scale = self._logit_scale()
        self.dim = int(self.embed_texts(["warm-up"]).vectors.shape[1])
        self.fingerprint = fingerprint(self)
        self.precision_choice: Choice | None = None
        chosen: Option = (backend, precision)
        if precision == "auto":
            self.precision_choice = self._choose_precision(cache_dir, backend)
            log.info("%s", self.precision_choice.describe())
            chosen = (self.precision_choice.backend, self.precision_choice.precision)
        for texts in (False, True):
            self._runner(chosen, texts)
        self._runners = {key: runner for key, runner in self._runners.items() if key[0] == chosen}  # the rest freed
        self.backend, self.precision = chosen
        if self.backend != "torch":
            # The towers run in another runtime now: torch's copy of the weights is freed (490 MB of resident memory
            # for ViT-B/32); the processor and tokenizer, all the runtime needs of it, stay.
            self._model.to("meta")

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """Embed RGB images; returns (n, dim) float32 rows of unit length."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._encode(images)

    def embed_texts(self, texts: list[str]) -> TextEmbedding:
        """Embed texts, truncating each to the model's token limit (reported per text)."""
        with self._lock:  # a tokenizer's truncation setting is shared: counting must not overlap an encode
            truncated = [self._token_count(t) > self.max_text_tokens if self.max_text_tokens else False for t in texts]
        return TextEmbedding(self._encode(texts, texts=True), truncated)

    def _encode(self, inputs: list, option: Option | None = None, texts: bool = False) -> np.ndarray:
        """Rows of unit length in float32, whatever precision and backend the model ran in."""
        import torch

        backend, precision = option or (self.backend, self.precision)
        with self._lock:
            runner = self._runner((backend, precision), texts)
            if isinstance(runner, CompiledModel):
                vectors = torch.from_numpy(runner.encode(inputs, self.batch_size))
            else:
                with autocast(precision, self.device):
                    vectors = runner.encode(inputs, batch_size=self.batch_size, convert_to_tensor=True,
                                            normalize_embeddings=False, show_progress_bar=False)
        vectors = torch.nn.functional.normalize(vectors.float(), dim=-1)
        return np.ascontiguousarray(vectors.cpu().numpy(), dtype=np.float32)

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
                self._runners[key] = CompiledModel(model, backend, precision, folder, torch.get_num_threads(),
                                                   self.image_size)
            elif precision == "int8":
                self._runners[key] = quantized(model)
            else:
                self._runners[key] = model
        return self._runners[key]

    def _choose_precision(self, cache_dir: Path | None, backend: str) -> Choice:
        """auto: the cached choice for this model, backend, device and machine, else a probe of each candidate
        against torch fp32."""
        try:
            cache = ChoiceCache(cache_dir) if cache_dir else None
        except OSError:  # a folder this user cannot make: said by _check_cache_dir; measured at every start
            cache = None
        key = ChoiceCache.key(self.name, self.fingerprint, self.device, self.batch_size, backend)
        if cache and (known := cache.get(key)):
            return known
        if backend == "auto":  # every setting this CPU runs well, in torch and in each installed backend
            options = fast_settings(cpu_flags())[1:]
        else:
            options = [(backend, precision) for precision in candidates(self.device, cpu_flags(), backend)]
        if not options:
            return Choice("fp32", [])
        with cache.measuring() if cache else contextlib.nullcontext():
            if cache and (known := cache.get(key)):
                return known  # measured by the process this one waited for
            return self._probe(options, backend, cache, key)

    def _probe(self, options: list[Option], backend: str, cache: ChoiceCache | None, key: str) -> Choice:
        """Time torch fp32 and each option, keep the fastest that agrees, and remember it in ``cache``."""
        log.warning("imgsearch: measuring which %s runs this model fastest (once per model and machine)",
                    "backend and precision" if backend == "auto" else "precision")
        # Graphs this probe exports for settings it then does not choose are removed again: hundreds of MB each.
        new_graphs = {option: folder for option in options if option[0] != "torch"
                      if not (folder := graph_folder(self._cache_dir, self.name, self.fingerprint, *option)).exists()}
        pictures = probe_pictures(self.image_size)
        trials = run_probe(lambda option: self._encode(pictures, option),
                           lambda option: self._encode(PROBE_TEXTS, option, texts=True), options,
                           finished=self._forget)
        best = pick(trials)
        for option, folder in new_graphs.items():
            if option != (best.backend, best.precision):
                remove_graphs(folder)
        choice = Choice(best.precision, trials, backend=best.backend)
        if cache:
            cache.put(key, choice)
        return choice

    def _forget(self, option: Option) -> None:
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
        limits = [int(limit) for limit in (getattr(text_config, "max_position_embeddings", None),
                                           self._text_model.max_seq_length) if limit]
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
            values = [v for k in ("shortest_edge", "height", "width")
                      if (v := (size.get(k) if isinstance(size, dict) else getattr(size, k, None)))]
            if values:
                return int(max(values))
        patches, patch_size = (getattr(image_processor, name, None) for name in ("max_num_patches", "patch_size"))
        if patches and patch_size:
            return math.isqrt(int(patches)) * int(patch_size)
        return 224


class OpenClipEmbedder:
    """A loaded open_clip model (the [openclip] extra): ``hf-hub:org/name`` or a directory in open_clip's layout.
    Create once; share between threads.

    Runs on torch only, in fp32, bf16, int8 or fp16 as given; ``auto`` runs fp32 without measuring."""

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 32, precision: PrecisionSetting = "fp32",
                 cache_dir: Path | None = None, backend: BackendSetting = "torch"):
        try:
            import open_clip
        except ImportError as exc:
            raise ModelSettingError(f"model '{model}' is an open_clip model: pip install 'imgsearch[openclip]'") from exc

        if backend not in ("torch", "auto"):
            raise BackendNotSupportedError(f"IMGSEARCH_BACKEND={backend} runs sentence-transformers models; "
                                           f"'{model}' is an open_clip model: use torch")
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

        return self._encode(images, lambda batch: self._model.encode_image(
            torch.stack([self._preprocess(image) for image in batch]).to(self.device)))

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
            batches = [run(inputs[start:start + self.batch_size]).float()
                       for start in range(0, len(inputs), self.batch_size)]
        vectors = torch.nn.functional.normalize(torch.cat(batches), dim=-1)
        return np.ascontiguousarray(vectors.cpu().numpy(), dtype=np.float32)
