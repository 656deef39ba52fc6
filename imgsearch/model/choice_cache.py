"""What `auto` chose and why (``Choice``, its ``Trial``s), remembered per model, weights, device and machine in one JSON file in the cache directory."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from imgsearch.media.safe_files import UnsafeFileError, private_dir, read_own_file, replace_own_file
from imgsearch.model.agreement import AGREEMENT
from imgsearch.model.cpu import SPEED_FLAGS, cpu_flags, cpu_model
from imgsearch.model.runtimes import Precision

log = logging.getLogger(__name__)


def setting_label(backend: str, precision: str) -> str:
    """How a setting is named in messages and figures: "bf16" for torch's, "onnx int8" for another backend's."""
    return precision if backend == "torch" else f"{backend} {precision}"


class Measured:
    """A setting measured against torch fp32 (``backend``, ``precision``, ``min_cosine``, ``neighbour_overlap``):
    its name, and whether it passes the agreement gate."""

    backend: str
    precision: str
    min_cosine: float
    neighbour_overlap: float

    @property
    def label(self) -> str:
        return setting_label(self.backend, self.precision)

    @property
    def agrees(self) -> bool:
        return self.min_cosine >= AGREEMENT["min_cosine"] and self.neighbour_overlap >= AGREEMENT["neighbour_overlap"]


@dataclass
class Trial(Measured):
    precision: str
    images_per_s: float
    min_cosine: float = 1.0
    neighbour_overlap: float = 1.0
    backend: str = "torch"


@dataclass
class Choice:
    precision: Precision
    trials: list[Trial]
    cached: bool = False
    backend: str = "torch"
    complete: bool = True  # False: only torch's settings were measured (no graphs exported yet); see choose()

    def describe(self) -> str:
        base = self.trials[0] if self.trials else None  # torch fp32, what every other setting is measured against
        parts = []
        for trial in self.trials:
            speed = f"{trial.images_per_s / base.images_per_s:.2f}x" if base and base.images_per_s else "?"
            agreement = (
                ""
                if trial is base
                else (
                    f", min cosine {trial.min_cosine:.4f}, neighbours {trial.neighbour_overlap:.2f}"
                    + ("" if trial.agrees else " (below the agreement gate)")
                )
            )
            parts.append(f"{trial.label} {speed}{agreement}")
        return (
            f"precision auto -> {setting_label(self.backend, self.precision)}{' (cached)' if self.cached else ''}: "
            + "; ".join(parts)
        )


class ChoiceCache:
    """`auto`'s choices, one JSON file in the cache directory, keyed by what the speed depends on.

    The directory is this user's alone (0700; one of another user is refused): what is in it decides which graphs
    the model runs as, so nobody else may write there. A file that cannot be read or makes no sense is measured
    again, never an error."""

    MAX_BYTES = 4 * 1024 * 1024

    def __init__(self, folder: Path):
        private_dir(Path(folder))  # UnsafeFileError for another user's folder or a link in its place
        self.path = Path(folder) / "precision.json"

    @staticmethod
    def key(model: str, fingerprint: list[float], device: str, batch_size: int, backend: str = "torch") -> str:
        import torch

        weights = hashlib.sha256(json.dumps([round(v, 5) for v in fingerprint]).encode()).hexdigest()[:16]
        flags = " ".join(flag for flag in SPEED_FLAGS if flag in cpu_flags())
        key = f"{model}|{weights}|{device}|{cpu_model()}|{flags}|torch {torch.__version__}|batch {batch_size}"
        return key if backend == "torch" else f"{key}|backend {backend}"  # torch's keys as they were

    @contextlib.contextmanager
    def measuring(self) -> Iterator[None]:
        """Held while this process probes: another imgsearch process sharing the cache directory (an indexer and
        a server started together) waits for it, then reads its choice, rather than probing at the same time on
        the same cores, which would time both probes wrong. The kernel releases the lock if the holder dies."""
        import fcntl

        lock = self.path.with_name("precision.lock")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log.warning("cannot lock %s against other imgsearch processes: %s", self.path.parent, exc)
            yield
            return
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():  # its holder would stall every start
                raise UnsafeFileError(str(lock), "not a file of this user; refusing to wait on it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("imgsearch: waiting for another imgsearch process measuring a model (%s)", self.path.parent)
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def get(self, key: str) -> Choice | None:
        try:
            entry = self._entries().get(key)
            if not entry:
                return None
            choice = Choice(
                entry["precision"],
                [Trial(**t) for t in entry["trials"]],
                cached=True,
                backend=entry.get("backend", "torch"),
                complete=entry.get("complete", True) is True,
            )
            if _makes_sense(choice):
                return choice
            problem = "an entry that makes no sense"
        except (OSError, UnsafeFileError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        log.warning(
            "imgsearch: ignoring the cached precision choice in %s (%s); measuring again", self.path, str(problem)[:200]
        )
        return None

    def _entries(self) -> dict:
        """The file's entries; none when there is no file. Never through a link, never a FIFO or a huge file."""
        try:
            entries = json.loads(read_own_file(self.path, self.MAX_BYTES))
        except FileNotFoundError:
            return {}
        if not isinstance(entries, dict):
            raise ValueError("not a JSON object")
        return entries

    def put(self, key: str, choice: Choice) -> None:
        try:
            try:
                entries = self._entries()
            except (OSError, UnsafeFileError, ValueError, RecursionError):
                entries = {}  # unreadable: replaced by one that is
            entries[key] = {
                "precision": choice.precision,
                "backend": choice.backend,
                "complete": choice.complete,
                "trials": [asdict(t) for t in choice.trials],
                "measured": time.strftime("%Y-%m-%d"),
            }
            replace_own_file(self.path, json.dumps(entries, indent=1))
        except OSError as exc:
            log.warning("cannot cache the precision choice in %s: %s", self.path, exc)


def _makes_sense(choice: Choice) -> bool:  # noqa: C901
    """A cached choice of known settings with finite, positive measurements (a hand-edited or damaged file may
    hold anything)."""

    def number(value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    known = ("fp32", "bf16", "int8", "fp16")
    backends = ("torch", "onnx", "openvino")
    return (
        choice.precision in known
        and choice.backend in backends
        and all(
            trial.precision in known
            and trial.backend in backends
            and number(trial.images_per_s)
            and trial.images_per_s > 0
            and number(trial.min_cosine)
            and number(trial.neighbour_overlap)
            for trial in choice.trials
        )
    )
