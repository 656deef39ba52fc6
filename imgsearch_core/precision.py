"""Running the model faster than fp32: bf16 and int8 on CPU, fp16 on CUDA, and ``auto``, which measures.

``IMGSEARCH_PRECISION``:

- ``fp32``: the model as trained.
- ``bf16``: ``torch.autocast`` to bfloat16 (matrix products in bf16; layer norms and softmax stay fp32). Fast
  on CPUs with AVX512_BF16 or AMX, emulated (slow) elsewhere.
- ``int8``: the Linear layers quantised to int8 weights, activations quantised per batch
  (``torch.ao.quantization.quantize_dynamic``). CPU only. Fast with VNNI; also runs on AVX2.
- ``fp16``: ``torch.autocast`` to float16. CUDA only.
- ``auto`` (the default): of the settings this device supports well (read from the CPU's flags, or CUDA), in
  the backend named, or with ``IMGSEARCH_BACKEND=auto`` (the default) in torch and every installed backend, the
  fastest one that a short timed probe finds faster than torch fp32 and whose embeddings agree with fp32's
  (``AGREEMENT``); torch fp32 when none does. The choice is cached per model, device and machine, so the probe
  runs once.

The model's fingerprint, recorded with a collection, is always computed in fp32, so a collection indexed
with one precision is searched with any other.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import platform
import stat
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from imgsearch_core.safe_files import UnsafeFileError, private_dir, read_own_file

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "int8", "fp16"]
PrecisionSetting = Literal["auto", "fp32", "bf16", "int8", "fp16"]

# Where `auto` may use a setting: on the probe, its embeddings agree with fp32's at least this well. The
# minimum cosine between a picture's (or text's) fp32 and fast embedding; and the mean share of the nearest
# probe pictures that stay the same, for each picture (image -> image) and each text (text -> image).
AGREEMENT = {"min_cosine": 0.99, "neighbour_overlap": 0.95}
FASTER_BY = 1.1  # `auto` leaves fp32 only for a setting at least this much faster on the probe
PROBE_IMAGES = 24
PROBE_NEIGHBOURS = 5
PROBE_TEXTS = ["a photo of a dog", "a red bicycle leaning on a wall", "mountains at sunset", "a bowl of fruit",
               "a crowded street at night", "a baby laughing", "a white cat on a sofa", "a map of the city"]


# The flags that change how fast a CPU runs the model (fp32 SIMD width, int8 and bf16 instructions): what a
# benchmark figure is printed with, and what `auto`'s cached choice is keyed by.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile",
               "amx_bf16", "amx_int8")
# int8 dot products summed in 32 bits in one instruction. Without them (AVX2 alone) int8 kernels multiply uint8 by
# int8 in pairs summed in 16 bits, which saturate on large values.
INT8_DOT_PRODUCTS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
BF16_INSTRUCTIONS = frozenset({"avx512_bf16", "amx_bf16"})  # bf16 products in hardware; elsewhere bf16 is emulated


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's entries in /proc/cpuinfo (empty where there is none)."""
    entries: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip() and entries:
                break  # the end of the first processor
            entries.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return entries


def cpu_flags() -> set[str]:
    return set(_cpuinfo().get("flags", "").split())


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def candidates(device: str, flags: set[str], backend: str = "torch") -> list[Precision]:
    """The settings of ``backend`` worth probing on this device, best guess first. Another backend's fp32 is
    one: it may beat torch's."""
    if device.startswith("cuda"):
        return ["fp16"] if backend == "torch" else []
    bf16 = bool(flags & BF16_INSTRUCTIONS)
    dot_products = bool(flags & INT8_DOT_PRODUCTS)
    int8 = dot_products or "avx2" in flags
    if backend == "openvino":
        # OpenVINO's int8 kernels without VNNI ran at 0.62x its own fp32 on an AVX2-only EPYC (10.5 against 16.9
        # images/s, ViT-B/32, 2026-12-05), whatever the recipe: no point building the graph (minutes) to probe it.
        return (["int8"] if dot_products else []) + (["bf16"] if bf16 else []) + ["fp32"]
    if backend == "onnx":
        return ["int8", "fp32"] if int8 else ["fp32"]
    return (["bf16"] if bf16 else []) + (["int8"] if int8 else [])


