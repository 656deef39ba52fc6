"""Watching: how soon a photo copied into a watched folder is searchable, how search holds up while a burst is
indexed, and what watching many folders costs in memory, inotify watches and idle CPU.

1. Latency and search under a burst: a real `imgsearch serve --watch LIBRARY` process (uvicorn) with a
   random-weight ViT-B/32 (the real model's compute cost). Photos (640x480 JPEG) are copied in one at a time; each
   one's latency runs from the end of its copy until a search filtered to its path finds it (p50, p95). Then the
   search p50 of text queries at rest, and while a burst of --burst photos is copied in and indexed, as a ratio.
2. Memory: in a fresh process, a watcher over --folders folders of --files-per-folder files each (default 10,000 x
   10 = 100,000), events mode and then polling mode (every 30 s): the process's RSS before and after, the inotify
   watches it holds (from /proc/self/fdinfo), and its CPU use while nothing changes (polling: over one interval,
   a pass over the tree included).

Usage: python bench/watch_latency.py [--copies 30] [--burst 1000] [--folders 10000] [--files-per-folder 10]
       [--model vit-b-32] [--batch-size 32] [--skip-memory | --skip-serve] [--out bench/results/watch_latency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

QUERIES = ["a red bicycle", "snow on a mountain", "a cat asleep", "a blue car in the rain", "city at night"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def search_ms(client: httpx.Client, text: str, prefix: str | None = None) -> tuple[float, list]:
    body: dict = {"text": text, "limit": 5}
    if prefix:
        body["filter"] = {"path_prefix": prefix}
    started = time.perf_counter()
    response = client.post("/search", json=body)
    response.raise_for_status()
    return (time.perf_counter() - started) * 1000, response.json()["results"]


def copy_latencies(client: httpx.Client, staged: list[Path], target: Path) -> list[float]:
    """Seconds from the end of each copy until a search filtered to the copy finds it."""
    target.mkdir(parents=True, exist_ok=True)
    latencies = []
    for photo in staged:
        destination = target / photo.name
        shutil.copy(photo, destination)
        copied = time.monotonic()
        while not search_ms(client, "a photo", str(destination))[1]:
            if time.monotonic() - copied > 60:
                raise RuntimeError(f"{destination} not searchable after 60 s")
            time.sleep(0.05)
        latencies.append(time.monotonic() - copied)
        time.sleep(0.5)
    return latencies


def burst_search(client: httpx.Client, staged: list[Path], target: Path, expected: int) -> tuple[list[float], float]:
    """Search latencies (ms) while ``staged`` is copied into ``target`` and indexed; and how long indexing took."""
    target.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    copier = threading.Thread(target=lambda: [shutil.copy(p, target / p.name) for p in staged])
    copier.start()
    during = []
    while True:
        during.append(search_ms(client, QUERIES[len(during) % len(QUERIES)])[0])
        if len(during) % 10 == 0 and client.get("/health").json()["count"] >= expected:
            break
        if time.monotonic() - started > 1800:
            raise RuntimeError("the burst was not indexed within 30 minutes")
    copier.join()
    return during, time.monotonic() - started


def serve_and_measure(args: argparse.Namespace, tmp: Path) -> dict:
    from tests.support.models import build_local_clip
    from tests.support.photos import write_photo
    from tests.support.processes import cli_environment, http_ready, start_server, stop_process

    model_dir = build_local_clip(tmp / args.model, args.model)
    library, staging = tmp / "library", tmp / "staging"
    for i in range(20):
        write_photo(library / "seed" / f"s{i:03d}.jpg", seed=i, size=(640, 480))
    copies = [
        write_photo(staging / "copies" / f"c{i:03d}.jpg", seed=10_000 + i, size=(640, 480)) for i in range(args.copies)
    ]
    burst = [
        write_photo(staging / "burst" / f"b{i:05d}.jpg", seed=20_000 + i, size=(640, 480)) for i in range(args.burst)
    ]
    env = {**cli_environment(tmp / "data", model_dir), "IMGSEARCH_BATCH_SIZE": str(args.batch_size)}
    env.pop("IMGSEARCH_PRECISION", None) if args.precision == "auto" else env.update(IMGSEARCH_PRECISION=args.precision)
    process, port = start_server(
        lambda port: [sys.executable, "-m", "imgsearch.cli", "serve", "--port", str(port), "--watch", str(library)],
        env,
        http_ready("/health"),
        timeout_s=600,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            while client.get("/watch").json()["runs"] < 1:
                time.sleep(0.2)
            latencies = copy_latencies(client, copies, library / "copies")
            for _ in range(10):
                search_ms(client, "warm up")
            idle = [search_ms(client, QUERIES[i % len(QUERIES)])[0] for i in range(args.idle_queries)]
            during, indexing_s = burst_search(client, burst, library / "burst", 20 + args.copies + args.burst)
            watch = client.get("/watch").json()
    finally:
        stop_process(process)
    return {
        "model": args.model,
        "batch_size": args.batch_size,
        "copies": args.copies,
        "copy_to_searchable_s": {"p50": statistics.median(latencies), "p95": percentile(latencies, 95)},
        "search_idle_ms_p50": statistics.median(idle),
        "burst": args.burst,
        "search_idle_ms_p95": percentile(idle, 95),
        "search_during_burst_ms_p50": statistics.median(during),
        "search_during_burst_ms_p95": percentile(during, 95),
        "search_during_burst_ms_mean": statistics.fmean(during),
        "search_during_burst_queries": len(during),
        "burst_ratio_p50": statistics.median(during) / statistics.median(idle),
        "burst_indexed_in_s": indexing_s,
        "watch_runs": watch["runs"],
    }


MEMORY_PROBE = r"""
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[1])
from imgsearch.indexer.runner import IndexReport
from imgsearch.settings import Settings
from imgsearch.watching.watcher import Watcher

