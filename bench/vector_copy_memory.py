"""Memory of the API's vector copy per image, against the copy as it was (paths in a fixed-width numpy array).

Builds N rows as Milvus returns them (512-d vectors, photo-library paths, every metadata column), then
measures with tracemalloc what the copy's snapshot holds once built and the rows are freed (strings the copy
keeps count, those it drops do not):

- imgsearch: ``_snapshot_from_rows`` of imgsearch/store/vector_copy.py;
- fixed-width: the same, but with ids and paths in numpy unicode arrays, as before issue 9. One long path
  (``--long-path`` characters) widens every row.

Usage: python bench/vector_copy_memory.py [--rows 100000] [--long-path 4096] [--out bench/results/vector_copy_memory.json]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from machine import machine_info, print_machine, write_result  # noqa: E402

from imgsearch.store.vector_copy import _snapshot_from_rows  # noqa: E402
from tests.support.vectors import library_row  # noqa: E402

DIM = 512


def rows(n: int, long_path: int) -> list[dict]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    long = "/" + "x" * (long_path - 1) if long_path else None
    return [library_row(i, vectors[i], long if i == 0 else None) for i in range(n)]


def held_by(build: Callable[[], object]) -> int:
    """Bytes still allocated after ``build()`` returns (the result is kept)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    result = build()
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del result
    return held


def fixed_width(made: list[dict]) -> tuple:
    return (
        np.array([r["id"] for r in made]),
        np.asarray([r["vector"] for r in made], np.float32),
        np.array([r["path"] for r in made]),
        np.array([r["width"] for r in made], np.int64),
        np.array([r["height"] for r in made], np.int64),
        tuple({k: v for k, v in r.items() if k != "vector"} for r in made),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--long-path", type=int, default=4096, help="one path this long (0: none)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "vector_copy_memory.json")
    args = parser.parse_args()
    info = machine_info()
    print_machine(info)
    ours = held_by(lambda: _snapshot_from_rows(rows(args.rows, args.long_path), DIM))
    theirs = held_by(lambda: fixed_width(rows(args.rows, args.long_path)))
    vectors = args.rows * DIM * 4
    result = {
        "rows": args.rows,
        "dim": DIM,
        "long_path": args.long_path,
        "vectors_bytes": vectors,
        "imgsearch_bytes": ours,
        "fixed_width_bytes": theirs,
        "imgsearch_bytes_per_image": round(ours / args.rows),
        "fixed_width_bytes_per_image": round(theirs / args.rows),
        **info,
    }
    print(f"{args.rows:,} rows, {DIM}-d, one path of {args.long_path} characters")
    print(f"  vectors alone:      {vectors / args.rows:8.0f} B/image")
    print(f"  imgsearch copy:     {ours / args.rows:8.0f} B/image  ({ours / 2**20:.0f} MiB)")
    print(
        f"  fixed-width arrays: {theirs / args.rows:8.0f} B/image  ({theirs / 2**20:.0f} MiB), "
        f"{theirs / ours:.1f}x imgsearch"
    )
    write_result(args.out, result)


if __name__ == "__main__":
    main()