def check_supported(precision: Precision, device: str) -> None:
    """Raise PrecisionNotSupportedError, saying what to use instead, for a setting the device cannot run."""
    from imgsearch_core.errors import PrecisionNotSupportedError

    on_cuda = device.startswith("cuda")
    if precision == "int8" and on_cuda:
        raise PrecisionNotSupportedError("IMGSEARCH_PRECISION=int8 runs on the CPU only; on CUDA use fp16 (or auto)")
    if precision == "fp16" and not on_cuda:
        raise PrecisionNotSupportedError(
            "IMGSEARCH_PRECISION=fp16 needs a CUDA device; on a CPU use bf16 or int8 (or auto)")


def autocast(precision: Precision, device: str):
    """The context the model runs in for ``precision`` (int8 changes the model instead)."""
    import torch

    if precision == "bf16":
        return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.split(":")[0], dtype=torch.float16)
    return contextlib.nullcontext()


def quantized(model):
    """A copy of ``model`` with every Linear layer in dynamic int8."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch.ao's deprecation notices, for a feature still shipped and tested
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=False)


def setting_label(backend: str, precision: str) -> str:
    """How a setting is named in messages and figures: "bf16" for torch's, "onnx int8" for another backend's."""
    return precision if backend == "torch" else f"{backend} {precision}"


@dataclass
class Trial:
    precision: str
    images_per_s: float
    min_cosine: float = 1.0
    neighbour_overlap: float = 1.0
    backend: str = "torch"

    @property
    def label(self) -> str:
        return setting_label(self.backend, self.precision)

    @property
    def agrees(self) -> bool:
        return self.min_cosine >= AGREEMENT["min_cosine"] and self.neighbour_overlap >= AGREEMENT["neighbour_overlap"]


@dataclass
class Choice:
    precision: Precision
    trials: list[Trial]
    cached: bool = False
    backend: str = "torch"

    def describe(self) -> str:
        base = self.trials[0] if self.trials else None  # torch fp32, what every other setting is measured against
        parts = []
        for trial in self.trials:
            speed = f"{trial.images_per_s / base.images_per_s:.2f}x" if base and base.images_per_s else "?"
            agreement = "" if trial is base else (
                f", min cosine {trial.min_cosine:.4f}, neighbours {trial.neighbour_overlap:.2f}"
                + ("" if trial.agrees else " (below the agreement gate)"))
            parts.append(f"{trial.label} {speed}{agreement}")
        return f"precision auto -> {setting_label(self.backend, self.precision)}{' (cached)' if self.cached else ''}: " + "; ".join(parts)


def top_k_overlap(queries: np.ndarray, pool: np.ndarray, other_queries: np.ndarray, other_pool: np.ndarray, k: int,
                  same_set: bool = False) -> float:
    """Mean share of each query's k nearest pool rows (by cosine) that two embeddings of the same queries and
    pool agree on. ``same_set``: the queries are the pool, and a row is not its own neighbour."""
    k = min(k, len(pool) - int(same_set))
    if k < 1:
        return 1.0

    def nearest(q, p):
        scores = q @ p.T
        if same_set:
            np.fill_diagonal(scores, -np.inf)
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]

    ours, theirs = nearest(queries, pool), nearest(other_queries, other_pool)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ours, theirs)]))


def min_cosine(reference: np.ndarray, other: np.ndarray) -> float:
    """The lowest cosine between matching rows of two sets of unit vectors."""
    return float(np.sum(reference.astype(np.float64) * other.astype(np.float64), axis=1).min())


def agreement(images: np.ndarray, texts: np.ndarray, other_images: np.ndarray, other_texts: np.ndarray,
              k: int = PROBE_NEIGHBOURS) -> tuple[float, float]:
    """(min cosine, neighbour overlap): how well a second embedding of the same pictures and texts agrees
    with the first; the overlap is the lower of image -> image and text -> image."""
    cosine = min(min_cosine(images, other_images), min_cosine(texts, other_texts))
    overlap = min(top_k_overlap(images, images, other_images, other_images, k, same_set=True),
                  top_k_overlap(texts, images, other_texts, other_images, k))
    return cosine, overlap


def photo_like(rng: np.random.Generator, grid: tuple[int, int], size: tuple[int, int], grain: float):
    """A picture that decodes and embeds like a photo: a ``grid`` of random colours smoothed to ``size``
    (width, height), with grain."""
    from PIL import Image

    small = rng.integers(0, 256, (*grid, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
    noise = rng.normal(0, grain, field.shape)
    return Image.fromarray(np.clip(field + noise, 0, 255).astype(np.uint8), "RGB")


def probe_pictures(size: int, count: int = PROBE_IMAGES, seed: int = 1234):
    """The probe's photo-like pictures, the same every time (another ``seed``: others, as alike)."""
    rng = np.random.default_rng(seed)
    return [photo_like(rng, (4, 4), (size, size), grain=12) for _ in range(count)]


