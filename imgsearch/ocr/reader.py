"""The text in a picture, read offline by rapidocr: PP-OCR's detection and recognition models as ONNX, shipped
inside its wheel, so nothing is downloaded; run by OpenVINO where it is installed (5 to 7 times faster than ONNX
Runtime on these models on a 2-core AVX-512 machine), else by ONNX Runtime.

Most photos hold no text, and the full read costs a second or more per picture, so a picture first goes through a
cheap gate: the detection model alone on the picture reduced to ``GATE_SIDE`` pixels on its long side. Only where
that finds a text box is the picture read in full: detection at ``READ_SIDE`` and recognition of at most
``MAX_BOXES * 4`` boxes. What the engine is given is bounded in both ways whatever the file holds: the decode is the
indexer's (pixel and memory bounds, reduced JPEG decoding), and the picture is at most ``READ_SIDE`` on its long
side, so time and memory per picture are bounded too.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from imgsearch.errors import ImgsearchError
from imgsearch.media.images import decode_image
from imgsearch.media.safe_files import read_regular
from imgsearch.store.fields import MAX_IMAGE_TEXT, content_hash, fit_utf8

log = logging.getLogger(__name__)

GATE_SIDE = 480  # long side of the picture the gate looks at (a 12 MP JPEG decodes at 1/8 scale for it)
READ_SIDE = 1280  # long side of the picture read in full
MAX_BOXES = 64  # lines kept per picture, top to bottom (the detector is asked for at most 4x as many boxes)
MIN_LINE_SCORE = 0.8  # recognised lines less sure than this are dropped (texture read as "ABA" scores ~0.55)
GATE_MIN_BOX_SCORE = 0.7  # the gate lets a picture through on a box at least this sure (text: 0.83-0.9)


class OcrUnavailableError(ImgsearchError):
    """IMGSEARCH_OCR=on, but the engine is not installed."""

    def __init__(self) -> None:
        super().__init__(
            "no text is read in pictures: the engine is not installed (pip install 'imgsearch[ocr]', which "
            "make install does); set IMGSEARCH_OCR=off to stop this notice"
        )


@dataclass(frozen=True)
class ReadText:
    """What was read in one picture: its lines, top to bottom, and whether the gate stopped it early."""

    lines: list[str] = field(default_factory=list)
    gated: bool = False  # True: the gate found no text, and the full read did not run

    @property
    def text(self) -> str:
        return fit_utf8("\n".join(self.lines), MAX_IMAGE_TEXT)


def runtime() -> str | None:
    """What runs the models: "openvino", "onnxruntime", or None when rapidocr or both runtimes are missing."""
    import importlib.util

    if importlib.util.find_spec("rapidocr") is None:
        return None
    return next((name for name in ("openvino", "onnxruntime") if importlib.util.find_spec(name) is not None), None)


def engine_installed() -> bool:
    return runtime() is not None


class TextReader:
    """Reads the text in pictures. Made once per process; the engine loads on first use. Thread-safe (one read
    at a time)."""

    def __init__(self, threads: int = 0):
        self._threads = threads or max(1, min(4, len(os.sched_getaffinity(0))))
        self._engine: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._engine is None:
            if not engine_installed():
                raise OcrUnavailableError()
            logging.getLogger("RapidOCR").setLevel(logging.ERROR)
            if runtime() == "openvino":  # before rapidocr imports it: imgsearch sends no usage telemetry anywhere
                from imgsearch.model.runtimes import openvino_module

                openvino_module()
            from rapidocr import RapidOCR

            self._engine = RapidOCR(params=engine_params(self._threads))
        return self._engine

    def read(self, image: Image.Image) -> ReadText:
        """The text in ``image`` (an RGB picture of any size: it is reduced here)."""
        return self.read_in_full(image) if self.passes_gate(image) else ReadText(gated=True)

    def passes_gate(self, image: Image.Image) -> bool:
        """Whether the detection model finds a text box in ``image`` reduced to GATE_SIDE: the cheap look."""
        with self._lock:
            found = self._load()(_bgr(_fit(image, GATE_SIDE)), use_det=True, use_cls=False, use_rec=False)
        boxes, scores = getattr(found, "boxes", None), getattr(found, "scores", None)
        if boxes is None or not len(boxes):
            return False
        return scores is None or max(scores) >= GATE_MIN_BOX_SCORE

    def read_in_full(self, image: Image.Image) -> ReadText:
        """Detection and recognition on ``image`` reduced to READ_SIDE."""
        with self._lock:
            result = self._load()(_bgr(_fit(image, READ_SIDE)), use_det=True, use_cls=False, use_rec=True)
        return ReadText(lines=_lines(result))

    def read_file(
        self, path: str, roots: list[str], max_file_bytes: int, max_pixels: int, max_decoded_bytes: int
    ) -> tuple[str, ReadText]:
        """(content hash, text read) of the image file at ``path``, read as the indexer reads files (regular
        files inside ``roots`` only, bounded in bytes, pixels and decoded memory). Raises what those raise.

        The gate looks at a small decode (a JPEG decodes at 1/4 or 1/8 scale: a 12 MP photo never exists in
        full); only a picture that passes is decoded again, larger, for the full read."""
        data = read_regular(path, roots, max_file_bytes)
        digest = content_hash(data)
        small = decode_image(data, path, GATE_SIDE * 3 // 4, max_pixels, max_decoded_bytes)
        if not self.passes_gate(small.image):
            return digest, ReadText(gated=True)
        large = decode_image(data, path, READ_SIDE * 3 // 4, max_pixels, max_decoded_bytes)
        return digest, self.read_in_full(large.image)


_shared: TextReader | None = None
_shared_lock = threading.Lock()


def shared_reader() -> TextReader:
    """This process's reader for the indexer's own text stage (the engine loads once per process)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = TextReader()
        return _shared


