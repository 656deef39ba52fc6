"""A model's text tower exported once, with its tokenizer, so that a query runs without torch.

A text query is one short text: a forward pass of milliseconds, behind seconds of importing torch and
sentence-transformers and loading both towers. ``TextGraphs.build`` exports the text tower of a loaded
sentence-transformers CLIP-style model (one ONNX export, from which the other runtimes' graphs are made) and
saves the tokenizer set as sentence-transformers uses it, truncation and padding included. ``FastTextEmbedder``
then needs only ``tokenizers`` and ONNX Runtime or OpenVINO: ``imgsearch search`` with no server running
answers in about a second (docs/search.md), and the server runs the setting ``text_tower.choose_text`` found
fastest for one query.

The folder is ``cache_dir/graphs/text-<key>/text/``, keyed by the model's identity (what a collection records),
and holds the fingerprint of the weights it was exported from (what they make of fixed probes, recorded with every
collection too): it is run only for a collection whose fingerprint matches, and exported again when the weights
under that name change. It is built in a private folder and renamed into place, as every graph is
(``runtimes.build_once``), and only folders and files of this user that nobody else may write in are read.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from imgsearch.errors import ImgsearchError
from imgsearch.media.safe_files import UnsafeFileError, read_own_file
from imgsearch.model.agreement import TEXT_PROBE
from imgsearch.model.embedder import TextEmbedding, fingerprints_match
from imgsearch.model.runtimes import (
    build_once,
    dynamic_int8,
    graph_runner,
    installed,
    own_file,
    tower_inputs,
    tower_module,
)

FILES = {  # what runs each exported setting, in the text folder
    ("onnx", "fp32"): "tower.onnx",
    ("onnx", "int8"): "tower-int8.onnx",
    ("openvino", "fp32"): "tower.xml",
    ("openvino", "bf16"): "tower.xml",  # the same graph, run with OpenVINO's bf16 inference hint
}
_MAX_META_BYTES = 64 * 1024
_MAX_TOKENIZER_BYTES = 64 * 1024 * 1024


class TextGraphError(ImgsearchError):
    """The text tower cannot run outside torch as sentence-transformers runs it (another tokenizer, a model of
    another shape): it stays in torch."""


def text_folder(cache_dir: Path, model: str) -> Path:
    """Where the exported text tower of ``model`` lives (the parent of its ``text/`` folder)."""
    return Path(cache_dir) / "graphs" / f"text-{hashlib.sha256(model.encode()).hexdigest()[:16]}"


def exported_settings() -> list[tuple[str, str]]:
    """The exported text settings this installation can build: onnx's with the onnx extra, openvino's with its."""
    return [option for option in FILES if installed(*option)]


def build(
    folder: Path, transformer: Any, facts: dict[str, Any], guard: AbstractContextManager
) -> list[tuple[str, str]]:
    """Export the text tower of ``transformer`` (a sentence-transformers Transformer with a text modality) into
    ``folder/text`` unless it is there for these weights; returns the exported settings it holds. ``facts``: the
    model's name, dim, fingerprint, max_text_tokens and logit_scale, saved beside the graphs for
    ``FastTextEmbedder``. ``guard`` is held around each use of the model's processor, which other threads share."""
    from imgsearch.model.runtimes import remove_graphs

    try:
        exported = json.loads(read_own_file(_own(folder / "text" / "tower.json"), _MAX_META_BYTES))["fingerprint"]
        if not fingerprints_match(exported, facts["fingerprint"]):
            remove_graphs(folder)  # other weights under this name: exported again, and measured again
    except Exception:  # noqa: BLE001 - absent, or unreadable: build_once makes it (again)
        pass
    text = build_once(folder, "text", "onnx", "fp32", lambda target: _export(transformer, facts, target, guard))
    return [option for option in exported_settings() if os.path.exists(text.parent / FILES[option])]