def rss_mb():
    with open("/proc/self/status") as handle:
        return next(int(l.split()[1]) for l in handle if l.startswith("VmRSS")) / 1024

def inotify_watches():
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify":
                with open(f"/proc/self/fdinfo/{fd}") as handle:
                    count += sum(line.startswith("inotify wd:") for line in handle)
        except OSError:
            pass
    return count

root, mode, expected = sys.argv[2], sys.argv[3], int(sys.argv[4])
settings = Settings(_env_file=None, watch_mode=mode, watch_poll_seconds=30, rescan_minutes=10_000)
before = rss_mb()
watcher = Watcher([root], settings, lambda run, work: IndexReport())
started = time.monotonic()
watcher.start()
while mode == "events" and inotify_watches() < expected and time.monotonic() - started < 300:
    time.sleep(0.2)
time.sleep(3 if mode == "events" else 35)  # polling: one pass over the tree has been made
ready_s = time.monotonic() - started
cpu, wall = time.process_time(), time.monotonic()
time.sleep(10 if mode == "events" else settings.watch_poll_seconds)  # polling: over one whole interval
idle_cpu = (time.process_time() - cpu) / (time.monotonic() - wall)
after = rss_mb()
watches = inotify_watches()
watcher.stop()
print(json.dumps({"mode": mode, "rss_before_mb": before, "rss_after_mb": after, "watching_mb": after - before,
                  "inotify_watches": watches, "ready_s": ready_s, "idle_cpu_fraction": idle_cpu}))
"""


def memory(args: argparse.Namespace, tmp: Path) -> list[dict]:
    tree = tmp / "tree"
    for folder in range(args.folders):
        directory = tree / f"{folder // 100:03d}" / f"{folder % 100:02d}"
        directory.mkdir(parents=True)
        for file in range(args.files_per_folder):
            (directory / f"IMG_{file:04d}.jpg").touch()
    folders = args.folders + len(list(tree.iterdir())) + 1
    results = []
    for mode in ("events", "polling"):
        probe = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(ROOT), str(tree), mode, str(folders)],
            capture_output=True,
            text=True,
            timeout=900,
            check=True,
        )
        results.append({**json.loads(probe.stdout.strip().splitlines()[-1]), "folders": folders})
    return results


def main() -> int:
    sys.path.insert(0, str(ROOT / "bench"))
    from machine import machine_info, print_machine, write_result

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=30)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--idle-queries", type=int, default=100)
    parser.add_argument("--folders", type=int, default=10_000)
    parser.add_argument("--files-per-folder", type=int, default=10)
    parser.add_argument("--model", default="vit-b-32")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batch-size", type=int, default=32, help="the server's IMGSEARCH_BATCH_SIZE (default 32)")
    parser.add_argument("--skip-serve", action="store_true", help="only the memory figures")
    parser.add_argument("--skip-memory", action="store_true", help="only the serve figures")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "watch_latency.json")
    args = parser.parse_args()
    info = machine_info()
    print_machine(info)
    result: dict = {**info}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        result["memory"] = [] if args.skip_memory else memory(args, tmp)
        for row in result["memory"]:
            print(
                f"{row['mode']}: {row['folders']:,} folders x {args.files_per_folder} files: +{row['watching_mb']:.1f} MB "
                f"RSS ({row['rss_after_mb']:.0f} MB in all), {row['inotify_watches']:,} inotify watches, ready in "
                f"{row['ready_s']:.1f} s, idle CPU {100 * row['idle_cpu_fraction']:.2f}%",
                flush=True,
            )
        if not args.skip_serve:
            result["serve"] = served = serve_and_measure(args, tmp)
            print(
                f"copy -> searchable ({served['copies']} copies): p50 {served['copy_to_searchable_s']['p50']:.2f} s, "
                f"p95 {served['copy_to_searchable_s']['p95']:.2f} s\nsearch p50: idle {served['search_idle_ms_p50']:.1f} "
                f"ms, during a burst of {served['burst']:,} {served['search_during_burst_ms_p50']:.1f} ms "
                f"({served['burst_ratio_p50']:.2f}x); p95 {served['search_idle_ms_p95']:.1f} ms idle, "
                f"{served['search_during_burst_ms_p95']:.1f} ms during ({served['search_during_burst_queries']} "
                f"queries); the burst indexed in {served['burst_indexed_in_s']:.0f} s "
                f"in {served['watch_runs']} runs in all",
                flush=True,
            )
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
