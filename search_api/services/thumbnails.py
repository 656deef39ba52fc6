"""JPEG thumbnails, made on first request and kept on disk."""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image

from imgsearch_core.images import decode_image


class ThumbnailCache:
    def __init__(self, folder: Path, max_pixels: int):
        self.folder = Path(folder)
        self.max_pixels = max_pixels

    def get(self, image_id: str, content_hash: str, path: str, size: int) -> bytes:
        """The thumbnail bytes, longest side ``size``; raises OSError or ImageDecodeError."""
        cached = self.folder / f"{image_id}-{content_hash[:12]}-{size}.jpg"
        try:
            return cached.read_bytes()
        except FileNotFoundError:
            pass
        with open(path, "rb") as handle:
            decoded = decode_image(handle.read(), path, size, self.max_pixels)
        image = decoded.image
        image.thumbnail((size, size), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        data = buffer.getvalue()
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, cached)  # atomic: concurrent requests never see half a file
        return data