Option = tuple[str, Precision]  # (backend, precision)
BASELINE: Option = ("torch", "fp32")


def run_probe(embed_images: Callable[[Option], np.ndarray], embed_texts: Callable[[Option], np.ndarray],
              options: list[Option], repeats: int = 2,
              finished: Callable[[Option], None] = lambda option: None) -> list[Trial]:
    """Time ``embed_images(option)`` (one pass over the probe pictures) for torch fp32 and each option, fastest
    of ``repeats`` after a warm-up, and compare each option's pictures and texts with torch fp32's. ``finished``
    is told when an option has been measured."""

    def timed(option):
        vectors = embed_images(option)  # warm-up: first-call costs (kernels, caches) are not the steady speed
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            vectors = embed_images(option)
            best = min(best, time.perf_counter() - started)
        return vectors, len(vectors) / best

    images, fp32_speed = timed(BASELINE)
    texts = embed_texts(BASELINE)
    trials = [Trial("fp32", fp32_speed)]
    for backend, precision in options:
        try:
            other_images, speed = timed((backend, precision))
            other_texts = embed_texts((backend, precision))
        except Exception as exc:  # noqa: BLE001 - a setting this build cannot run is not offered
            log.warning("%s %s does not run here: %s", backend, precision, exc)
            continue
        finally:
            finished((backend, precision))
        trials.append(Trial(precision, speed, *agreement(images, texts, other_images, other_texts), backend=backend))
    return trials


def pick(trials: list[Trial]) -> Trial:
    """The fastest setting that agrees with fp32 and beats it by ``FASTER_BY``; else torch fp32 (the first trial)."""
    fp32 = trials[0]
    good = [t for t in trials[1:] if t.agrees and t.images_per_s >= FASTER_BY * fp32.images_per_s]
    return max(good, key=lambda t: t.images_per_s) if good else fp32


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
    def measuring(self):
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
            choice = Choice(entry["precision"], [Trial(**t) for t in entry["trials"]], cached=True,
                            backend=entry.get("backend", "torch"))
            if _makes_sense(choice):
                return choice
            problem = "an entry that makes no sense"
        except (OSError, UnsafeFileError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        log.warning("imgsearch: ignoring the cached precision choice in %s (%s); measuring again", self.path,
                    str(problem)[:200])
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
        temporary = None
        try:
            try:
                entries = self._entries()
            except (OSError, UnsafeFileError, ValueError, RecursionError):
                entries = {}  # unreadable: replaced by one that is
            entries[key] = {"precision": choice.precision, "backend": choice.backend,
                            "trials": [asdict(t) for t in choice.trials],
                            "measured": time.strftime("%Y-%m-%d")}
            fd, temporary = tempfile.mkstemp(prefix=".precision.json.", dir=self.path.parent)  # O_EXCL, 0600
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(entries, indent=1))
            os.replace(temporary, self.path)
            temporary = None
        except OSError as exc:
            log.warning("cannot cache the precision choice in %s: %s", self.path, exc)
        finally:
            if temporary:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)


def _makes_sense(choice: Choice) -> bool:
    """A cached choice of known settings with finite, positive measurements (a hand-edited or damaged file may
    hold anything)."""

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    known = ("fp32", "bf16", "int8", "fp16")
    backends = ("torch", "onnx", "openvino")
    return (choice.precision in known and choice.backend in backends and all(
        trial.precision in known and trial.backend in backends and number(trial.images_per_s)
        and trial.images_per_s > 0 and number(trial.min_cosine) and number(trial.neighbour_overlap)
        for trial in choice.trials))
