"""Each model family imgsearch loads, as a tiny random model of the real architecture built here: it indexes a
folder and answers a text and an image query through the code the CLI and the API run (run_index, SearchService).

A text query's best hit must be the image the family's own text tower puts nearest (computed here without
imgsearch where that is the point: SigLIP's padding, a pair's text model); an image query must find the image
itself first."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from imgsearch.errors import BackendNotSupportedError
from imgsearch.indexer.runner import run_index
from imgsearch.media.images import decode_image
from imgsearch.model.embedder import KNOWN_PAIRS, ModelSettingError, is_open_clip, model_identity, model_pair
from imgsearch.model.loading import load_embedder
from imgsearch.model.open_clip_embedder import OpenClipEmbedder
from imgsearch.model.sentence_transformer_embedder import SentenceTransformerEmbedder
from imgsearch.search.batching import TextBatcher
from imgsearch.search.requests import SearchRequest
from imgsearch.search.service import SearchService
from tests.support.models import (
    SIGLIP_TEXT_TOKENS,
    build_local_hf_clip,
    build_local_open_clip,
    build_local_siglip,
    build_local_text_tower,
)
from tests.support.processes import cli_environment, run_cli

QUERY_TEXT = "a red bicycle leaning on a wall"
QUERY_PHOTO = Path("trip") / "photo7.jpg"


def search(encoder, store, settings, request: dict, image: Path | None = None) -> list:
    """The hits of ``request`` (an image query names upload "0", which is ``image``), as `imgsearch search` runs it."""
    uploads = (
        [
            (
                str(image),
                decode_image(
                    image.read_bytes(),
                    str(image),
                    encoder.image_size,
                    settings.max_image_pixels,
                    settings.max_decoded_bytes,
                ),
            )
        ]
        if image
        else []
    )
    batcher = TextBatcher(encoder)
    try:
        parsed = SearchRequest.model_validate(request, context={"has_upload": bool(uploads)})
        return asyncio.run(SearchService(encoder, store, batcher).search(parsed, uploads=uploads)).results
    finally:
        batcher.close()


def index_and_search(model: str, settings, store, photo_dir: Path, text_vector=None):
    """Index ``photo_dir`` with ``model`` (the model setting), check what the collection records, then answer a
    text query and an image query. ``text_vector(text)``: what the family's text tower makes of a text, to say
    which image must come first; the loaded model's own by default. Returns the loaded model."""
    settings = settings.model_copy(update={"model": model})
    encoder = load_embedder(settings)
    report = run_index([str(photo_dir)], settings, encoder, store)
    assert (report.embedded, report.failed) == (10, [])
    assert store.model_info() == (model_identity(model), encoder.dim)  # what a later search is checked against

    rows = store.get([row["id"] for row in store.iter_metadata()], with_vectors=True).values()
    paths = [row["path"] for row in rows]
    similarity = np.array([row["vector"] for row in rows]) @ (text_vector or embedded_text(encoder))(QUERY_TEXT)
    hits = search(encoder, store, settings, {"text": QUERY_TEXT, "limit": 5})
    assert len(hits) == 5
    assert hits[0].path == paths[int(np.argmax(similarity))]
    assert hits[0].score == pytest.approx(float(similarity.max()), abs=1e-4)

    hits = search(encoder, store, settings, {"terms": [{"upload_ref": "0"}], "limit": 3}, image=photo_dir / QUERY_PHOTO)
    assert hits[0].path == str(photo_dir / QUERY_PHOTO)
    assert hits[0].score > 0.99
    return encoder


def embedded_text(encoder):
    return lambda text: encoder.embed_texts([text]).vectors[0]


def unit(vectors) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


# ── Hugging Face CLIP checkpoints (FashionCLIP, PLIP, StreetCLIP ...): no modules.json ─────────────────────────


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory) -> Path:
    return build_local_hf_clip(tmp_path_factory.mktemp("models") / "hf-clip", "tiny", seed=0)