def _export(transformer: Any, facts: dict[str, Any], target: Path, guard: AbstractContextManager) -> None:
    import torch

    with guard:
        tokenizer = _tokenizer(transformer, facts["max_text_tokens"], facts["fixed_length"])
        features = transformer.preprocess(["a photo of a dog"])
    names = tower_inputs(transformer, "text", features)
    config = transformer.modality_config["text"]
    tower = tower_module(transformer.model, config["method"], config["method_output_name"], names).eval()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python branches the tower takes on every input
        torch.onnx.export(
            tower,
            tuple(features[name] for name in names),
            str(target / FILES["onnx", "fp32"]),
            input_names=names,
            output_names=["embedding"],
            dynamic_axes={name: {0: "batch", 1: "tokens"} for name in names} | {"embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    tokenizer.save(str(target / "tokenizer.json"))
    (target / "tower.json").write_text(json.dumps({**facts, "inputs": names}))
    _derive(target)


def _derive(target: Path) -> None:
    """The other runtimes' graphs, made from the fp32 ONNX export: onnx int8, openvino's IR."""
    fp32 = target / FILES["onnx", "fp32"]
    if installed("onnx", "int8"):
        dynamic_int8(fp32, target / FILES["onnx", "int8"])
    if installed("openvino"):
        from imgsearch.model.runtimes import openvino_module

        openvino = openvino_module()
        openvino.save_model(
            openvino.Core().read_model(str(fp32)), target / FILES["openvino", "fp32"], compress_to_fp16=False
        )


def _tokenizer(transformer: Any, max_tokens: int | None, fixed_length: bool):
    """The model's fast tokenizer set to truncate and pad as sentence-transformers does; TextGraphError unless
    it gives the same tokens as the model's own processor on the probe texts, alone and as a batch."""
    from tokenizers import Tokenizer

    slow = getattr(transformer, "tokenizer", None) or getattr(transformer.processor, "tokenizer", None)
    backend = getattr(slow, "backend_tokenizer", None)
    if backend is None or slow.pad_token_id is None:
        raise TextGraphError("the model's tokenizer has no fast (Rust) form")
    tokenizer = Tokenizer.from_str(backend.to_str())
    if max_tokens:
        tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.enable_padding(
        pad_id=slow.pad_token_id, pad_token=slow.pad_token, length=max_tokens if fixed_length else None
    )
    for texts in [[text] for text in TEXT_PROBE] + [TEXT_PROBE]:
        expected = transformer.preprocess(texts)
        encoded = tokenizer.encode_batch(texts)
        same_ids = np.array_equal(np.array([e.ids for e in encoded]), expected["input_ids"].numpy())
        mask = expected.get("attention_mask")
        same_mask = mask is None or np.array_equal(np.array([e.attention_mask for e in encoded]), mask.numpy())
        if not (same_ids and same_mask):
            raise TextGraphError(f"the fast tokenizer gives other tokens than the model's processor for {texts[0]!r}")
    return tokenizer


class FastTextEmbedder:
    """The text half of an ``Embedder``, run from an exported text tower without torch: what ``imgsearch search``
    needs for a text query. ``embed_images`` is not there: an image query loads the whole model."""

    device = "cpu"
    image_size = 224  # unused: no images are embedded here

    def __init__(self, folder: Path, backend: str, precision: str, fingerprint: list[float]):
        from tokenizers import Tokenizer

        if not _private(folder, levels=3):  # text/, this model's, graphs/
            raise UnsafeFileError(str(folder), "not a folder of this user that nobody else may write in")
        facts = json.loads(read_own_file(_own(folder / "tower.json"), _MAX_META_BYTES))
        if not fingerprints_match(facts["fingerprint"], fingerprint):
            raise TextGraphError(f"{folder} was exported from other weights")
        self.name: str = facts["model"]
        self.dim = int(facts["dim"])
        self.fingerprint = [float(v) for v in facts["fingerprint"]]
        self.max_text_tokens: int | None = facts["max_text_tokens"]
        self.logit_scale = float(facts["logit_scale"])
        self.backend, self.precision = backend, precision
        self._inputs: list[str] = list(facts["inputs"])
        if not self._inputs or not set(self._inputs) <= {"input_ids", "attention_mask"}:
            raise TextGraphError(f"{folder}: a text tower of other inputs ({self._inputs!r})")
        tokenizer = read_own_file(_own(folder / "tokenizer.json"), _MAX_TOKENIZER_BYTES)
        self._tokenizer = Tokenizer.from_str(tokenizer.decode())
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        graph = _own(folder / FILES[backend, precision])
        if backend == "openvino":
            _own(graph.with_suffix(".bin"))  # its weights
        self._run: Callable[[dict], np.ndarray] = graph_runner(graph, backend, precision, threads, spin=False)

    def embed_texts(self, texts: list[str]) -> TextEmbedding:
        encoded = self._tokenizer.encode_batch(texts)
        columns = {"input_ids": [e.ids for e in encoded], "attention_mask": [e.attention_mask for e in encoded]}
        vectors = self._run({name: np.array(columns[name], dtype=np.int64) for name in self._inputs})
        vectors = vectors.astype(np.float32) / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
        return TextEmbedding(np.ascontiguousarray(vectors, dtype=np.float32), [bool(e.overflowing) for e in encoded])

    def embed_images(self, images: list) -> np.ndarray:
        raise NotImplementedError("an image query needs the whole model: see load_embedder")


def _private(folder: Path, levels: int) -> bool:
    """Whether ``folder`` and the ``levels - 1`` folders above it are real folders of this user that nobody else
    may write in: what they hold runs as the model."""
    import stat

    for level in [folder, *folder.parents][:levels]:
        try:
            info = os.lstat(level)
        except OSError:
            return False
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
            return False
    return True


def _own(path: Path) -> Path:
    """``path`` if it is a file of this user in a folder of this user; UnsafeFileError otherwise."""
    if not own_file(path):
        raise UnsafeFileError(str(path), "not a file of this user in a folder of this user; not loaded")
    return path


def fast_text_embedder(cache_dir: Path, model: str, fingerprint: list[float]) -> FastTextEmbedder | None:
    """The exported text tower of the collection's model at the setting chosen for it on this machine
    (``text_tower``), if one was built and chosen; else None: the caller loads the whole model."""
    from imgsearch.model.text_tower import cached_text_choice

    folder = text_folder(cache_dir, model) / "text"
    if not _private(folder, levels=4):  # the cache directory, graphs/, this model's, text/
        return None
    choice = cached_text_choice(folder.parent)
    if choice is None or choice.backend == "torch" or not installed(choice.backend):
        return None
    try:
        embedder = FastTextEmbedder(folder, choice.backend, choice.precision, fingerprint)
    except Exception:  # noqa: BLE001 - damaged, removed, other weights or not ours: the whole model answers
        return None
    return embedder if embedder.name == model else None
