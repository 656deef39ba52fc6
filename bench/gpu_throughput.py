"""GPU ceilings for ViT-B/32 indexing: the image tower alone, and JPEG decoding three ways, side by side.

Not yet the end-to-end figure (JPEG files to rows in Milvus): the GPU machines lent to this project have no
Milvus Lite and reach no package index. What it measures, on one CUDA device:

- the image tower (random-weight ViT-B/32, the real compute) in fp32 and fp16 autocast, on 224x224 tensors
  already on the device, at several batch sizes;
- decoding 12 MP JPEGs to 224-pixel RGB: Pillow draft decoding on all CPU cores (imgsearch's decoder), and
  nvJPEG on the GPU through torchvision.io.decode_jpeg (full resolution, then resized on the device).

Usage: python bench/gpu_throughput.py [--images 256] [--out bench/results/gpu_throughput.json]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from machine import machine_info, print_machine, write_result  # noqa: E402

if TYPE_CHECKING:
    import torch
    from transformers import CLIPVisionModelWithProjection


def tower(device: str) -> CLIPVisionModelWithProjection:
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=32,
        projection_dim=512,
    )
    torch.manual_seed(0)
    return CLIPVisionModelWithProjection(config).to(device).eval()


def time_tower(
    model: CLIPVisionModelWithProjection, device: str, batch: int, dtype: torch.dtype, repeats: int = 20
) -> float:
    import torch

    pixels = torch.randn(batch, 3, 224, 224, device=device)
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        for _ in range(3):
            model(pixel_values=pixels)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            model(pixel_values=pixels)
        torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - started)


def photo(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((4000, 3000), Image.BICUBIC)
    grain = Image.effect_noise((4000, 3000), 24).convert("RGB")
    out = io.BytesIO()
    Image.blend(base, grain, 0.15).save(out, "JPEG", quality=90)
    return out.getvalue()


def pil_decode(data: bytes) -> tuple[int, int]:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (224, 224))
    image = image.convert("RGB")
    image.thumbnail((2240, 224))
    return image.size


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu_throughput.json"))
    return parser.parse_args()


def time_towers(model: CLIPVisionModelWithProjection, device: str, result: dict) -> None:
    """The image tower in fp32 and fp16 autocast at each batch size, into ``result["tower_images_per_s"]``."""
    import torch

    result["tower_images_per_s"] = {}
    for dtype, name in ((torch.float32, "fp32"), (torch.float16, "fp16")):
        for batch in (64, 256, 1024):
            speed = time_tower(model, device, batch, dtype)
            result["tower_images_per_s"][f"{name} batch {batch}"] = speed
            print(f"image tower {name} batch {batch:5d}: {speed:9.0f} img/s", flush=True)


def make_jpegs(count: int) -> list[bytes]:
    """``count`` 12 MP JPEGs: up to 64 distinct ones, repeated."""
    print(f"writing {count} JPEGs of 4000x3000 ...", flush=True)
    with ProcessPoolExecutor() as pool:
        jpegs = list(pool.map(photo, range(min(count, 64))))
    return (jpegs * (count // len(jpegs) + 1))[:count]


def time_pil_decode(jpegs: list[bytes], result: dict) -> None:
    with ProcessPoolExecutor() as pool:
        list(pool.map(pil_decode, jpegs[:32]))
        started = time.perf_counter()
        list(pool.map(pil_decode, jpegs, chunksize=4))
        result["pil_draft_decode_all_cores_images_per_s"] = len(jpegs) / (time.perf_counter() - started)
    print(
        f"Pillow draft decode on {os.cpu_count()} processes: "
        f"{result['pil_draft_decode_all_cores_images_per_s']:7.0f} img/s",
        flush=True,
    )


def time_nvjpeg(jpegs: list[bytes], device: str, result: dict) -> None:
    import torch

    try:
        import torchvision
        from torchvision.io import decode_jpeg
        from torchvision.transforms.v2.functional import resize

        tensors = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
        for chunk in (16, 64):
            decode_jpeg(tensors[:chunk], device=device)
            torch.cuda.synchronize()
            started = time.perf_counter()
            for start in range(0, len(tensors), chunk):
                decoded = decode_jpeg(tensors[start : start + chunk], device=device)
                [resize(image, [224]) for image in decoded]
            torch.cuda.synchronize()
            speed = len(tensors) / (time.perf_counter() - started)
            result[f"nvjpeg_decode_resize_batch_{chunk}_images_per_s"] = speed
            print(
                f"nvJPEG decode + resize on the GPU (torchvision {torchvision.__version__}, batches of {chunk}): "
                f"{speed:7.0f} img/s",
                flush=True,
            )
    except Exception as exc:  # noqa: BLE001 - report what this machine cannot do
        result["nvjpeg_error"] = f"{type(exc).__name__}: {exc}"
        print(f"nvJPEG: {result['nvjpeg_error']}", flush=True)


def main() -> int:
    args = parse_args()

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure", file=sys.stderr)
        return 1
    device = "cuda"
    result = {
        "benchmark": "gpu_throughput",
        "gpu": torch.cuda.get_device_name(0),
        **machine_info(),
        "torch": torch.__version__,
        "model": "ViT-B/32 image tower, random weights",
    }
    print_machine(result)
    print(f"{result['gpu']}, torch {torch.__version__}", flush=True)

    time_towers(tower(device), device, result)
    jpegs = make_jpegs(args.images)
    result["jpeg_mb"] = float(np.mean([len(j) for j in jpegs]) / 1e6)
    time_pil_decode(jpegs, result)
    time_nvjpeg(jpegs, device, result)

    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
