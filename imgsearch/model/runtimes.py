"""The model's two towers run by torch, ONNX Runtime or OpenVINO: ``IMGSEARCH_BACKEND``.

- ``auto`` (the default): with ``IMGSEARCH_PRECISION=auto``, the probe (imgsearch/precision.py) times every
  setting this CPU runs well in torch and in each installed backend, and keeps the fastest that agrees with torch
  fp32. With a precision named, or on CUDA, or for a model only torch runs (a pair, open_clip): torch.
- ``torch``: sentence-transformers runs the model; precisions as imgsearch/precision.py says.
- ``onnx`` (``pip install 'imgsearch[onnx]'``): each tower exported to ONNX and run by ONNX Runtime, in fp32, or
  int8 (the graph's matrix products quantised dynamically: int8 weights with a scale per output channel,
  activations quantised per batch).
- ``openvino`` (``pip install 'imgsearch[openvino]'``): each tower converted to OpenVINO, in fp32, bf16
  (OpenVINO's inference precision; native on CPUs with AVX512_BF16 or AMX), or int8: the image tower's matrix
  products quantised statically once (int8 weights per output channel rounded by GPTQ, 8-bit activations with
  calibrated ranges: imgsearch/int8.py), which OpenVINO runs as int8 kernels (fast with VNNI or AMX; slower
  than its fp32 on AVX2 alone); its text tower runs in fp32.

The exported graphs are kept in ``cache_dir/graphs/``, one folder per model, weights (their fingerprint), backend,
precision and library versions. The first use builds them (5-10 s for ViT-B/32 on 2 cores; openvino int8's image
tower 2-3 minutes, for its calibration and GPTQ) and says so; later runs load them in seconds. Inputs are prepared
by the model's own sentence-transformers processor, so every backend sees the same pixels and tokens; only the
towers run elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import re
import shutil
import socket
import stat
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from imgsearch.errors import BackendNotSupportedError
from imgsearch.media.safe_files import private_dir
from imgsearch.model import int8
from imgsearch.model.agreement import probe_pictures
from imgsearch.model.cpu import BF16_INSTRUCTIONS, INT8_DOT_PRODUCTS, cpu_flags
from imgsearch.model.int8 import calibration_pictures, quiet_root_logger

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "int8", "fp16"]


_MODULES = {"torch": (), "onnx": ("onnxruntime", "onnx"), "openvino": ("openvino", "onnx")}  # onnx: the export
_GRAPH_FILE = {"onnx": "tower.onnx", "openvino": "tower.xml"}
_OUTPUT = "embedding"
# How a precision's graph is made, in the graph folder's key: a change here builds the graphs anew.
_RECIPE = {"onnx-int8": "dynamic int8, per-channel weights", "openvino-int8": int8.RECIPE}
_QUANTISER = ("onnxruntime",)  # what quantises openvino's int8 graphs: the openvino extra installs it too


def installed(backend: str, precision: str = "") -> bool:
    """Whether the backend's extra is installed (for ``precision``, if given)."""
    modules = _MODULES[backend] + (_QUANTISER if (backend, precision) == ("openvino", "int8") else ())
    return all(importlib.util.find_spec(module) is not None for module in modules)


def graph_folder(cache_dir: Path, model: str, fingerprint: list[float], backend: str, precision: str) -> Path:
    """Where the exported towers of these weights live: a change of weights, precision or library is a new folder."""
    import torch
    import transformers

    versions = [f"torch {torch.__version__}", f"transformers {transformers.__version__}"]
    versions += [f"{module} {_version(module)}" for module in _MODULES[backend]]
    recipe = _RECIPE.get(f"{backend}-{precision}")
    if (backend, precision) == ("onnx", "int8") and seven_bit_weights():
        recipe += ", 7-bit weights"
    key = json.dumps(
        [model, [round(v, 5) for v in fingerprint], backend, precision, versions] + ([recipe] if recipe else [])
    )
    return Path(cache_dir) / "graphs" / f"{backend}-{precision}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def seven_bit_weights() -> bool:
    """Whether onnx int8 keeps its weights to 7 bits (ONNX Runtime's reduce_range): on a CPU without int8 dot
    products, whose kernels sum pairs of uint8 x int8 products in 16 bits, full-range weights saturate them. On an
    AVX2-only EPYC the tiny test CLIP's lowest cosine to fp32 went from 0.994 to above 0.995 with it."""
    return not cpu_flags() & INT8_DOT_PRODUCTS


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "?"


