"""``imgsearch index --profile``: where an indexing run's time goes, stage by stage.

Reading, hashing and decoding run on the decode threads, beside the model; embedding and writing run on the
main thread, one after the other. So the figure that tells whether decoding keeps up with the model is how
long the main thread sat waiting for a decoded image ("waiting for decode"): near zero, the model is the
bottleneck; large, the decode threads are.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Iterator

# Stages in the order a file meets them, and on which thread they run.
STAGES = {
    "read": "decode threads",
    "hash": "decode threads",
    "decode": "decode threads",
    "waiting for decode": "main thread",
    "embed": "main thread",
    "tag": "main thread",
    "write": "main thread",
}
ONLY_IF_TIMED = {"tag"}  # tagging runs only when the collection has label sets


class StageClock:
    """Adds up the seconds spent in each stage, from any thread."""

    def __init__(self):
        self._seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                self._seconds[name] += elapsed

    def report(self, wall_s: float, images: int) -> dict:
        """Seconds per stage, each as a share of the run's wall time, and per image."""

        def figures(seconds: float, thread: str) -> dict:
            return {
                "thread": thread,
                "seconds": round(seconds, 6),
                "share_of_wall": round(seconds / wall_s, 3) if wall_s else 0.0,
                "ms_per_image": round(1000 * seconds / images, 2) if images else 0.0,
            }

        return {
            "wall_s": round(wall_s, 3),
            "images": images,
            "stages": {
                name: figures(self._seconds.get(name, 0.0), thread)
                for name, thread in STAGES.items()
                if name in self._seconds or name not in ONLY_IF_TIMED
            },
        }


class _NoClock:
    """What the indexer times with when nobody asked for a profile: nothing."""

    def stage(self, name: str):
        return contextlib.nullcontext()


NO_CLOCK = _NoClock()


def format_profile(profile: dict) -> str:
    lines = [
        f"profile: {profile['images']} images embedded in {profile['wall_s']:.1f} s "
        "(decode threads run beside the model, so their shares can add up to more than 100%)"
    ]
    for name, stage in profile["stages"].items():
        lines.append(
            f"  {name:<19} {stage['seconds']:8.2f} s  {100 * stage['share_of_wall']:5.1f}% of wall  "
            f"{stage['ms_per_image']:7.2f} ms/image  ({stage['thread']})"
        )
    return "\n".join(lines)
