"""How closely a faster setting's embeddings agree with fp32's, measured on probe pictures and texts."""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)


# Where `auto` may use a setting: on the probe, its embeddings agree with fp32's at least this well. The
# minimum cosine between a picture's (or text's) fp32 and fast embedding; and the mean share of the nearest
# probe pictures that stay the same, for each picture (image -> image) and each text (text -> image).
AGREEMENT = {"min_cosine": 0.99, "neighbour_overlap": 0.95}


PROBE_IMAGES = 24


PROBE_NEIGHBOURS = 5


PROBE_TEXTS = [
    "a photo of a dog",
    "a red bicycle leaning on a wall",
    "mountains at sunset",
    "a bowl of fruit",
    "a crowded street at night",
    "a baby laughing",
    "a white cat on a sofa",
    "a map of the city",
]


# The texts the text tower's settings are measured on (imgsearch/model/text_tower.py): queries as people type them,
# the probe's texts, a code, and one longer than CLIP's 77 tokens (truncated as the model truncates it).
TEXT_PROBE = [
    "a red bicycle leaning on a wall",
    "snow on a mountain at dawn",
    "a cat asleep on a sofa",
    "microscope slide of blood cells",
    "a blue car in the rain",
    "two dogs playing on a beach",
    "a bowl of fruit on a table",
    "city skyline at night",
    "an old hand-drawn map",
    "a yellow flower",
    *PROBE_TEXTS,
    "receipt 0x80070005",
    "Straße im Regen, ein Café",
    " ".join(["a very long description of a holiday photograph with many people and boats"] * 12),
]


TEXT_NEIGHBOURS = 10  # text -> image neighbours compared for the text tower's gate


def top_k_overlap(
    queries: np.ndarray,
    pool: np.ndarray,
    other_queries: np.ndarray,
    other_pool: np.ndarray,
    k: int,
    same_set: bool = False,
) -> float:
    """Mean share of each query's k nearest pool rows (by cosine) that two embeddings of the same queries and
    pool agree on. ``same_set``: the queries are the pool, and a row is not its own neighbour."""
    k = min(k, len(pool) - int(same_set))
    if k < 1:
        return 1.0

    def nearest(q, p):
        scores = q @ p.T
        if same_set:
            np.fill_diagonal(scores, -np.inf)
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]

    ours, theirs = nearest(queries, pool), nearest(other_queries, other_pool)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ours, theirs)]))


def min_cosine(reference: np.ndarray, other: np.ndarray) -> float:
    """The lowest cosine between matching rows of two sets of unit vectors."""
    return float(np.sum(reference.astype(np.float64) * other.astype(np.float64), axis=1).min())


def agreement(
    images: np.ndarray, texts: np.ndarray, other_images: np.ndarray, other_texts: np.ndarray, k: int = PROBE_NEIGHBOURS
) -> tuple[float, float]:
    """(min cosine, neighbour overlap): how well a second embedding of the same pictures and texts agrees
    with the first; the overlap is the lower of image -> image and text -> image."""
    cosine = min(min_cosine(images, other_images), min_cosine(texts, other_texts))
    overlap = min(
        top_k_overlap(images, images, other_images, other_images, k, same_set=True),
        top_k_overlap(texts, images, other_texts, other_images, k),
    )
    return cosine, overlap


def photo_like(rng: np.random.Generator, grid: tuple[int, int], size: tuple[int, int], grain: float) -> Image.Image:
    """A picture that decodes and embeds like a photo: a ``grid`` of random colours smoothed to ``size``
    (width, height), with grain."""
    from PIL import Image

    small = rng.integers(0, 256, (*grid, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
    noise = rng.normal(0, grain, field.shape)
    return Image.fromarray(np.clip(field + noise, 0, 255).astype(np.uint8), "RGB")


def probe_pictures(size: int, count: int = PROBE_IMAGES, seed: int = 1234) -> list[Image.Image]:
    """The probe's photo-like pictures, the same every time (another ``seed``: others, as alike)."""
    rng = np.random.default_rng(seed)
    return [photo_like(rng, (4, 4), (size, size), grain=12) for _ in range(count)]