class CompiledModel:
    """A sentence-transformers CLIP-style model whose image and text towers run in ONNX Runtime or OpenVINO.

    ``encode`` takes a list of images or a list of texts, prepares them with the model's own processor and
    returns the towers' (n, dim) float32 output (not normalised), as ``SentenceTransformer.encode`` would."""

    def __init__(self, st_model, backend: str, precision: str, folder: Path, threads: int, image_size: int):
        self._transformer = _single_transformer(st_model, backend)
        self.backend, self.precision = backend, precision
        if (backend, precision) == ("openvino", "bf16") and not cpu_flags() & BF16_INSTRUCTIONS:
            # OpenVINO drops its bf16 hint on such a CPU without a word
            log.warning(
                "imgsearch: OpenVINO runs bf16 only on CPUs with AVX512_BF16 or AMX; on this one it runs the "
                "model in fp32 (IMGSEARCH_PRECISION=auto chooses what this CPU runs well)"
            )
        self._inputs: dict[str, list[str]] = {}
        self._runs = {}
        samples = {"image": probe_pictures(image_size, 1), "text": ["a photo of a dog"]}
        for modality, sample in samples.items():
            features = self._transformer.preprocess(sample)
            self._inputs[modality] = self._input_names(modality, features)
            path = build_once(
                folder,
                modality,
                backend,
                precision,
                lambda target, m=modality, f=features: self._export(m, f, target, image_size),
            )
            self._runs[modality] = graph_runner(path, backend, precision, threads, spin=modality == "image")

    def encode(self, inputs: list, batch_size: int) -> np.ndarray:
        modality = "text" if isinstance(inputs[0], str) else "image"
        run, names = self._runs[modality], self._inputs[modality]
        parts = []
        for start in range(0, len(inputs), batch_size):
            features = self._transformer.preprocess(inputs[start : start + batch_size])
            parts.append(run({name: features[name].numpy() for name in names}))
        return np.concatenate(parts).astype(np.float32, copy=False)

    def _input_names(self, modality: str, features: dict) -> list[str]:
        return tower_inputs(self._transformer, modality, features)

    def _export(self, modality: str, features: dict, target: Path, image_size: int) -> None:
        """Write the tower of ``modality`` into the folder ``target`` (as ``_GRAPH_FILE`` names it)."""
        import torch

        config = self._transformer.modality_config[modality]
        tower = tower_module(
            self._transformer.model, config["method"], config["method_output_name"], self._inputs[modality]
        ).eval()
        example = tuple(features[name] for name in self._inputs[modality])
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracers' notes on Python branches the towers take on every input
            dynamic = {
                name: ({0: "batch", 1: "tokens"} if modality == "text" else {0: "batch"})
                for name in self._inputs[modality]
            }
            plain = self.backend == "onnx" and self.precision == "fp32"
            fp32 = target / (_GRAPH_FILE["onnx"] if plain else "tower-fp32.onnx")
            torch.onnx.export(
                tower,
                example,
                str(fp32),
                input_names=self._inputs[modality],
                output_names=[_OUTPUT],
                dynamic_axes=dynamic | {_OUTPUT: {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        if self.backend == "openvino":
            # int8 quantises the image tower only: it does the indexing's work, and one query's text is cheap in
            # fp32 (calibrated on a few probe texts, a long query strayed from fp32 by 0.5%).
            source = (
                self._quantise(fp32, target, image_size) if (self.precision, modality) == ("int8", "image") else fp32
            )
            openvino = openvino_module()
            openvino.save_model(
                openvino.Core().read_model(str(source)), target / _GRAPH_FILE["openvino"], compress_to_fp16=False
            )
            for path in {fp32, source}:
                path.unlink()
        elif self.precision == "int8":
            dynamic_int8(fp32, target / _GRAPH_FILE["onnx"])
            fp32.unlink()

    def _quantise(self, fp32: Path, target: Path, image_size: int) -> Path:
        """The image tower's ONNX graph ``fp32`` quantised statically (imgsearch/int8.py), as an ONNX QDQ graph."""
        names = self._inputs["image"]
        samples = calibration_pictures(image_size)
        feeds = [
            {name: batch[name].numpy() for name in names}
            for batch in (
                self._transformer.preprocess(samples[start : start + 8]) for start in range(0, len(samples), 8)
            )
        ]
        return int8.quantise(fp32, target / "tower-int8.onnx", feeds)


def tower_inputs(transformer: Any, modality: str, features: dict) -> list[str]:
    """The tensors a tower's method takes, of those the processor makes (pixel_values; input_ids and
    attention_mask), in the processor's order."""
    import torch

    method = getattr(transformer.model, transformer.modality_config[modality]["method"])
    accepted = set(inspect.signature(method).parameters)
    return [name for name, value in features.items() if isinstance(value, torch.Tensor) and name in accepted]


def dynamic_int8(fp32: Path, target: Path) -> None:
    """onnx int8: the fp32 graph's matrix products quantised dynamically, int8 weights with a scale per output
    channel: closer to fp32 than one per matrix (lowest cosine to fp32 over 64 photos 0.99982 against 0.99974,
    ViT-B/32) at the same speed."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_root_logger("pre-processing before quantization"):  # advice for static quantisation
        quantize_dynamic(
            str(fp32), str(target), weight_type=QuantType.QInt8, per_channel=True, reduce_range=seven_bit_weights()
        )


def openvino_module() -> Any:
    """The openvino module, with its usage telemetry off. Importing openvino (its model converter) sends an event
    to Intel's analytics from a forked process, unless the user opted out with Intel's own tool; imgsearch sends
    nothing anywhere, so this process declines for the user."""
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:  # a release without the telemetry package
        pass
    else:
        OptInChecker.check = lambda self, *args, **kwargs: ConsentCheckResult.DECLINED
    import openvino

    return openvino


def tower_module(model: Any, method: str, output: str | list[str], names: list[str]) -> Any:
    """One tower as a torch module of positional tensors, for export: the model method that sentence-transformers
    calls for the modality, and the output it reads."""
    import torch

    keys = [output] if isinstance(output, str) else list(output)

    class Tower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            result = getattr(self.model, method)(**dict(zip(names, tensors)), return_dict=True)
            for key in keys:
                result = getattr(result, key) if hasattr(result, key) else result[key]
            return result

    return Tower()


def compiles(st_model: Any) -> bool:
    """Whether onnx and openvino can run ``st_model``: one sentence-transformers Transformer with an image and a
    text tower (CLIP, SigLIP)."""
    from sentence_transformers.base.modules import Transformer

    modules = list(st_model)
    return (
        len(modules) == 1
        and isinstance(modules[0], Transformer)
        and {"image", "text"} <= set(modules[0].modality_config)
    )


def _single_transformer(st_model, backend: str):
    if not compiles(st_model):
        modules = list(st_model)
        raise BackendNotSupportedError(
            f"IMGSEARCH_BACKEND={backend} runs CLIP-style models that sentence-transformers loads as one Transformer "
            f"with an image and a text tower; this model is {[type(m).__name__ for m in modules]}: use torch"
        )
    return list(st_model)[0]


def build_once(folder: Path, modality: str, backend: str, precision: str, export: Callable[[Path], None]) -> Path:
    """The tower's graph file in ``folder/modality``, exported first if it is not there. Built in a private
    folder and renamed into place, so a killed build or a second process never leaves half a graph. Every folder
    on the way is this user's alone (``private_dir``): a graph is code the model runs, and nobody else may put one
    there."""
    for level in (folder.parent.parent, folder.parent, folder):  # the cache directory, graphs/, this setting's
        private_dir(level)
    for level in (folder.parent, folder):
        _remove_leftovers(level)
    final = folder / modality
    name = _GRAPH_FILE[backend]
    if own_file(final / name):
        return final / name
    log.warning(
        "imgsearch: building the %s %s %s graph in %s (once per model and setting; seconds for ViT-B/32, "
        "2-3 minutes for openvino int8)",
        backend,
        precision,
        modality,
        final,
    )
    building = folder / f".{modality}.{_MARK}.building"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(mode=0o700)
    try:
        export(building)
        if os.path.lexists(final) and not own_file(final / name):
            remove_graphs(final)  # what a killed removal left, or not a folder of ours: never loaded, replaced
        try:
            os.rename(building, final)
        except OSError:  # another process finished first: use its graph
            if not own_file(final / name):
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return final / name


_MARK = f"{os.getpid()}@{socket.gethostname()}"  # names this process's hidden build and removal folders
_LEFTOVER = re.compile(r"\.(?P<base>.+?)\.(?:(?P<pid>\d+)@(?P<host>.+)|\d+)\.(?P<kind>building|removing)")
_ABANDONED_AFTER_S = 24 * 3600


def _remove_leftovers(folder: Path) -> None:
    """Hidden folders that a process killed while building or removing graphs left in ``folder`` (hundreds of MB
    each): those of a process of this machine that is gone, anything being removed, and any over a day old."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        found = _LEFTOVER.fullmatch(entry.name)
        if not found or found["pid"] == str(os.getpid()) and found["host"] == socket.gethostname():
            continue
        try:
            age = time.time() - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if (
            found["kind"] == "removing"
            or age > _ABANDONED_AFTER_S
            or found["host"] == socket.gethostname()
            and not _alive(int(found["pid"]))
        ):
            log.info("imgsearch: removing %s, left by a process that stopped while it worked", entry.path)
            remove_graphs(Path(entry.path), aside_first=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process has that number now
        return True
    return True


def own_file(path: Path) -> bool:
    """``path`` is a regular file of this user in a real folder of this user (no link on the last two steps)."""
    try:
        folder, info = os.lstat(path.parent), os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(folder.st_mode)
        and folder.st_uid == os.getuid()
        and stat.S_ISREG(info.st_mode)
        and info.st_uid == os.getuid()
    )


def remove_graphs(folder: Path, aside_first: bool = True) -> None:
    """Remove a graph folder as one step: renamed aside first, so a process killed while deleting leaves a hidden
    folder (removed at a later start), never a graph folder with half its files."""
    aside = folder.with_name(f".{folder.name}.{_MARK}.removing") if aside_first else folder
    try:
        os.rename(folder, aside)
    except OSError:
        if not os.path.lexists(folder):
            return  # nothing there (or no folder above it)
        aside = folder
    try:
        if aside.is_symlink() or not aside.is_dir():
            aside.unlink()
        else:
            shutil.rmtree(aside, ignore_errors=True)
    except OSError as exc:
        log.warning("imgsearch: cannot remove %s: %s", aside, exc)


def graph_runner(
    path: Path, backend: str, precision: str, threads: int, spin: bool = True
) -> Callable[[dict], np.ndarray]:
    """A function from named numpy inputs to the tower's (n, dim) output.

    ``spin=False`` for the text tower: ONNX Runtime's threads otherwise spin for a while after each run, and the
    vector copy's scan that follows a query's encode then took 15 ms instead of 7 at 100,000 rows on two cores
    (bench/query_latency.py). OpenVINO's threads do not slow it."""
    if backend == "openvino":
        openvino = openvino_module()
        # int8: the quantised matrix products run in int8, the rest in fp32
        compiled = openvino.Core().compile_model(
            str(path),
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": threads,
            },
        )
        request = compiled.create_infer_request()

        def run(feeds):
            request.infer(list(feeds.values()))  # by position: the graph's inputs are the tower's, in order
            return np.array(request.get_output_tensor(0).data, dtype=np.float32)

        return run

    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run([_OUTPUT], feeds)[0]


def autocast(precision: Precision, device: str) -> contextlib.AbstractContextManager:
    """The context the model runs in for ``precision`` (int8 changes the model instead)."""
    import torch

    if precision == "bf16":
        return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.split(":")[0], dtype=torch.float16)
    return contextlib.nullcontext()


def quantized(model: Any) -> Any:
    """A copy of ``model`` with every Linear layer in dynamic int8."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch.ao's deprecation notices, for a feature still shipped and tested
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=False)
