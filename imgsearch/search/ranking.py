"""Query maths, apart from any I/O: blending query vectors (the rest of ranking: imgsearch/relevance.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def blend(parts: Sequence[tuple[np.ndarray, float]]) -> np.ndarray:
    """Weighted sum of unit vectors, renormalised. A negative weight pulls the result away.

    Raises ValueError when there is nothing to blend or the parts cancel out.
    """
    if not parts:
        raise ValueError("nothing to search for")
    total = np.zeros_like(np.asarray(parts[0][0], dtype=np.float32))
    for vector, weight in parts:
        vector = np.asarray(vector, dtype=np.float32)
        norm = float(np.linalg.norm(vector))
        if norm > 0:
            total += weight * (vector / norm)
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise ValueError("the query parts cancel each other out; change the weights")
    return (total / norm).astype(np.float32)
