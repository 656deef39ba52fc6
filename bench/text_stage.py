"""The text stage (reading the text in pictures) beside the embedding stage, on the same files, in one run.

Writes 12 MP JPEGs without text (crops of the real photographs scikit-learn and matplotlib ship, as
bench/index_throughput.py does) and pictures with text (tests/support/text_pictures.py: a receipt, a sign over a
photo, screenshots, a poster, a number plate, a boarding pass; rotated, blurred, light on dark), then times:

- the embedding stage: `run_index` with IMGSEARCH_OCR=off, the real ViT-B/32 architecture with random weights
  (same compute as the real model; no download), torch fp32;
- the text stage: `read_texts` over the rows it wrote, on the photos without text and on the pictures with text
  apart, with how many the gate passed over and how many were read in full;
- the gate alone and the full read alone on one photo, to say where a photo's time goes.

Targets (issue 36), on 2 cores: at least 5 images/s on 12 MP photos without text, at least 1.5 on pictures with text.

Usage: python bench/text_stage.py [--photos 24] [--copies 2] [--out bench/results/text_stage.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine import machine_info, print_machine, write_result  # noqa: E402

from tests.support.photos import make_photos  # noqa: E402
from tests.support.text_pictures import CORPUS, render  # noqa: E402

if TYPE_CHECKING:
    from imgsearch.settings import Settings
    from imgsearch.store import MilvusStore


def settings_for(data: Path, model_dir: Path, ocr: str) -> Settings:
    from imgsearch.settings import Settings

    return Settings(
        _env_file=None,
        milvus_uri=str(data / "milvus.db"),
        model=str(model_dir),
        device="cpu",
        precision="fp32",
        backend="torch",
        cache_dir=data / "cache",
        ocr=ocr,
    )


def text_stage(store: MilvusStore, settings: Settings, root: Path) -> dict:
    from imgsearch.indexer.text_stage import read_texts
    from imgsearch.ocr.reader import TextReader

    reader = TextReader()
    reader.read(render(CORPUS[0]))  # loading and compiling the models is once per process, not per picture
    started = time.perf_counter()
    report = read_texts(store, settings, reader, [str(root)])
    seconds = time.perf_counter() - started
    return {
        "pictures": report.read,
        "seconds": round(seconds, 3),
        "images_per_s": round(report.read / seconds, 3),
        "gated": report.gated,
        "read_in_full": report.read - report.gated - report.failed,
        "with_text": report.with_text,
    }


def one_photo(path: Path) -> dict:
    """Where one 12 MP photo's time goes: decode for the text stage, the gate, a full read (had the gate let it by)."""
    from imgsearch.media.images import decode_image
    from imgsearch.ocr.reader import READ_SIDE, TextReader, _bgr, _fit

    reader = TextReader()
    engine = reader._load()
    data = path.read_bytes()
    timings = {"decode_s": [], "gate_s": [], "full_read_s": []}
    for _ in range(3):
        started = time.perf_counter()
        image = decode_image(data, str(path), READ_SIDE * 3 // 4, 10**9, 2**31).image
        timings["decode_s"].append(time.perf_counter() - started)
        started = time.perf_counter()
        reader.read(image)
        timings["gate_s"].append(time.perf_counter() - started)
        started = time.perf_counter()
        engine(_bgr(_fit(image, READ_SIDE)), use_det=True, use_cls=False, use_rec=True)
        timings["full_read_s"].append(time.perf_counter() - started)
    return {name: round(min(values), 4) for name, values in timings.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=24, help="12 MP photos without text")
    parser.add_argument("--copies", type=int, default=2, help="each corpus picture this many times (shifted)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/text_stage.json"))
    args = parser.parse_args()

    from imgsearch.indexer.runner import run_index
    from imgsearch.model.loading import load_embedder
    from imgsearch.store import MilvusStore, release_hosted
    from tests.support.models import build_local_clip

    info = machine_info()
    print_machine(info)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_dir = build_local_clip(tmp / "vit-b-32", "vit-b-32")
        photos = make_photos(tmp / "files" / "photos", args.photos)
        with_text = tmp / "files" / "text"
        with_text.mkdir(parents=True)
        for copy in range(args.copies):
            for picture in CORPUS:
                render(picture, shift=copy).save(with_text / f"{picture.name}_{copy}.png")
        settings = settings_for(tmp / "data", model_dir, "off")
        encoder = load_embedder(settings)
        store = MilvusStore.from_settings(settings)
        started = time.perf_counter()
        report = run_index([str(tmp / "files")], settings, encoder, store)
        embedding_s = time.perf_counter() - started
        files = report.embedded
        on = settings.model_copy(update={"ocr": "on"})
        text_photos = text_stage(store, on, tmp / "files" / "photos")
        text_pictures = text_stage(store, on, with_text)
        store.close()
        release_hosted(settings.milvus_uri)
        breakdown = one_photo(photos[0])
    result = summary(info, files, embedding_s, text_photos, text_pictures, breakdown)
    write_result(args.out, result)
    return 0


def summary(info: dict, files: int, embedding_s: float, photos: dict, pictures: dict, breakdown: dict) -> dict:
    """The figures as JSON, printed as they are made."""
    text_photos, text_pictures = photos, pictures
    text_s = text_photos["seconds"] + text_pictures["seconds"]
    result = {
        **info,
        "embedding_stage": {
            "files": files,
            "seconds": round(embedding_s, 3),
            "images_per_s": round(files / embedding_s, 3),
        },
        "text_stage_photos_without_text_12mp": text_photos,
        "text_stage_pictures_with_text": text_pictures,
        "share_of_time": {
            "embedding": round(embedding_s / (embedding_s + text_s), 3),
            "text": round(text_s / (embedding_s + text_s), 3),
        },
        "one_12mp_photo": breakdown,
        "targets": {"photos_without_text_per_s": 5.0, "pictures_with_text_per_s": 1.5},
    }
    print(f"embedding stage: {files} files in {embedding_s:.1f} s = {files / embedding_s:.2f} images/s")
    print(
        f"text stage, 12 MP photos without text: {text_photos['images_per_s']:.2f} images/s "
        f"({text_photos['gated']} of {text_photos['pictures']} passed over at the gate; target 5)"
    )
    print(
        f"text stage, pictures with text: {text_pictures['images_per_s']:.2f} images/s "
        f"({text_pictures['with_text']} of {text_pictures['pictures']} with text read; target 1.5)"
    )
    print(
        f"share of the time: embedding {result['share_of_time']['embedding']:.0%}, text {result['share_of_time']['text']:.0%}"
    )
    print(f"one 12 MP photo: {breakdown}")
    return result


if __name__ == "__main__":
    raise SystemExit(main())
