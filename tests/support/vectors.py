"""Random unit vectors with full rows around them, for the store and the vector copy."""

from __future__ import annotations

import numpy as np

DIM = 16


def unit_rows(n: int, seed: int, prefix: str = "/lib/") -> list[dict]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        {
            "id": f"{seed:04d}{i:012d}",
            "path": f"{prefix}{i % 7}/img{i}.jpg",
            "size": 1,
            "mtime_ns": 1,
            "content_hash": f"h{seed}-{i}",
            "width": 100 + i % 50,
            "height": 80 + i % 30,
            "indexed_at": 1,
            "taken_at": 1_500_000_000 + 86_400 * (i % 40),
            "taken_at_source": ("exif", "mtime")[i % 2],
            "format": ("JPEG", "PNG", "WEBP")[i % 3],
            "camera_make": "Fujifilm" if i % 4 else "",
            "camera_model": ("X100V", "X-T4", "")[i % 3],
            "gps": "",
            "tags": [("dog", "cat", "beach")[i % 3]] + (["sunset"] if i % 5 == 0 else []),
            "tag_scores": [0.3] + ([0.26] if i % 5 == 0 else []),
            "vector": vectors[i],
        }
        for i in range(n)
    ]


def library_row(i: int, vector: np.ndarray, path: str | None = None) -> dict:
    """Row ``i`` of a photo library as the indexer writes it (tags empty): a camera's JPEG in a dated folder."""
    from imgsearch.store.fields import FileFacts, make_row

    path = path or f"/home/anna/Pictures/{2000 + i % 25}/{i % 12 + 1:02d} holiday in the mountains/IMG_{i:06d}.JPG"
    facts = FileFacts(
        path,
        4_000_000 + i,
        1_600_000_000 * 10**9 + i,
        f"{i:032x}",
        4000,
        3000,
        1_600_000_000 + i,
        "exif",
        "JPEG",
        "FUJIFILM",
        "X100V",
        "",
    )
    return make_row(facts, vector)
