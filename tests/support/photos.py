"""Photos and query texts to measure agreement and speed on, made from what installed packages ship.

- ``make_photos``: JPEGs, each a random crop of one of the real photographs that scikit-learn (a dependency of
  sentence-transformers) and matplotlib ship, flipped, turned, recoloured and brightened at random, with grain.
  ``bench/index_throughput.py`` writes 12 MP ones; the agreement gate in ``tests/test_precision.py`` small ones.
- ``QUERY_TEXTS``: the texts whose nearest photos two settings of a model are compared on.
- ``write_photo``, ``write_exif_photo``, ``write_photo_set``: small pictures the tiny test model tells apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def real_photographs() -> list[Image.Image]:
    """The photographs that installed packages ship: scikit-learn's china.jpg and flower.jpg (sentence-transformers
    depends on scikit-learn) and matplotlib's grace_hopper.jpg ([eval] extra); those found."""
    import importlib.util

    found = []
    for package, relative in (
        ("sklearn", "datasets/images/china.jpg"),
        ("sklearn", "datasets/images/flower.jpg"),
        ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ):
        spec = importlib.util.find_spec(package)
        path = Path(spec.origin).parent / relative if spec and spec.origin else None
        if path and path.is_file():
            found.append(Image.open(path).convert("RGB"))
    return found


def make_photos(folder: Path, count: int, size=(4000, 3000), kind: str = "crops") -> list[Path]:
    """``count`` JPEGs of ``size`` (12 MP by default, ~2 MB at quality 90, as a camera's), the same each time.
    ``crops``: each a random crop of a real photograph, flipped, turned, recoloured and brightened at random, so
    that the set is as varied as a photo library's scenes (top-10 neighbours are then not near ties); ``fields``:
    smooth random colour fields, alike enough that any rounding reorders their neighbours. Both get the same
    grain, which gives the JPEG its size."""
    from PIL import ImageEnhance, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sources = real_photographs() if kind == "crops" else []
    if kind == "crops" and not sources:
        raise SystemExit("--photos crops needs scikit-learn or matplotlib (make install has both); or --photos fields")
    paths = []
    for i in range(count):
        if sources:
            source = sources[i % len(sources)]
            scale = rng.uniform(0.3, 1.0)
            width, height = int(source.width * scale), int(source.height * scale)
            left, top = rng.integers(0, source.width - width + 1), rng.integers(0, source.height - height + 1)
            base = source.crop((left, top, left + width, top + height))
            base = ImageOps.mirror(base) if rng.random() < 0.5 else base
            base = ImageEnhance.Color(base).enhance(rng.uniform(0.3, 1.7))
            base = ImageEnhance.Brightness(base).enhance(rng.uniform(0.6, 1.4))
            base = base.rotate(float(rng.choice([0, 0, 90, 180])), expand=True).resize(size, Image.Resampling.BICUBIC)
        else:
            small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            base = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
        grain = Image.effect_noise(size, 24).convert("RGB")
        photo = Image.blend(base, grain, 0.15)
        path = folder / f"photo_{i:04d}.jpg"
        photo.save(path, quality=90)
        paths.append(path)
    return paths


# 48 texts: with random weights a text's scores over the photos are close together, so its top 10 is decided by
# small margins; 8 texts (the list before 2026-12-04) measured the overlap in steps of 1/80 and moved by 0.025
# between two builds of the same graph.
QUERY_TEXTS = [
    "a photo of a dog",
    "a red bicycle leaning on a wall",
    "mountains at sunset",
    "a bowl of fruit",
    "a crowded street at night",
    "a baby laughing",
    "a white cat on a sofa",
    "a map of the city",
    "a blue sky",
    "green grass",
    "an old building",
    "a plate of food",
    "a woman in uniform",
    "a pagoda by a lake",
    "a yellow flower",
    "a close-up of petals",
    "a portrait of an officer",
    "a temple roof",
    "trees in spring",
    "a black and white photo",
    "a person smiling",
    "a garden",
    "a boat on the water",
    "a snowy mountain",
    "a car parked on the road",
    "children playing football",
    "a cup of coffee",
    "a bookshelf",
    "a beach with palm trees",
    "a city skyline",
    "a bird in a tree",
    "a horse in a field",
    "a wedding photo",
    "a birthday cake",
    "a train station",
    "a forest path",
    "a bridge over a river",
    "a kitchen",
    "a computer on a desk",
    "an airplane in the sky",
    "fireworks",
    "a rainy window",
    "a cow",
    "an orange",
    "a red door",
    "a statue",
    "a church",
    "a dark room",
]


def write_photo(path: Path, seed: int, size: tuple[int, int] = (96, 64), fmt: str | None = None) -> Path:
    """A random but distinct picture: coloured blocks, so the tiny model tells pictures apart."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((size[1] // 4, size[0] // 6, 1), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def write_exif_photo(
    path: Path, seed: int, taken: str = "", make: str = "", model: str = "", gps: tuple | None = None
) -> Path:
    """A JPEG as a camera writes it: ``taken`` ("2019:06:01 09:30:00") as DateTimeOriginal, Make, Model and
    ``gps`` = (lat ref, (d, m, s), lon ref, (d, m, s))."""
    rng = np.random.default_rng(seed)
    pixels = np.kron(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8), np.ones((16, 16, 1), dtype=np.uint8))
    exif = Image.Exif()
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken
    if gps:
        exif.get_ifd(0x8825).update(dict(zip((1, 2, 3, 4), gps)))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, "JPEG", exif=exif.tobytes())
    return path


def write_photo_set(root: Path) -> Path:
    for i in range(6):
        write_photo(root / f"photo{i}.png", seed=i)
    for i in range(6, 10):
        write_photo(root / "trip" / f"photo{i}.jpg", seed=i)
    return root
