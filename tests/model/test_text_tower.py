"""The text tower chosen for one query's latency (imgsearch/model/text_tower.py), exported with its tokenizer
(text_graphs.py), and `imgsearch search` answering with it without torch."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from imgsearch.model.agreement import TEXT_PROBE
from imgsearch.model.sentence_transformer_embedder import SentenceTransformerEmbedder
from imgsearch.model.text_graphs import FastTextEmbedder, exported_settings, fast_text_embedder, text_folder
from imgsearch.model.text_tower import TextTrial, cached_text_choice, pick_text, text_candidates

# ── Choosing: pure rules ────────────────────────────────────────────────────────────────────────────────────


def test_the_fastest_text_setting_that_agrees_with_fp32_is_chosen():
    trials = [
        TextTrial("torch", "fp32", 30.0, 60.0),
        TextTrial("onnx", "int8", 3.0, 9.0, min_cosine=0.97),  # fastest, but strays from fp32
        TextTrial("openvino", "bf16", 6.0, 12.0, min_cosine=0.999, neighbour_overlap=0.99),
        TextTrial("onnx", "fp32", 10.0, 20.0),
    ]
    assert pick_text(trials).label == "openvino bf16"
    trials[1].min_cosine = 0.995
    assert pick_text(trials).label == "onnx int8"
    trials[1].neighbour_overlap = 0.9  # the same queries would find other pictures
    assert pick_text(trials).label == "openvino bf16"


def test_torch_fp32_stays_unless_a_setting_is_clearly_faster_on_one_text():
    assert pick_text([TextTrial("torch", "fp32", 10.0, 30.0), TextTrial("onnx", "fp32", 9.5, 12.0)]).label == "fp32"


@pytest.mark.parametrize(
    "flags, exported, expected",
    [
        ({"avx2"}, [("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"), ("openvino", "bf16")],
         ["onnx fp32", "onnx int8", "openvino fp32"]),
        ({"avx512_bf16", "avx512_vnni"}, [("openvino", "fp32"), ("openvino", "bf16")], ["openvino fp32", "openvino bf16"]),
        ({"avx512_bf16", "avx2"}, [], ["bf16", "int8"]),
        (set(), [("onnx", "int8")], []),
    ],
)  # fmt: skip
def test_text_settings_are_the_ones_this_cpu_runs_well(flags, exported, expected):
    labels = [TextTrial(b, p, 0, 0).label for b, p in text_candidates(flags, exported)]
    assert labels == expected


# ── The exported text tower ─────────────────────────────────────────────────────────────────────────────────

needs_onnx = pytest.mark.skipif(("onnx", "fp32") not in exported_settings(), reason="the [onnx] extra is missing")


@pytest.fixture(scope="module")
def tuned(tiny_model_dir, tmp_path_factory):
    """The tiny model at auto, its text tower measured: (the embedder, its cache folder)."""
    cache = tmp_path_factory.mktemp("text-cache")
    encoder = SentenceTransformerEmbedder(str(tiny_model_dir), precision="auto", backend="auto", cache_dir=cache)
    assert encoder.needs_text_tuning
    encoder.tune_text()
    return encoder, cache


@needs_onnx
def test_the_exported_text_tower_gives_the_models_own_vectors_and_truncation(tuned, encoder):
    """Tokenised without the model's processor and run without torch, each probe text (a long one included) gets
    the vector torch fp32 gives it, and the same truncation flag."""
    auto, cache = tuned
    folder = text_folder(cache, auto.name) / "text"
    fast = FastTextEmbedder(folder, "onnx", "fp32", auto.fingerprint).embed_texts(TEXT_PROBE)
    reference = encoder.embed_texts(TEXT_PROBE)  # the session's torch fp32 embedder of the same weights
    assert fast.truncated == reference.truncated and any(fast.truncated)
    cosines = np.sum(fast.vectors * reference.vectors, axis=1)
    assert cosines.min() > 0.9999
    assert np.allclose(np.linalg.norm(fast.vectors, axis=1), 1, atol=1e-5)


@needs_onnx
def test_texts_run_as_the_chosen_setting_and_a_later_load_remembers_it(tuned, tiny_model_dir):
    auto, cache = tuned
    choice = auto.text_choice
    assert (auto.text_backend, auto.text_precision) == (choice.backend, choice.precision)
    assert [t.label for t in choice.trials][0] == "fp32" and len(choice.trials) > 1
    again = SentenceTransformerEmbedder(str(tiny_model_dir), precision="auto", backend="auto", cache_dir=cache)
    assert not again.needs_text_tuning and again.text_choice.cached
    assert again.text_choice.label == choice.label
    assert np.allclose(again.embed_texts(["a red bicycle"]).vectors, auto.embed_texts(["a red bicycle"]).vectors)


@needs_onnx
@pytest.mark.parametrize("damage", ["another machine", "not json", "unknown setting", "a list for a name", "a link"])
def test_a_damaged_or_foreign_choice_is_measured_again_never_an_error(tuned, tmp_path, damage):
    auto, cache = tuned
    folder = text_folder(cache, auto.name)
    saved = (folder / "choice.json").read_text()
    entry = json.loads(saved)
    try:
        (folder / "choice.json").unlink()
        if damage == "another machine":
            (folder / "choice.json").write_text(json.dumps({**entry, "machine": "a CPU elsewhere|avx2"}))
        elif damage == "not json":
            (folder / "choice.json").write_text("{")
        elif damage == "unknown setting":
            (folder / "choice.json").write_text(json.dumps({**entry, "backend": "tensorrt"}))
        elif damage == "a list for a name":
            (folder / "choice.json").write_text(json.dumps({**entry, "backend": ["onnx"]}))
        else:
            (tmp_path / "planted.json").write_text(saved)
            (folder / "choice.json").symlink_to(tmp_path / "planted.json")
        assert cached_text_choice(folder) is None
        assert fast_text_embedder(cache, auto.name, auto.fingerprint) is None
    finally:
        (folder / "choice.json").unlink()
        (folder / "choice.json").write_text(saved)


@needs_onnx
def test_a_text_tower_of_other_weights_or_one_removed_is_not_run_and_the_model_still_loads(tuned, tiny_model_dir):
    """The text folder is the model's: weights changed under the same name give another fingerprint, and a
    collection of them is searched by the whole model; a remembered setting whose graph is gone is measured
    again, never an error at load."""
    auto, cache = tuned
    other = [-v for v in auto.fingerprint]
    assert fast_text_embedder(cache, auto.name, other) is None
    graph = text_folder(cache, auto.name) / "text" / "tower-int8.onnx"
    saved = graph.read_bytes()
    try:
        for path in (text_folder(cache, auto.name) / "text").glob("tower*"):
            path.rename(path.with_name("gone-" + path.name))
        again = SentenceTransformerEmbedder(str(tiny_model_dir), precision="auto", backend="auto", cache_dir=cache)
        assert again.needs_text_tuning and again.embed_texts(["a dog"]).vectors.shape == (1, again.dim)
        assert fast_text_embedder(cache, auto.name, auto.fingerprint) is None
    finally:
        for path in (text_folder(cache, auto.name) / "text").glob("gone-*"):
            path.rename(path.with_name(path.name.removeprefix("gone-")))
    assert graph.read_bytes() == saved


@needs_onnx
def test_a_query_run_by_the_exported_text_tower_does_not_wait_behind_a_batch_of_images(tuned):
    """While an indexing job's batch of images runs in torch (it holds the model: seconds for 32 photos), a text
    query that the exported text tower answers goes ahead."""
    import threading

    auto, _ = tuned
    assert auto.text_backend != "torch"
    answered = []
    with auto._lock:  # what embed_images holds while a batch runs
        query = threading.Thread(target=lambda: answered.append(auto.embed_texts(["a dog on a beach"])))
        query.start()
        query.join(timeout=30)
        assert answered, "the text query waited for the image batch"


def test_a_named_precision_or_a_pair_keeps_texts_as_images(tiny_model_dir, tmp_path):
    named = SentenceTransformerEmbedder(str(tiny_model_dir), precision="fp32", backend="auto", cache_dir=tmp_path)
    assert not named.needs_text_tuning and named.tune_text() is None
    assert (named.text_backend, named.text_precision) == ("torch", "fp32")


# ── `imgsearch search` with no server ──────────────────────────────────────────────────────────────────────


def _search(imgsearch_bin: str, env: dict[str, str], cwd: Path) -> list[str]:
    done = subprocess.run(
        [imgsearch_bin, "search", "a red square", "-k", "3", "--json"],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [hit["path"] for hit in json.loads(done.stdout)]


@needs_onnx
def test_after_imgsearch_index_a_cli_search_runs_the_text_tower_without_torch(
    photo_dir, imgsearch_bin, cli_env, tmp_path
):
    """The first `imgsearch index` at auto measures the text tower; then `imgsearch search` with no server
    answers with it, torch unimportable, with the results of the whole model in fp32; without the exported
    tower it loads the whole model."""
    env = {**cli_env, "IMGSEARCH_PRECISION": "auto", "IMGSEARCH_BACKEND": "auto"}
    done = subprocess.run(
        [imgsearch_bin, "index", str(photo_dir)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert "text tower ->" in done.stderr
    full = _search(imgsearch_bin, {**env, "IMGSEARCH_PRECISION": "fp32"}, tmp_path)
    no_torch = tmp_path / "no-torch"
    (no_torch / "torch").mkdir(parents=True)
    (no_torch / "torch" / "__init__.py").write_text("raise ImportError('torch was imported')\n")
    started = time.monotonic()
    assert _search(imgsearch_bin, {**env, "PYTHONPATH": str(no_torch)}, tmp_path) == full
    assert time.monotonic() - started < 60
    graphs = Path(env["IMGSEARCH_CACHE_DIR"]) / "graphs"
    for folder in graphs.glob("text-*"):
        os.rename(folder, folder.with_name("removed-" + folder.name))
    assert _search(imgsearch_bin, env, tmp_path) == full  # the whole model, as before


@needs_onnx
def test_the_server_measures_the_text_tower_after_start_and_health_says_what_runs_each(
    tiny_model_dir, settings, photo_dir, tmp_path
):
    """A server at auto answers at once, with texts run as images are; in the background it measures the text
    tower, switches texts to the chosen setting, and /health says what runs each tower."""
    from fastapi.testclient import TestClient

    from imgsearch.indexer.runner import run_index
    from imgsearch.search_api.main import create_app
    from imgsearch.store import MilvusStore

    store = MilvusStore.from_settings(settings)
    run_index([str(photo_dir)], settings, SentenceTransformerEmbedder(str(tiny_model_dir)), store)
    store.close()
    auto = SentenceTransformerEmbedder(
        str(tiny_model_dir), precision="auto", backend="auto", cache_dir=tmp_path / "fresh-cache"
    )
    with TestClient(create_app(settings, encoder=auto)) as client:
        deadline = time.monotonic() + 300
        while auto.needs_text_tuning:
            assert client.post("/search", json={"text": "a red square", "limit": 3}).status_code == 200
            assert time.monotonic() < deadline, "the text tower was not measured in the background"
            time.sleep(0.2)
        health = client.get("/health").json()
        assert health["text_runs"] == f"{auto.text_choice.backend} {auto.text_choice.precision}"
        assert health["runs"] == f"{auto.backend} {auto.precision}"
        assert auto.text_choice.backend != "torch"  # on the tiny model, any exported graph beats torch's overhead
        assert client.post("/search", json={"text": "a red square", "limit": 3}).json()["results"]


# ── The agreement gate for texts, on the real ViT-B/32 architecture and photos ─────────────────────────────────


@pytest.mark.slow
@needs_onnx
def test_text_settings_find_the_same_photos_as_fp32_and_auto_picks_one_that_does(tmp_path, capsys):
    """The gate for the text tower: 48 photos embedded by torch fp32 (crops of real photographs), 48 queries;
    each text setting this CPU runs well finds the same top-10 photos as torch fp32 for the queries at >= 0.95
    mean overlap, with every query's cosine to fp32 >= 0.99, wherever it must (the fp32 graphs, bf16), and the
    setting auto picks always does (its probe applies the same gate to its own pictures)."""
    from PIL import Image

    from imgsearch.model.agreement import min_cosine, top_k_overlap
    from imgsearch.model.cpu import cpu_flags
    from tests.support.models import build_local_clip
    from tests.support.photos import QUERY_TEXTS, make_photos

    model = build_local_clip(tmp_path / "vit-b-32", "vit-b-32", seed=0)
    make_photos(tmp_path / "photos", 48, size=(640, 480))
    auto = SentenceTransformerEmbedder(str(model), precision="auto", backend="auto", cache_dir=tmp_path / "cache")
    choice = auto.tune_text()
    photos = [Image.open(path).convert("RGB") for path in sorted((tmp_path / "photos").glob("*.jpg"))]
    stored = auto.encode(photos, ("torch", "fp32"))
    reference = auto.encode(QUERY_TEXTS, ("torch", "fp32"), texts=True)
    folder = text_folder(tmp_path / "cache", auto.name) / "text"
    measured = {}
    for backend, precision in text_candidates(cpu_flags(), exported_settings()):
        vectors = FastTextEmbedder(folder, backend, precision, auto.fingerprint).embed_texts(QUERY_TEXTS).vectors
        overlap = top_k_overlap(reference, stored, vectors, stored, 10)
        measured[TextTrial(backend, precision, 0, 0).label] = (overlap, min_cosine(reference, vectors))
    with capsys.disabled():
        print("\n" + choice.describe())
        for label, (overlap, cosine) in measured.items():
            print(f"{label}: text->image top-10 overlap {overlap:.3f}, min cosine to fp32 {cosine:.4f}")
    passing = {label for label, (overlap, cosine) in measured.items() if overlap >= 0.95 and cosine >= 0.99}
    assert choice.label == "fp32" or choice.label in passing, measured
    assert not ({"onnx fp32", "openvino fp32", "openvino bf16"} & set(measured)) - passing, measured


@needs_onnx
def test_a_text_folder_that_others_may_write_in_is_not_run(tuned):
    """What the text folder holds runs as the model: a folder another user may write in is never loaded."""
    auto, cache = tuned
    folder = text_folder(cache, auto.name)
    assert fast_text_embedder(cache, auto.name, auto.fingerprint) is not None
    for level in (folder / "text", folder, cache / "graphs"):
        mode = level.stat().st_mode
        try:
            level.chmod(0o777)
            assert fast_text_embedder(cache, auto.name, auto.fingerprint) is None, level
        finally:
            level.chmod(mode)
