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
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from imgsearch.errors import BackendNotSupportedError, PrecisionNotSupportedError
from imgsearch.model.agreement import PROBE_TEXTS, agreement, probe_pictures
from imgsearch.model.choice_cache import Choice, ChoiceCache, Trial, setting_label
from imgsearch.model.cpu import BF16_INSTRUCTIONS, INT8_DOT_PRODUCTS, cpu_flags
from imgsearch.model.runtimes import Precision, installed
from imgsearch.settings import cache_home

log = logging.getLogger(__name__)


EXPORT_SECONDS = 30  # about what building and timing one exported setting of ViT-B/32 takes on 2 cores
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
            "IMGSEARCH_PRECISION=fp16 needs a CUDA device; on a CPU use bf16 or int8 (or auto)"
        )


Option = tuple[str, Precision]  # (backend, precision)
BASELINE: Option = ("torch", "fp32")


def run_probe(
    embed_images: Callable[[Option], np.ndarray],
    embed_texts: Callable[[Option], np.ndarray],
    options: list[Option],
    repeats: int = 2,
    finished: Callable[[Option], None] = lambda option: None,
) -> list[Trial]:
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


# What each backend runs, and the modules its extra installs.
PRECISIONS: dict[str, tuple[str, ...]] = {
    "torch": ("fp32", "bf16", "int8", "fp16"),
    "onnx": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
}


def fast_settings(flags: set[str]) -> list[Option]:
    """torch fp32, then each setting this CPU runs well, in torch and in each installed backend."""
    return [
        ("torch", "fp32"),
        *[
            (backend, precision)
            for backend in ("torch", "onnx", "openvino")
            if installed(backend)
            for precision in candidates("cpu", flags, backend)
            if installed(backend, precision)
        ],
    ]


def check_backend(backend: str, precision: str, device: str) -> None:
    """Raise an error that says what to do for a backend this install or device cannot run at ``precision``."""
    if backend in ("torch", "auto"):  # auto runs what is installed and runs here
        return
    if device.startswith("cuda"):
        raise BackendNotSupportedError(f"IMGSEARCH_BACKEND={backend} runs on the CPU; on CUDA use torch")
    if not installed(backend):
        raise BackendNotSupportedError(
            f"IMGSEARCH_BACKEND={backend} needs its extra: pip install 'imgsearch[{backend}]'"
        )
    if precision != "auto" and precision not in PRECISIONS[backend]:
        raise PrecisionNotSupportedError(
            f"IMGSEARCH_BACKEND={backend} runs {', '.join(PRECISIONS[backend])}, not {precision} (or use auto)"
        )
    if precision != "auto" and not installed(backend, precision):
        raise BackendNotSupportedError(
            f"IMGSEARCH_BACKEND={backend} at {precision} quantises with onnxruntime: pip install 'imgsearch[{backend}]'"
        )


class Probed(Protocol):
    """What ``choose`` needs of a loaded model: its identity, and a way to run any option on inputs."""

    name: str
    device: str
    batch_size: int
    image_size: int
    fingerprint: list[float]

    def encode(self, inputs: list, option: Option | None = None, texts: bool = False) -> np.ndarray: ...

    def forget(self, option: Option) -> None: ...


def choose(model: Probed, cache_dir: Path | None, backend: str, complete: bool = False) -> Choice:
    """auto: the cached choice for this model, backend, device and machine, else a probe against torch fp32.

    With backend auto, a first choice measures torch's own settings only: seconds, nothing to export, so a first
    small job costs about what fp32 would. ``complete`` measures the exported graphs of every installed backend too
    (minutes, each built once): what a large job, ``imgsearch tune`` or a named backend asks for."""
    try:
        cache = ChoiceCache(cache_dir) if cache_dir else None
    except OSError:  # a folder this user cannot make: said when the model loaded; measured at every start
        cache = None
    key = ChoiceCache.key(model.name, model.fingerprint, model.device, model.batch_size, backend)
    if cache and (known := cache.get(key)) and (known.complete or not complete):
        return known
    every = (
        fast_settings(cpu_flags())[1:]
        if backend == "auto"
        else [(backend, precision) for precision in candidates(model.device, cpu_flags(), backend)]
    )
    options = every if complete or backend != "auto" else [option for option in every if option[0] == "torch"]
    if not options:
        return Choice("fp32", [], complete=options == every)
    with cache.measuring() if cache else contextlib.nullcontext():
        if cache and (known := cache.get(key)) and (known.complete or not complete):
            return known  # measured by the process this one waited for
        choice = _probe(model, options, backend, Path(cache_dir) if cache_dir else cache_home())
        choice.complete = options == every
        if cache:
            cache.put(key, choice)
        return choice


def _probe(model: Probed, options: list[Option], backend: str, cache_dir: Path) -> Choice:
    """Time torch fp32 and each option, and keep the fastest that agrees."""
    from imgsearch.model.runtimes import graph_folder, remove_graphs

    exports = [option for option in options if option[0] != "torch"]
    if exports:
        log.warning(
            "imgsearch: building and timing %s for this model, to run it as fast as it agrees with fp32 (once "
            "per model and machine; about %d s)",
            ", ".join(setting_label(*o) for o in exports),
            EXPORT_SECONDS * len(exports),
        )
    else:
        log.info(
            "imgsearch: timing %s against fp32 for this model (once per model and machine, seconds)",
            ", ".join(setting_label(*o) for o in options),
        )
    # Graphs this probe exports for settings it then does not choose are removed again: hundreds of MB each.
    new_graphs = {
        option: folder
        for option in options
        if option[0] != "torch"
        if not (folder := graph_folder(cache_dir, model.name, model.fingerprint, *option)).exists()
    }
    pictures = probe_pictures(model.image_size)
    trials = run_probe(
        lambda option: model.encode(pictures, option),
        lambda option: model.encode(PROBE_TEXTS, option, texts=True),
        options,
        finished=model.forget,
    )
    best = pick(trials)
    for option, folder in new_graphs.items():
        if option != (best.backend, best.precision):
            remove_graphs(folder)
    return Choice(best.precision, trials, backend=best.backend)