def engine_params(threads: int) -> dict[str, Any]:
    """rapidocr's settings: the picture is sized here, so the detector keeps it as it is (up to READ_SIDE)."""
    from rapidocr import EngineType

    engine = EngineType.OPENVINO if runtime() == "openvino" else EngineType.ONNXRUNTIME
    return {
        "Det.engine_type": engine,
        "Rec.engine_type": engine,
        "EngineConfig.openvino.inference_num_threads": threads,
        "Global.log_level": "error",  # "The text detection result is empty" is a warning: every photo
        "Global.max_side_len": READ_SIDE,
        "Global.min_side_len": 16,
        "Global.use_cls": False,
        "Det.limit_type": "max",
        "Det.limit_side_len": READ_SIDE,
        "Det.max_candidates": MAX_BOXES * 4,
        "EngineConfig.onnxruntime.intra_op_num_threads": threads,
        "EngineConfig.onnxruntime.inter_op_num_threads": 1,
    }


def _fit(image: Image.Image, side: int) -> Image.Image:
    """``image`` reduced so that its long side is at most ``side``."""
    scale = side / max(image.size)
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)


def _bgr(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


def _lines(result: Any) -> list[str]:
    """The recognised lines worth keeping, top to bottom then left to right, at most MAX_BOXES."""
    texts = getattr(result, "txts", None) or ()
    scores = getattr(result, "scores", None) or [1.0] * len(texts)
    boxes = getattr(result, "boxes", None)
    found = []
    for i, (text, score) in enumerate(zip(texts, scores)):
        if score < MIN_LINE_SCORE or not any(char.isalnum() for char in str(text)):
            continue
        corners = np.asarray(boxes[i], dtype=np.float32) if boxes is not None else np.array([[0, i]], np.float32)
        top, left = float(corners[:, 1].min()), float(corners[:, 0].min())
        found.append((top, left, str(text).strip()))
    found.sort()
    return [text for _, _, text in found[:MAX_BOXES]]
