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
import hashlib
import json
import logging
import math
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from imgsearch.errors import BackendNotSupportedError, PrecisionNotSupportedError
from imgsearch.media.safe_files import UnsafeFileError, private_dir, read_own_file
from imgsearch.model.agreement import AGREEMENT, PROBE_TEXTS, agreement, probe_pictures
from imgsearch.model.cpu import BF16_INSTRUCTIONS, INT8_DOT_PRODUCTS, SPEED_FLAGS, cpu_flags, cpu_model
from imgsearch.model.runtimes import Precision, installed
from imgsearch.settings import cache_home

log = logging.getLogger(__name__)


FASTER_BY = 1.1  # `auto` leaves fp32 only for a setting at least this much faster on the probe


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
    from imgsearch.errors import PrecisionNotSupportedError

    on_cuda = device.startswith("cuda")
    if precision == "int8" and on_cuda:
        raise PrecisionNotSupportedError("IMGSEARCH_PRECISION=int8 runs on the CPU only; on CUDA use fp16 (or auto)")
    if precision == "fp16" and not on_cuda:
        raise PrecisionNotSupportedError(
            "IMGSEARCH_PRECISION=fp16 needs a CUDA device; on a CPU use bf16 or int8 (or auto)")


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


# What each backend runs, and the modules its extra installs.
PRECISIONS: dict[str, tuple[str, ...]] = {"torch": ("fp32", "bf16", "int8", "fp16"), "onnx": ("fp32", "int8"),
                                          "openvino": ("fp32", "bf16", "int8")}


def fast_settings(flags: set[str]) -> list[Option]:
    """torch fp32, then each setting this CPU runs well, in torch and in each installed backend."""
    return [("torch", "fp32"), *[(backend, precision) for backend in ("torch", "onnx", "openvino") if installed(backend)
                                 for precision in candidates("cpu", flags, backend) if installed(backend, precision)]]


def check_backend(backend: str, precision: str, device: str) -> None:
    """Raise an error that says what to do for a backend this install or device cannot run at ``precision``."""
    if backend in ("torch", "auto"):  # auto runs what is installed and runs here
        return
    if device.startswith("cuda"):
        raise BackendNotSupportedError(f"IMGSEARCH_BACKEND={backend} runs on the CPU; on CUDA use torch")
    if not installed(backend):
        raise BackendNotSupportedError(
            f"IMGSEARCH_BACKEND={backend} needs its extra: pip install 'imgsearch[{backend}]'")
    if precision != "auto" and precision not in PRECISIONS[backend]:
        raise PrecisionNotSupportedError(
            f"IMGSEARCH_BACKEND={backend} runs {', '.join(PRECISIONS[backend])}, not {precision} (or use auto)")
    if precision != "auto" and not installed(backend, precision):
        raise BackendNotSupportedError(f"IMGSEARCH_BACKEND={backend} at {precision} quantises with onnxruntime: "
                                       f"pip install 'imgsearch[{backend}]'")


class Probed(Protocol):
    """What ``choose`` needs of a loaded model: its identity, and a way to run any option on inputs."""

    name: str
    device: str
    batch_size: int
    image_size: int
    fingerprint: list[float]

    def encode(self, inputs: list, option: Option | None = None, texts: bool = False) -> np.ndarray: ...

    def forget(self, option: Option) -> None: ...


def choose(model: Probed, cache_dir: Path | None, backend: str) -> Choice:
    """auto: the cached choice for this model, backend, device and machine, else a probe of each candidate
    against torch fp32."""
    try:
        cache = ChoiceCache(cache_dir) if cache_dir else None
    except OSError:  # a folder this user cannot make: said when the model loaded; measured at every start
        cache = None
    key = ChoiceCache.key(model.name, model.fingerprint, model.device, model.batch_size, backend)
    if cache and (known := cache.get(key)):
        return known
    if backend == "auto":  # every setting this CPU runs well, in torch and in each installed backend
        options = fast_settings(cpu_flags())[1:]
    else:
        options = [(backend, precision) for precision in candidates(model.device, cpu_flags(), backend)]
    if not options:
        return Choice("fp32", [])
    with cache.measuring() if cache else contextlib.nullcontext():
        if cache and (known := cache.get(key)):
            return known  # measured by the process this one waited for
        return _probe(model, options, backend, cache, key, Path(cache_dir) if cache_dir else cache_home())


def _probe(model: Probed, options: list[Option], backend: str, cache: ChoiceCache | None, key: str,
           cache_dir: Path) -> Choice:
    """Time torch fp32 and each option, keep the fastest that agrees, and remember it in ``cache``."""
    from imgsearch.model.runtimes import graph_folder, remove_graphs

    log.warning("imgsearch: measuring which %s runs this model fastest (once per model and machine)",
                "backend and precision" if backend == "auto" else "precision")
    # Graphs this probe exports for settings it then does not choose are removed again: hundreds of MB each.
    new_graphs = {option: folder for option in options if option[0] != "torch"
                  if not (folder := graph_folder(cache_dir, model.name, model.fingerprint, *option)).exists()}
    pictures = probe_pictures(model.image_size)
    trials = run_probe(lambda option: model.encode(pictures, option),
                       lambda option: model.encode(PROBE_TEXTS, option, texts=True), options,
                       finished=model.forget)
    best = pick(trials)
    for option, folder in new_graphs.items():
        if option != (best.backend, best.precision):
            remove_graphs(folder)
    choice = Choice(best.precision, trials, backend=best.backend)
    if cache:
        cache.put(key, choice)
    return choice
