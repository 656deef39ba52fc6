"""A newcomer's first hour, timed as they would meet it: the first `imgsearch index` of a small photo folder on a
fresh machine (new HOME, empty caches) with the defaults, against the same run forced to torch fp32; then
`imgsearch search` from a terminal with no server running, and with an `imgsearch serve` of the same index running.

The model is the real ViT-B/32 architecture with random weights (the same compute as clip-ViT-B-32); the photos are
crops of real photographs. Each command runs as a user runs it, in its own process, and is timed from outside.

Usage: python bench/first_run.py [--photos 19] [--searches 3] [--out bench/results/first_run.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
from machine import machine_info, print_machine, write_result  # noqa: E402

from tests.support.photos import make_photos  # noqa: E402

IMGSEARCH = str(Path(sys.executable).with_name("imgsearch"))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=19)
    parser.add_argument("--searches", type=int, default=3, help="CLI searches timed per case (the median counts)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/first_run.json"))
    return parser.parse_args()


def fresh_user(home: Path, model: Path, **settings: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("IMGSEARCH_")}
    env.update(
        HOME=str(home),
        XDG_DATA_HOME=str(home / "data"),
        XDG_CACHE_HOME=str(home / "cache"),
        IMGSEARCH_MODEL=str(model),
        HF_HUB_OFFLINE="1",
        **settings,
    )
    return env


def timed(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, done.stderr


def first_index(tmp: Path, model: Path, photos: Path) -> dict[str, float | str]:
    """The first index of ``photos`` by a new user: defaults, then torch fp32 forced, each on a fresh HOME."""
    forced, _ = timed(
        [IMGSEARCH, "index", str(photos)],
        fresh_user(tmp / "forced", model, IMGSEARCH_PRECISION="fp32", IMGSEARCH_BACKEND="torch"),
        tmp,
    )
    defaults, said = timed([IMGSEARCH, "index", str(photos)], fresh_user(tmp / "defaults", model), tmp)
    chose = next((line for line in said.splitlines() if "precision auto ->" in line), "")
    print(
        f"first index, defaults: {defaults:.1f} s; torch fp32 forced: {forced:.1f} s = {defaults / forced:.2f}x",
        flush=True,
    )
    print(f"  {chose}", flush=True)
    return {
        "defaults_s": round(defaults, 2),
        "forced_fp32_s": round(forced, 2),
        "ratio": round(defaults / forced, 3),
        "auto_chose": chose,
    }


def cli_searches(env: dict[str, str], cwd: Path, count: int) -> float:
    times = [
        timed([IMGSEARCH, "search", "a red bicycle leaning on a wall", "-k", "5"], env, cwd)[0] for _ in range(count)
    ]
    return statistics.median(times)


def search_latency(tmp: Path, model: Path, count: int) -> dict[str, float]:
    """`imgsearch search` from another folder: alone, then with `imgsearch serve` running on the same index."""
    env = fresh_user(tmp / "defaults", model, IMGSEARCH_API_URL="http://127.0.0.1:8765")
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    alone = cli_searches(env, elsewhere, count)
    server = subprocess.Popen(
        [IMGSEARCH, "serve", "--port", "8765"], env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while True:
            try:
                if httpx.get("http://127.0.0.1:8765/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        served = cli_searches(env, elsewhere, count)
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f"imgsearch search, no server: {alone:.2f} s; with imgsearch serve running: {served:.2f} s", flush=True)
    return {"no_server_s": round(alone, 2), "with_server_s": round(served, 2)}


def main() -> int:
    args = parse_args()
    from tests.support.models import build_local_clip

    print_machine(machine_info())
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        model = build_local_clip(tmp / "vit-b-32", "vit-b-32")
        photos = tmp / "Pictures"
        make_photos(photos, args.photos)
        result = {
            "benchmark": "first_run",
            "photos": args.photos,
            **machine_info(),
            "first_index": first_index(tmp, model, photos),
            "cli_search": search_latency(tmp, model, args.searches),
        }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
