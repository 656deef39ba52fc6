"""Score models on labelled images: embed (or take from the cache), then compute evaluation/metrics.py's metrics."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgsearch.errors import ImageDecodeError
from imgsearch.evaluation import metrics
from imgsearch.evaluation.data import Captions, ClassFolder, EvaluationDataError
from imgsearch.media.images import decode_image
from imgsearch.media.safe_files import UnsafeFileError, private_dir, read_regular
from imgsearch.model.embedder import Embedder
from imgsearch.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_TEMPLATES = ("a photo of a {}.",)
CACHE_FORMAT = 1


@dataclass
class ModelResult:
    model: str
    dim: int
    precision: str
    metrics: dict[str, float] = field(default_factory=dict)
    embedded: int = 0  # images this run embedded
    cached: int = 0  # images taken from the cache
    skipped: dict[str, str] = field(default_factory=dict)  # path -> why it could not be read
    seconds: float = 0.0


class VectorCache:
    """The image vectors one model made, kept in ``folder`` between runs, keyed by file path, size and mtime.

    The folder is named after the model's identity and weights fingerprint, so another model, or the same name
    with other weights, never reads these vectors."""

    def __init__(self, cache_dir: Path, embedder: Embedder):
        key = json.dumps(
            [
                CACHE_FORMAT,
                embedder.name,
                [round(v, 5) for v in embedder.fingerprint],
                embedder.precision,
                embedder.backend,
            ]
        )
        self.file = Path(cache_dir) / "evaluation" / hashlib.sha256(key.encode()).hexdigest()[:20] / "vectors.npz"
        self.vectors: dict[str, np.ndarray] = {}
        try:
            for level in (self.file.parent.parent.parent, self.file.parent.parent, self.file.parent):
                private_dir(level)  # this user's alone (UnsafeFileError otherwise): its vectors decide the scores
        except OSError as exc:
            log.warning("evaluation cache %s cannot be made (%s); embedding without it", self.file.parent, exc)
            self.file = None
            return
        if self.file.exists():
            try:
                with np.load(self.file) as stored:
                    self.vectors = dict(zip(stored["keys"].tolist(), stored["vectors"]))
            except (OSError, ValueError, KeyError) as exc:  # a damaged cache is rebuilt, never trusted
                log.warning("evaluation cache %s unreadable (%s); embedding again", self.file, exc)

    @staticmethod
    def key(path: str) -> str:
        stat = os.stat(path)
        return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"

    def save(self) -> None:
        """Written to a temporary file and renamed into place: a killed run leaves the old cache or the new one."""
        if self.file is None:
            return
        keys = list(self.vectors)
        fd, temporary = tempfile.mkstemp(suffix=".tmp.npz", dir=self.file.parent)  # O_EXCL: never through a link
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(
                    handle,
                    keys=np.array(keys, dtype=str),
                    vectors=np.stack([self.vectors[k] for k in keys]) if keys else np.zeros((0, 0), np.float32),
                )
            os.replace(temporary, self.file)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def image_paths(folder: ClassFolder | None, captions: Captions | None) -> list[str]:
    """Every image the data names, once each, in order."""
    return list(dict.fromkeys((folder.paths if folder else []) + (captions.paths if captions else [])))


def embed_images(
    embedder: Embedder,
    paths: list[str],
    cache: VectorCache,
    result: ModelResult,
    settings: Settings,
    progress: Callable[[int], None] = lambda n: None,
) -> dict[str, np.ndarray]:
    """Vectors of ``paths`` that could be read, by path: from the cache, else read and decoded as the indexer
    reads and decodes them (regular files up to IMGSEARCH_MAX_FILE_BYTES; the labelled files may lie anywhere)
    and embedded ``settings.batch_size`` at a time. Unreadable files are listed in ``result.skipped``."""
    batch_size = settings.batch_size
    found: dict[str, np.ndarray] = {}
    pending: list[tuple[str, str]] = []  # (path, cache key)
    for path in paths:
        try:
            key = cache.key(path)
        except OSError as exc:
            result.skipped[path] = exc.strerror or str(exc)
            progress(1)
            continue
        if key in cache.vectors:
            found[path] = cache.vectors[key]
            result.cached += 1
            progress(1)
        else:
            pending.append((path, key))
    for start in range(0, len(pending), batch_size):
        batch, images = [], []
        for path, key in pending[start : start + batch_size]:
            try:
                data = read_regular(path, [os.sep], settings.max_file_bytes)
                images.append(
                    decode_image(
                        data, path, embedder.image_size, settings.max_image_pixels, settings.max_decoded_bytes
                    ).image
                )
                batch.append((path, key))
            except (OSError, UnsafeFileError, ImageDecodeError) as exc:
                result.skipped[path] = str(exc)
        vectors = embedder.embed_images(images)
        for (path, key), vector in zip(batch, vectors):
            found[path] = cache.vectors[key] = vector.astype(np.float32)
        result.embedded += len(batch)
        progress(len(pending[start : start + batch_size]))
    if pending:
        cache.save()
    return found


def evaluate_model(
    embedder: Embedder,
    folder: ClassFolder | None,
    captions: Captions | None,
    settings: Settings,
    templates: Iterable[str] = DEFAULT_TEMPLATES,
    knn_k: int = 1,
    progress: Callable[[int], None] = lambda n: None,
) -> ModelResult:
    """Every metric the data allows, for one loaded model; image vectors cached in ``settings.cache_dir``."""
    started = time.perf_counter()
    result = ModelResult(embedder.name, embedder.dim, embedder.precision)
    cache = VectorCache(settings.cache_dir, embedder)
    vectors = embed_images(embedder, image_paths(folder, captions), cache, result, settings, progress=progress)
    templates = list(templates)
    if folder is not None:
        kept = [i for i, path in enumerate(folder.paths) if path in vectors]
        if len({folder.labels[i] for i in kept}) < 2:
            raise EvaluationDataError("fewer than 2 classes have a readable image: " + _why(result))
        images = np.stack([vectors[folder.paths[i]] for i in kept])
        labels = np.asarray([folder.labels[i] for i in kept])
        prompts = [template.format(name) for name in folder.class_names for template in templates]
        prompt_vectors = embedder.embed_texts(prompts).vectors.reshape(len(folder.class_names), len(templates), -1)
        result.metrics.update(metrics.zero_shot(images, labels, metrics.class_vectors(prompt_vectors)))
        result.metrics[f"knn@{knn_k}"] = metrics.knn_accuracy(images, labels, knn_k)
    if captions is not None:
        readable = {i for i, path in enumerate(captions.paths) if path in vectors}
        if not readable:
            raise EvaluationDataError("no captioned image is readable: " + _why(result))
        order = sorted(readable)
        renumber = {old: new for new, old in enumerate(order)}
        rows = [j for j, image in enumerate(captions.images) if image in readable]
        images = np.stack([vectors[captions.paths[i]] for i in order])
        texts = embedder.embed_texts([captions.captions[j] for j in rows]).vectors
        result.metrics.update(
            metrics.retrieval(images, texts, np.asarray([renumber[captions.images[j]] for j in rows]))
        )
    result.seconds = round(time.perf_counter() - started, 2)
    return result


def _why(result: ModelResult) -> str:
    return "; ".join(f"{path}: {why}" for path, why in list(result.skipped.items())[:3]) or "no images"