def test_a_hugging_face_clip_checkpoint_indexes_and_answers_text_and_image_queries(
    hf_clip_dir, encoder, settings, store, photo_dir
):
    loaded = index_and_search(str(hf_clip_dir), settings, store, photo_dir)
    assert not (hf_clip_dir / "modules.json").exists()
    # The same weights as the tiny sentence-transformers CLIP: the same model, whichever way it was saved.
    assert (loaded.dim, loaded.image_size, loaded.max_text_tokens) == (encoder.dim, encoder.image_size, 77)
    assert np.allclose(loaded.fingerprint, encoder.fingerprint, atol=1e-5)
    assert loaded.logit_scale == pytest.approx(encoder.logit_scale)


# ── SigLIP and SigLIP 2 ──────────────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module", params=[1, 2], ids=["siglip", "siglip2-naflex"])
def siglip_dir(request, tmp_path_factory) -> Path:
    return build_local_siglip(
        tmp_path_factory.mktemp("models") / f"siglip{request.param}", seed=0, version=request.param
    )


@pytest.fixture(scope="module")
def siglip(siglip_dir) -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(str(siglip_dir), batch_size=8)


def siglip_reference(model_dir: Path):
    """What transformers itself makes of texts, padded to max_length as SigLIP was trained (and as the model cards
    say to call it): unit vectors."""
    import torch
    from transformers import AutoModel, AutoProcessor

    model, processor = AutoModel.from_pretrained(model_dir).eval(), AutoProcessor.from_pretrained(model_dir)

    def embed(texts: list[str]) -> np.ndarray:
        inputs = processor(text=texts, padding="max_length", max_length=SIGLIP_TEXT_TOKENS, return_tensors="pt")
        with torch.no_grad():
            features = model.get_text_features(**inputs)
        return unit(getattr(features, "pooler_output", features).numpy())

    return embed


def test_siglip_texts_are_padded_as_trained_so_a_text_embeds_alike_alone_and_in_any_batch(siglip, siglip_dir):
    short, long = "a cat", "a long caption about a dog running along the beach at sunset"
    alone = [siglip.embed_texts([text]).vectors[0] for text in (short, long)]
    together = siglip.embed_texts([short, long]).vectors
    reversed_ = siglip.embed_texts([long, short]).vectors
    for i, text_alone in enumerate(alone):
        assert np.allclose(together[i], text_alone, atol=1e-5)
        assert np.allclose(reversed_[1 - i], text_alone, atol=1e-5)
    assert np.allclose(together, siglip_reference(siglip_dir)([short, long]), atol=1e-5)


def test_siglip_reports_its_input_size_token_limit_and_temperature(siglip, siglip_dir):
    naflex = "siglip2" in siglip_dir.name
    assert siglip.image_size == (256 if naflex else 32)  # NaFlex: 256 patches of 16 pixels make a 256-pixel square
    assert siglip.max_text_tokens == SIGLIP_TEXT_TOKENS
    assert siglip.embed_texts(["word " * 70]).truncated == [True]
    assert siglip.logit_scale == pytest.approx(10.0)  # exp(logit_scale) as built, not a default


def test_siglip_indexes_and_answers_text_and_image_queries(siglip_dir, settings, store, photo_dir):
    reference = siglip_reference(siglip_dir)
    index_and_search(str(siglip_dir), settings, store, photo_dir, text_vector=lambda text: reference([text])[0])


# ── A multilingual text model paired with a CLIP image tower ─────────────────────────────────────────────────


@pytest.fixture(scope="module")
def text_tower_dir(tmp_path_factory) -> Path:
    return build_local_text_tower(tmp_path_factory.mktemp("models") / "multilingual-text", dim=16, seed=0)


