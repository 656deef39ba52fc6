"""The models imgsearch knows by name, for ``imgsearch models``: what each is good for, its size and licence, and
how fast it runs here, as measured by ``bench/model_speed.py``. Any other name or directory works too; these are
the starting points worth evaluating (``imgsearch evaluate``) on your own images.

Speed depends on the architecture only, not on the weights, so the bench times one random-weight model per
architecture and each preset names the one it has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPEED_FILE = Path(__file__).resolve().parent / "preset_speeds.json"  # package data, written by bench/model_speed.py


@dataclass(frozen=True)
class Preset:
    name: str  # what IMGSEARCH_MODEL takes
    family: str
    dim: int
    input_size: int  # pixels per side the model looks at
    good_for: str
    licence: str
    architecture: str  # key of bench/model_speed.py's timings: the towers' sizes
    extra: str = ""  # the optional dependency it needs, if any


PRESETS = [
    Preset("clip-ViT-B-32", "CLIP", 512, 224, "general photos; the fastest, the default", "MIT", "vit-b-32"),
    Preset(
        "clip-ViT-B-16", "CLIP", 512, 224, "general photos, finer detail than B/32 at 4x the compute", "MIT", "vit-b-16"
    ),
    Preset("clip-ViT-L-14", "CLIP", 768, 224, "general photos, the best OpenAI CLIP; slow on a CPU", "MIT", "vit-l-14"),
    Preset(
        "clip-ViT-B-32-multilingual-v1",
        "CLIP pair",
        512,
        224,
        "queries in 50+ languages (a multilingual text model paired with clip-ViT-B-32 for images)",
        "Apache-2.0",
        "vit-b-32+multilingual",
    ),
    Preset(
        "google/siglip-base-patch16-224",
        "SigLIP",
        768,
        224,
        "general photos; beats CLIP at the same size",
        "Apache-2.0",
        "siglip-b-16",
    ),
    Preset(
        "google/siglip2-base-patch16-224",
        "SigLIP 2",
        768,
        224,
        "general photos, multilingual queries; the newest of the base-size models",
        "Apache-2.0",
        "siglip-b-16",
    ),
    Preset(
        "patrickjohncyh/fashion-clip", "CLIP", 512, 224, "clothing and product catalogues", "see model card", "vit-b-32"
    ),
    Preset("vinid/plip", "CLIP", 512, 224, "pathology slides (histology)", "see model card", "vit-b-32"),
    Preset(
        "flaviagiammarino/pubmed-clip-vit-base-patch32",
        "CLIP",
        512,
        224,
        "radiology and medical figures",
        "see model card",
        "vit-b-32",
    ),
    Preset(
        "flax-community/clip-rsicd-v2", "CLIP", 512, 224, "aerial and satellite images", "see model card", "vit-b-32"
    ),
    Preset(
        "geolocal/StreetCLIP",
        "CLIP",
        768,
        336,
        "street-level photos: places, countries, cities",
        "CC-BY-NC-4.0 (non-commercial)",
        "vit-l-14-336",
    ),
    Preset(
        "hf-hub:imageomics/bioclip",
        "open_clip",
        512,
        224,
        "organisms and specimens (the tree of life)",
        "MIT",
        "vit-b-16",
        extra="openclip",
    ),
]


def measured_speeds(path: Path = SPEED_FILE) -> dict[str, Any] | None:
    """What bench/model_speed.py last wrote: {"measured": date, "cpu": ..., "architectures": {key: {img_s,
    text_ms}}}; None if it never ran here or its file is unreadable."""
    try:
        speeds = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return speeds if isinstance(speeds, dict) and isinstance(speeds.get("architectures"), dict) else None


def table(presets: list[Preset], speeds: dict[str, Any] | None) -> str:
    """The presets as an aligned text table, with the measured speeds where there are some."""
    timings = (speeds or {}).get("architectures", {})
    header = ["model", "family", "dim", "input", "img/s", "text ms", "good for", "licence"]
    rows = []
    for preset in presets:
        timing = timings.get(preset.architecture) or {}
        rows.append(
            [
                preset.name + (f" [{preset.extra}]" if preset.extra else ""),
                preset.family,
                str(preset.dim),
                str(preset.input_size),
                _figure(timing.get("img_s"), "{:.1f}"),
                _figure(timing.get("text_ms"), "{:.0f}"),
                preset.good_for,
                preset.licence,
            ]
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 2)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + "  ".join(row[-2:])
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def _figure(value: Any, pattern: str) -> str:
    return pattern.format(value) if isinstance(value, (int, float)) else "-"
