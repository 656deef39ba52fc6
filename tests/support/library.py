"""A small photo library of real photographs with copies, crops, a sidecar and unrelated pictures: relevance's
ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import sklearn
from PIL import Image

SAMPLES = Path(sklearn.__file__).parent / "datasets" / "images"


ORIGINAL = "paris 2019/IMG_2041.jpg"


COPIES = ["misc/china_q40.jpg", "misc/china.png", "misc/china.webp", "misc/china_rotated.jpg"]


def write_library(root: Path) -> Path:
    """The photo, four copies of it, the other photo with crops and a sidecar, and 40 other pictures."""
    china = Image.open(SAMPLES / "china.jpg").convert("RGB")
    flower = Image.open(SAMPLES / "flower.jpg").convert("RGB")
    (root / "paris 2019").mkdir(parents=True)
    (root / "misc").mkdir()
    china.save(root / ORIGINAL, quality=95)
    china.save(root / "misc/china_q40.jpg", quality=40)  # re-encoded
    china.save(root / "misc/china.png")  # format-converted
    china.save(root / "misc/china.webp")
    turned = Image.Exif()
    turned[0x0112] = 6  # stored turned a quarter, shown upright: how cameras and phones rotate
    china.rotate(90, expand=True).save(root / "misc/china_rotated.jpg", exif=turned.tobytes(), quality=95)
    flower.save(root / "misc/flower.jpg")
    (root / "misc/flower.txt").write_text("a pink dahlia from grandmother's garden")
    rng = np.random.default_rng(0)
    for i in range(4):
        w = int(rng.integers(200, 400))
        h, x, y = int(w * 0.7), int(rng.integers(0, 640 - w)), int(rng.integers(0, 427 - int(w * 0.7)))
        flower.crop((x, y, x + w, y + h)).save(root / f"misc/flower_crop{i}.jpg")
    for seed in range(40):
        blocks = np.random.default_rng(seed).integers(0, 256, (4, 6, 3), dtype=np.uint8)
        Image.fromarray(np.kron(blocks, np.ones((64, 64, 1), dtype=np.uint8))).save(root / f"misc/block{seed:02d}.png")
    return root
