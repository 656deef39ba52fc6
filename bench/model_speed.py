"""How fast each preset's architecture runs on this machine, for ``imgsearch models``.

For every architecture a preset names (imgsearch/model_presets.py) this builds a random-weight model of the
real sizes (speed depends on the sizes, not on the weights), loads it through imgsearch's own embedder, and
measures, in one run:
- img/s: images per second through the model alone (decoded pictures at its input size, fp32, one batch after
  another), and the same as a ratio to ViT-B/32, the default;
- text ms: the median time to embed one short query, as a search does.

    python bench/model_speed.py [--only vit-b-32,siglip-b-16] [--seconds 4]

Writes imgsearch/model/preset_speeds.json (package data), which ``imgsearch models`` shows with the date and CPU.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import machine_info, print_machine, write_result  # noqa: E402
from tests.support.models import build_local_clip, build_local_siglip, build_local_text_tower  # noqa: E402

QUERY = "a red bicycle leaning on a wall"


def builders(folder: Path) -> dict[str, Callable[[], str]]:
    """Architecture -> a function that builds it and returns the model setting that loads it."""

    def clip(size: str) -> Callable[[], str]:
        return lambda: str(build_local_clip(folder / size, size))

    def pair() -> str:
        images = build_local_clip(folder / "vit-b-32-images", "vit-b-32")
        texts = build_local_text_tower(folder / "multilingual-text", 512, size="distilbert-base")
        return f"{images}+{texts}"

    return {
        "vit-b-32": clip("vit-b-32"),
        "vit-b-16": clip("vit-b-16"),
        "vit-l-14": clip("vit-l-14"),
        "vit-l-14-336": clip("vit-l-14-336"),
        "vit-b-32+multilingual": pair,
        "siglip-b-16": lambda: str(build_local_siglip(folder / "siglip-b-16", size="base")),
    }


def measure(model: str, seconds: float, batch_size: int) -> dict:
    from PIL import Image

    from imgsearch.model.loading import load_embedder
    from imgsearch.settings import Settings

    settings = Settings(
        _env_file=None,
        model=model,
        device="cpu",
        precision="fp32",
        batch_size=batch_size,
        cache_dir=Path(tempfile.gettempdir()) / "imgsearch-model-speed",
    )
    embedder = load_embedder(settings)
    side = embedder.image_size
    pictures = [Image.effect_noise((side, side), 64 + i).convert("RGB") for i in range(batch_size)]
    embedder.embed_images(pictures[:2])  # warm-up
    images, started = 0, time.perf_counter()
    while images == 0 or time.perf_counter() - started < seconds:
        embedder.embed_images(pictures)
        images += len(pictures)
    img_s = images / (time.perf_counter() - started)
    embedder.embed_texts([QUERY])
    text_times = []
    for _ in range(15):
        started = time.perf_counter()
        embedder.embed_texts([QUERY])
        text_times.append((time.perf_counter() - started) * 1000)
    return {
        "img_s": round(img_s, 2),
        "text_ms": round(statistics.median(text_times), 1),
        "dim": embedder.dim,
        "input_size": side,
    }


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated architectures (default: all)")
    parser.add_argument("--seconds", type=float, default=4.0, help="time spent embedding images per architecture")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "imgsearch" / "model" / "preset_speeds.json")
    args = parser.parse_args()
    machine = machine_info()
    print_machine(machine)
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="model-speed-") as folder:
        known = builders(Path(folder))
        wanted = args.only.split(",") if args.only else list(known)
        for architecture in wanted:
            model = known[architecture]()
            results[architecture] = measure(model, args.seconds, args.batch_size)
            base = results.get("vit-b-32")
            ratio = f"  {results[architecture]['img_s'] / base['img_s']:.2f}x of vit-b-32" if base else ""
            print(
                f"{architecture:22s} {results[architecture]['img_s']:7.2f} img/s  "
                f"{results[architecture]['text_ms']:6.1f} ms per query{ratio}",
                flush=True,
            )
    write_result(
        args.out,
        {
            "measured": datetime.date.today().isoformat(),
            "machine": machine,
            "threads": torch.get_num_threads(),
            "precision": "fp32",
            "batch_size": args.batch_size,
            "architectures": results,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