@pytest.fixture(scope="module")
def text_tower(text_tower_dir):
    """The text model alone, through sentence-transformers: what a pair's queries must be embedded by."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(text_tower_dir), device="cpu")
    return lambda text: unit(model.encode([text]))[0]


def test_a_pair_embeds_images_with_the_image_model_and_texts_with_the_text_model(
    tiny_model_dir, text_tower_dir, text_tower, encoder, settings, store, photo_dir
):
    pair = f"{tiny_model_dir}+{text_tower_dir}"
    loaded = index_and_search(pair, settings, store, photo_dir, text_vector=text_tower)
    assert loaded.name == f"{tiny_model_dir.resolve()}+{text_tower_dir.resolve()}" == store.model_info()[0]
    assert loaded.max_text_tokens == 128  # the text model's sentence-transformers limit, not DistilBERT's 512
    assert (loaded.image_size, loaded.logit_scale) == (encoder.image_size, encoder.logit_scale)  # the CLIP's
    # The fingerprint covers both towers: the CLIP's image half, the text model's text half.
    half = loaded.dim
    assert np.allclose(loaded.fingerprint[half:], encoder.fingerprint[half:], atol=1e-5)
    assert not np.allclose(loaded.fingerprint[:half], encoder.fingerprint[:half], atol=1e-2)
    german = "ein rotes Fahrrad lehnt an der Wand"
    assert np.allclose(loaded.embed_texts([german]).vectors[0], text_tower(german), atol=1e-5)


def test_a_pair_is_named_by_both_models_and_a_known_text_model_alone_means_its_pair(tmp_path):
    known = "clip-ViT-B-32+sentence-transformers/clip-ViT-B-32-multilingual-v1"
    assert {model_identity(name) for name in KNOWN_PAIRS} == {known}
    assert model_pair("clip-ViT-B-32-multilingual-v1") == (
        "clip-ViT-B-32",
        "sentence-transformers/clip-ViT-B-32-multilingual-v1",
    )
    assert model_identity(known) == known and model_pair("clip-ViT-B-32") == ("clip-ViT-B-32", None)
    for side in ("image", "text"):
        (tmp_path / side).mkdir()
    assert (
        model_identity(f"{os.path.relpath(tmp_path / 'image')}+org/text")
        == f"{(tmp_path / 'image').resolve()}+org/text"
    )
    identity = model_identity(f"org/image+{os.path.relpath(tmp_path / 'text')}")
    assert identity == f"org/image+{(tmp_path / 'text').resolve()}"
    assert model_identity(identity) == identity  # what the collection recorded names the same pair again
    (tmp_path / "a+b").mkdir()
    assert model_pair(str(tmp_path / "a+b")) == (str(tmp_path / "a+b"), None)  # a directory is one model


@pytest.mark.parametrize("setting", ["clip+", "+text", "a+b+c", "clip+hf-hub:org/open-clip"])
def test_a_malformed_pair_is_refused_with_the_syntax(setting):
    with pytest.raises(ModelSettingError, match="IMAGE_MODEL\\+TEXT_MODEL|open_clip"):
        model_pair(setting)


def test_a_pair_on_another_backend_is_refused_before_loading(tiny_model_dir, text_tower_dir):
    pytest.importorskip("onnxruntime", reason="the onnx extra decides first whether the backend exists")
    with pytest.raises(BackendNotSupportedError, match="pair"):
        SentenceTransformerEmbedder(f"{tiny_model_dir}+{text_tower_dir}", backend="onnx")


def test_backend_auto_measures_a_pair_in_torch_only(tiny_model_dir, text_tower_dir, tmp_path):
    pair = SentenceTransformerEmbedder(
        f"{tiny_model_dir}+{text_tower_dir}", precision="auto", backend="auto", cache_dir=tmp_path
    )
    assert {t.backend for t in pair.precision_choice.trials} == {"torch"} and pair.backend == "torch"
    assert not (tmp_path / "graphs").exists()


def test_the_imgsearch_command_indexes_and_searches_with_a_pair(
    imgsearch_bin, tiny_model_dir, text_tower_dir, photo_dir, tmp_path
):
    env = cli_environment(tmp_path / "data", tiny_model_dir)
    env["IMGSEARCH_MODEL"] = f"{tiny_model_dir}+{text_tower_dir}"
    indexed = run_cli(imgsearch_bin, env, "index", str(photo_dir), "--json")
    assert indexed.returncode == 0, indexed.stderr
    assert json.loads(indexed.stdout)["embedded"] == 10
    found = run_cli(imgsearch_bin, env, "search", "--image", str(photo_dir / QUERY_PHOTO), "-k", "3", "--json")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)[0]["path"] == str(photo_dir / QUERY_PHOTO)


# ── open_clip (the [openclip] extra) ─────────────────────────────────────────────────────────────────────────


@pytest.mark.openclip
def test_hub_names_and_open_clip_directories_go_to_open_clip(tmp_path, tiny_model_dir):
    assert is_open_clip("hf-hub:imageomics/bioclip")
    assert not is_open_clip("clip-ViT-B-32") and not is_open_clip(str(tiny_model_dir))
    (tmp_path / "open_clip_config.json").write_text("{}")
    assert is_open_clip(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")  # also a Hugging Face checkpoint: sentence-transformers loads it
    assert not is_open_clip(str(tmp_path))


@pytest.mark.openclip
def test_without_the_extra_an_open_clip_model_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if not installed
    with pytest.raises(ModelSettingError, match=r"imgsearch\[openclip\]"):
        OpenClipEmbedder("hf-hub:imageomics/bioclip")


@pytest.fixture(scope="module")
def open_clip_dir(tmp_path_factory) -> Path:
    pytest.importorskip(
        "open_clip",
        reason="open_clip models need the [openclip] extra (open_clip_torch, which "
        "needs torchvision): make install-openclip makes .venv-openclip, where "
        "make test runs this test",
    )
    return build_local_open_clip(tmp_path_factory.mktemp("models") / "open-clip", seed=0)


@pytest.mark.openclip
def test_an_open_clip_directory_indexes_and_answers_text_and_image_queries(open_clip_dir, settings, store, photo_dir):
    import open_clip
    import torch

    network, _, _ = open_clip.create_model_and_transforms(f"local-dir:{open_clip_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{open_clip_dir}")

    def text_vector(text: str) -> np.ndarray:
        with torch.no_grad():
            return unit(network.eval().encode_text(tokenizer([text])).numpy())[0]

    loaded = index_and_search(str(open_clip_dir), settings, store, photo_dir, text_vector=text_vector)
    assert (loaded.name, loaded.dim, loaded.image_size, loaded.max_text_tokens) == (
        str(open_clip_dir.resolve()),
        16,
        32,
        77,
    )
    assert loaded.embed_texts(["y " * 75, "y " * 76]).truncated == [False, True]  # 77 with start and end
    assert loaded.logit_scale == pytest.approx(float(network.logit_scale.detach().exp()))


def test_a_model_that_cannot_load_is_named_in_one_error(settings, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    for model in (str(broken), str(tmp_path / "no" / "such" / "model")):
        with pytest.raises(ModelSettingError, match=f"model '{model}' cannot be loaded"):
            load_embedder(settings.model_copy(update={"model": model}))


def test_a_pair_whose_folders_have_a_plus_in_their_path_is_refused(tmp_path, monkeypatch):
    """The collection records a pair as IMAGE+TEXT of absolute paths: a + inside one would not split back."""
    (tmp_path / "c++" / "image").mkdir(parents=True)
    (tmp_path / "c++" / "text").mkdir()
    monkeypatch.chdir(tmp_path / "c++")
    with pytest.raises(ModelSettingError, match="no \\+ in their names"):
        model_identity("image+text")


def test_a_local_folder_named_like_a_known_pair_is_that_folder(tmp_path, monkeypatch):
    (tmp_path / "clip-ViT-B-32-multilingual-v1").mkdir()
    monkeypatch.chdir(tmp_path)
    assert model_pair("clip-ViT-B-32-multilingual-v1") == ("clip-ViT-B-32-multilingual-v1", None)
    assert model_identity("clip-ViT-B-32-multilingual-v1") == str(tmp_path / "clip-ViT-B-32-multilingual-v1")


def test_texts_embedded_from_several_threads_at_once_all_succeed(encoder):
    """The API's batcher, a tag job and a migration's evaluation can embed texts at the same moment: counting a
    text's tokens set the shared tokenizer's truncation under another thread's encode, which then failed."""
    errors: list[str] = []
    batches = [["word " * (i % 30), "a cat"] for i in range(30)]  # from no word to past the 77-token limit
    alone = [encoder.embed_texts(texts) for texts in batches]
    assert any(embedded.truncated[0] for embedded in alone) and not all(embedded.truncated[0] for embedded in alone)

    def embed_many():
        try:
            for _ in range(5):
                for texts, expected in zip(batches, alone):
                    embedded = encoder.embed_texts(texts)
                    assert embedded.truncated == expected.truncated
                    assert np.allclose(embedded.vectors, expected.vectors, atol=1e-5)
        except Exception as exc:  # noqa: BLE001 - any failure in a thread is the finding
            errors.append(repr(exc))

    threads = [threading.Thread(target=embed_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
