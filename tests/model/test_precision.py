"""IMGSEARCH_PRECISION: bf16 and int8 agree with fp32, auto picks by measuring and remembers, bad settings say why."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from imgsearch.media.safe_files import UnsafeFileError
from imgsearch.model import precision as precision_module
from imgsearch.model.agreement import agreement, min_cosine, top_k_overlap
from imgsearch.model.precision import Choice, ChoiceCache, Trial, candidates, fast_settings, pick
from imgsearch.model.runtimes import autocast
from imgsearch.model.sentence_transformer_embedder import SentenceTransformerEmbedder
from imgsearch.settings import Settings
from tests.support.photos import write_photo_set
from tests.support.processes import run_cli


def test_auto_takes_the_fastest_setting_that_agrees_with_fp32():
    trials = [Trial("fp32", 10.0), Trial("bf16", 18.0, 0.999, 1.0), Trial("int8", 25.0, 0.999, 0.80)]
    assert pick(trials).precision == "bf16"  # int8 is faster, but below the agreement gate
    trials[2].neighbour_overlap = 0.96
    assert pick(trials).precision == "int8"
    trials[2].min_cosine = 0.98
    assert pick(trials).precision == "bf16"


@pytest.mark.parametrize("speed", [8.0, 10.0, 10.9])
def test_auto_stays_fp32_unless_a_setting_is_clearly_faster(speed):
    assert pick([Trial("fp32", 10.0), Trial("bf16", speed, 1.0, 1.0)]).precision == "fp32"
    assert pick([Trial("fp32", 10.0)]).precision == "fp32"


@pytest.mark.parametrize(
    ("device", "flags", "expected"),
    [
        ("cuda", set(), ["fp16"]),
        ("cuda:1", {"avx512_bf16"}, ["fp16"]),
        ("cpu", {"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, ["bf16", "int8"]),
        ("cpu", {"amx_bf16", "amx_int8"}, ["bf16", "int8"]),
        ("cpu", {"avx2", "fma"}, ["int8"]),  # no bf16 instructions: emulated bf16 is slower than fp32
        ("cpu", {"sse4_2"}, []),
    ],
)
def test_auto_probes_only_what_the_device_runs_well(device, flags, expected):
    assert candidates(device, flags) == expected


def test_neighbour_overlap_counts_the_shared_nearest_rows():
    pool = np.eye(4, dtype=np.float32)
    queries = np.array([[1.0, 0.5, 0.1, 0.0], [0.0, 0.1, 0.5, 1.0]], dtype=np.float32)
    swapped = np.array([[1.0, 0.1, 0.5, 0.0], [0.0, 0.1, 0.5, 1.0]], dtype=np.float32)
    assert top_k_overlap(queries, pool, queries, pool, k=2) == 1.0
    assert top_k_overlap(queries, pool, swapped, pool, k=2) == 0.75  # query 0: {0, 1} against {0, 2}
    assert top_k_overlap(queries, pool, swapped, pool, k=1) == 1.0
    images = np.eye(3, dtype=np.float32)
    cosine, overlap = agreement(images, images[:1], images, images[:1])
    assert (cosine, overlap) == (1.0, 1.0)


def test_each_precision_gives_unit_vectors_close_to_fp32(tiny_model_dir, tmp_path):
    pictures = precision_module.probe_pictures(32, 6)
    texts = ["a dog on a beach", "a red bicycle"]
    fp32 = SentenceTransformerEmbedder(str(tiny_model_dir), precision="fp32")
    for setting in ("bf16", "int8"):
        fast = SentenceTransformerEmbedder(str(tiny_model_dir), precision=setting)
        assert fast.precision == setting and fast.fingerprint == fp32.fingerprint  # fingerprints are fp32
        for ours, theirs in (
            (fast.embed_images(pictures), fp32.embed_images(pictures)),
            (fast.embed_texts(texts).vectors, fp32.embed_texts(texts).vectors),
        ):
            assert ours.dtype == np.float32
            np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
            assert np.min(np.sum(ours * theirs, axis=1)) > 0.99
            assert not np.array_equal(ours, theirs)  # it really ran in another precision


def test_auto_measures_once_per_model_and_machine_and_remembers(tiny_model_dir, tmp_path, monkeypatch):
    probes = []
    real_probe = precision_module.run_probe
    monkeypatch.setattr("imgsearch.model.precision.run_probe", lambda *a, **k: probes.append(1) or real_probe(*a, **k))
    first = SentenceTransformerEmbedder(str(tiny_model_dir), precision="auto", cache_dir=tmp_path / "cache")
    assert len(probes) == 1 and not first.precision_choice.cached
    assert first.precision == first.precision_choice.precision
    assert [t.precision for t in first.precision_choice.trials][0] == "fp32"
    assert first.precision in {"fp32", *candidates("cpu", precision_module.cpu_flags())}

    second = SentenceTransformerEmbedder(str(tiny_model_dir), precision="auto", cache_dir=tmp_path / "cache")
    assert len(probes) == 1 and second.precision_choice.cached and second.precision == first.precision
    assert "(cached)" in second.precision_choice.describe()

    (tmp_path / "cache" / "precision.json").write_text("{not json")
    third = SentenceTransformerEmbedder(str(tiny_model_dir), precision="auto", cache_dir=tmp_path / "cache")
    assert len(probes) == 2 and not third.precision_choice.cached  # a broken cache is measured again
    assert json.loads((tmp_path / "cache" / "precision.json").read_text())  # and rewritten


def test_a_process_waits_for_anothers_probe_and_takes_its_choice(tiny_model_dir, tmp_path, monkeypatch, caplog):
    """An indexer and a server started together on a new machine: one probes, the other waits and reads its choice
    (two probes at once on the same cores would time each other)."""
    probes = []
    real_probe = precision_module.run_probe
    monkeypatch.setattr("imgsearch.model.precision.run_probe", lambda *a, **k: probes.append(1) or real_probe(*a, **k))
    monkeypatch.setattr("imgsearch.model.precision.candidates", lambda *a: ["int8"])  # something to probe on any CPU
    cache_dir = tmp_path / "cache"
    first = SentenceTransformerEmbedder(str(tiny_model_dir), precision="auto", backend="torch", cache_dir=cache_dir)
    measured = (cache_dir / "precision.json").read_text()
    (cache_dir / "precision.json").unlink()  # as if the other process were still measuring

    loaded = []
    with ChoiceCache(cache_dir).measuring():  # the other process's probe
        waiter = threading.Thread(
            target=lambda: loaded.append(
                SentenceTransformerEmbedder(str(tiny_model_dir), precision="auto", backend="torch", cache_dir=cache_dir)
            )
        )
        waiter.start()
        deadline = time.monotonic() + 60
        while "waiting for another imgsearch process" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "waiting for another imgsearch process" in caplog.text and waiter.is_alive()
        (cache_dir / "precision.json").write_text(measured)  # its choice, written before it lets go
    waiter.join(timeout=60)
    assert len(probes) == 1 and loaded[0].precision_choice.cached
    assert (loaded[0].backend, loaded[0].precision) == (first.backend, first.precision)


def test_a_cached_choice_is_kept_per_model(tmp_path):
    cache = ChoiceCache(tmp_path)
    cache.put("model-a", Choice("bf16", [Trial("fp32", 10.0), Trial("bf16", 17.0, 0.999, 0.97)]))
    cache.put("model-b", Choice("fp32", [Trial("fp32", 10.0)]))
    assert cache.get("model-a").precision == "bf16" and cache.get("model-b").precision == "fp32"
    assert cache.get("model-c") is None
    (tmp_path / "precision.json").write_text(json.dumps({"model-a": {"precision": "fp64", "trials": []}}))
    assert cache.get("model-a") is None  # a value imgsearch never writes is not trusted


@pytest.mark.parametrize("damage", ["nested too deep", "wrong types", "a FIFO", "a link"])
def test_a_damaged_or_planted_choice_file_is_measured_again_never_an_error(tmp_path, damage):
    cache = ChoiceCache(tmp_path / "cache")
    cache.put("model-a", Choice("bf16", [Trial("fp32", 10.0), Trial("bf16", 17.0, 0.999, 0.97)]))
    path = tmp_path / "cache" / "precision.json"
    good = path.read_text()
    if damage == "nested too deep":
        path.write_text("[" * 100_000)
    elif damage == "wrong types":
        entries = json.loads(good)
        entries["model-a"]["trials"][1]["images_per_s"] = "fast"
        path.write_text(json.dumps(entries))
    elif damage == "a FIFO":  # opening it to read would wait for a writer forever
        path.unlink()
        os.mkfifo(path)
    else:
        (tmp_path / "elsewhere.json").write_text(good)
        path.unlink()
        path.symlink_to(tmp_path / "elsewhere.json")
    found = []
    reader = threading.Thread(target=lambda: found.append(cache.get("model-a")), daemon=True)
    reader.start()
    reader.join(timeout=20)
    assert found == [None]  # neither a hang, nor a crash at startup, nor a choice read through a link
    cache.put("model-a", Choice("fp32", [Trial("fp32", 10.0)]))  # measured again, and kept in a file of its own
    assert cache.get("model-a").precision == "fp32" and not path.is_symlink()


def test_the_choice_file_is_never_written_through_a_planted_link(tmp_path):
    """The old temporary name was predictable (.precision.json.PID): a link there made imgsearch overwrite the
    file it pointed to."""
    victim = tmp_path / "aliases.json"
    victim.write_text("indexed data")
    cache_dir = tmp_path / "cache"
    cache = ChoiceCache(cache_dir)
    for pid in range(os.getpid() - 5, os.getpid() + 50):
        (cache_dir / f".precision.json.{pid}").symlink_to(victim)
    cache.put("model-a", Choice("fp32", [Trial("fp32", 10.0)]))
    assert victim.read_text() == "indexed data" and cache.get("model-a").precision == "fp32"
    assert stat.S_IMODE((cache_dir / "precision.json").stat().st_mode) == 0o600


def test_a_lock_that_is_not_a_file_of_this_user_is_refused_not_waited_on(tmp_path):
    cache = ChoiceCache(tmp_path / "cache")
    os.mkfifo(tmp_path / "cache" / "precision.lock")
    with pytest.raises(UnsafeFileError, match="refusing to wait on it"), cache.measuring():
        pass


def test_the_cache_directory_is_this_users_alone(tmp_path, imgsearch_bin, cli_env):
    """What the cache holds decides which graphs run as the model: a folder another user can write to, or a link
    in its place, is refused before the model loads; an own folder open to others is closed."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "link").symlink_to(elsewhere)
    env = {**cli_env, "IMGSEARCH_PRECISION": "auto", "IMGSEARCH_CACHE_DIR": str(tmp_path / "link")}
    refused = run_cli(imgsearch_bin, env, "index", str(write_photo_set(tmp_path / "photos")))
    assert refused.returncode != 0 and "not a folder of this user" in refused.stderr, refused.stderr
    assert list(elsewhere.iterdir()) == []

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    ChoiceCache(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o700
    if os.getuid() == 0:  # root can make a folder of another user to try
        other = tmp_path / "other"
        other.mkdir()
        os.chown(other, 54321, 54321)
        with pytest.raises(UnsafeFileError, match="not a folder of this user"):
            ChoiceCache(other)


def test_a_cache_folder_that_cannot_be_made_costs_only_the_cache(tiny_model_dir, tmp_path, caplog):
    """As in the Docker image, where ./data/cache under a root-owned /app cannot be made: auto still chooses, at
    every start, and says why it cannot remember."""
    (tmp_path / "a-file").write_text("")
    unusable = tmp_path / "a-file" / "cache"  # fails for root too
    encoder = SentenceTransformerEmbedder(str(tiny_model_dir), precision="auto", backend="auto", cache_dir=unusable)
    assert encoder.precision_choice is not None and not encoder.precision_choice.cached
    assert "cannot keep a cache in" in caplog.text and "IMGSEARCH_CACHE_DIR" in caplog.text


def test_auto_is_measured_through_imgsearch_index(tmp_path, imgsearch_bin, cli_env):
    photos = write_photo_set(tmp_path / "photos")
    env = {**cli_env, "IMGSEARCH_PRECISION": "auto"}
    first = run_cli(imgsearch_bin, env, "index", str(photos))
    assert first.returncode == 0, first.stderr
    assert "precision auto -> " in first.stderr and "(cached)" not in first.stderr and "fp32 1.00x" in first.stderr
    # A small first job waits for no export of the image tower: auto times torch's own settings; the exported
    # runtimes come later. Only the text tower is exported (seconds; text_tower.py).
    said = next(line for line in first.stderr.splitlines() if "precision auto -> " in line)
    for backend in ("onnx", "openvino"):
        assert f"; {backend} " not in said, first.stderr
    graphs = [folder.name for folder in (Path(env["IMGSEARCH_CACHE_DIR"]) / "graphs").glob("*")]
    assert all(name.startswith("text-") for name in graphs), graphs
    again = run_cli(imgsearch_bin, env, "index", str(photos))
    assert "(cached)" in again.stderr


def test_a_large_job_measures_the_exported_runtimes_first_and_a_small_one_does_not(
    settings, store, tiny_model_dir, tmp_path, monkeypatch
):
    import imgsearch.indexer.runner as runner

    encoder = SentenceTransformerEmbedder(
        str(tiny_model_dir), precision="auto", backend="auto", cache_dir=tmp_path / "cache"
    )
    exported = [option for option in fast_settings(precision_module.cpu_flags()) if option[0] != "torch"]
    assert encoder.needs_tuning == bool(exported)
    monkeypatch.setattr(runner, "TUNE_FROM", 8)
    runner.run_index([str(write_photo_set(tmp_path / "small"))], settings, encoder, store)  # 10 files
    small = [(t.backend, t.precision) for t in encoder.precision_choice.trials]
    if not exported:
        return
    assert encoder.precision_choice.complete and all(option in small for option in exported)

    again = SentenceTransformerEmbedder(
        str(tiny_model_dir), precision="auto", backend="auto", cache_dir=tmp_path / "cache"
    )
    assert again.precision_choice.cached and not again.needs_tuning  # remembered: measured once per machine
    fresh = SentenceTransformerEmbedder(
        str(tiny_model_dir), precision="auto", backend="auto", cache_dir=tmp_path / "other-cache"
    )
    monkeypatch.setattr(runner, "TUNE_FROM", 1000)
    runner.run_index([str(write_photo_set(tmp_path / "more"))], settings, fresh, store)
    assert fresh.needs_tuning  # 10 images do not pay for building graphs


@pytest.mark.parametrize(
    ("setting", "device", "says"),
    [
        ("fp16", "cpu", "needs a CUDA device; on a CPU use bf16 or int8"),
        ("int8", "cuda", "runs on the CPU only; on CUDA use fp16"),
    ],
)
def test_a_precision_the_device_cannot_run_is_refused_with_what_to_use(tiny_model_dir, setting, device, says):
    with pytest.raises(ValueError, match=says):
        precision_module.check_supported(setting, device)
    if device == "cpu":
        with pytest.raises(ValueError, match=says):
            SentenceTransformerEmbedder(str(tiny_model_dir), precision=setting)


def test_the_cli_says_in_one_line_which_precision_to_use_instead(photo_dir, imgsearch_bin, cli_env):
    result = run_cli(imgsearch_bin, cli_env, "index", str(photo_dir), "--precision", "fp16")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "imgsearch index: error: IMGSEARCH_PRECISION=fp16 needs a CUDA device; on a CPU use bf16 or int8 (or auto)"
    )


def test_an_unknown_precision_is_a_settings_error():
    with pytest.raises(ValueError, match="precision"):
        Settings(_env_file=None, precision="fp8")


def test_on_cuda_the_model_runs_under_fp16_autocast():
    """The CUDA path, checked without a GPU: fp16 and bf16 autocast on the device's type, int8 and fp32 none."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available": the context is only inspected here
        fp16 = autocast("fp16", "cuda:1")
    assert (fp16.device, fp16.fast_dtype) == ("cuda", torch.float16)
    bf16 = autocast("bf16", "cpu")
    assert (bf16.device, bf16.fast_dtype) == ("cpu", torch.bfloat16)
    assert not isinstance(autocast("fp32", "cuda"), torch.autocast)
    assert not isinstance(autocast("int8", "cpu"), torch.autocast)


# ── The agreement gate: each fast setting indexes photos into Milvus Lite as fp32 does ──────────────────


@pytest.fixture(scope="module")
def vit_b_32_dir(tmp_path_factory):
    """The real ViT-B/32 architecture with random weights: the real model's arithmetic, without a download."""
    from tests.support.models import build_local_clip

    return build_local_clip(tmp_path_factory.mktemp("models") / "vit-b-32", "vit-b-32", seed=0)


def gate_settings() -> list[tuple[str, str]]:
    """torch fp32, then every (backend, precision) this CPU runs well, of the backends installed."""
    from imgsearch.model.precision import fast_settings

    return fast_settings(precision_module.cpu_flags())


@pytest.mark.slow
def test_fast_settings_index_photos_with_the_same_neighbours_as_fp32(vit_b_32_dir, tmp_path, capsys):
    """The gate, on 48 photos indexed end to end for torch fp32 and each setting this CPU runs well, in each
    installed backend: top-10 image -> image and text -> image neighbours agree with torch fp32's at >= 0.95 mean
    overlap. A setting below it is not what `auto` picks (its probe applies the same gate to its own pictures).
    The photos are crops of real photographs (bench/photos.py); the texts, 48 queries."""
    from imgsearch.indexer.runner import run_index
    from imgsearch.model.loading import load_embedder
    from imgsearch.store import MilvusStore, release_hosted
    from tests.support.photos import QUERY_TEXTS, make_photos

    photos = tmp_path / "photos"
    make_photos(photos, 48, size=(640, 480))
    stored, texts = {}, {}
    for backend, setting in gate_settings():
        label = Trial(setting, 0, backend=backend).label
        settings = Settings(
            _env_file=None,
            milvus_uri=str(tmp_path / label.replace(" ", "-") / "milvus.db"),
            model=str(vit_b_32_dir),
            device="cpu",
            batch_size=16,
            precision=setting,
            backend=backend,
            cache_dir=tmp_path / "cache",
            thumbnail_dir=tmp_path / "thumbs",
        )
        encoder = load_embedder(settings)
        store = MilvusStore.from_settings(settings)
        try:
            assert run_index([str(photos)], settings, encoder, store).embedded == 48
            rows = sorted(store.iter_rows(fields=["path"], with_vectors=True), key=lambda r: r["path"])
            stored[label] = np.asarray([r["vector"] for r in rows], dtype=np.float32)
            texts[label] = encoder.embed_texts(QUERY_TEXTS).vectors
        finally:
            store.close()
            release_hosted(settings.milvus_uri)
    if len(stored) == 1:
        pytest.skip(
            "this CPU runs no setting faster than fp32 well (no bf16, VNNI or AVX2) and no backend is installed"
        )
    measured = {}
    for label in sorted(stored.keys() - {"fp32"}):
        images = top_k_overlap(stored["fp32"], stored["fp32"], stored[label], stored[label], 10, same_set=True)
        text = top_k_overlap(texts["fp32"], stored["fp32"], texts[label], stored[label], 10)
        measured[label] = (images, text, min_cosine(stored["fp32"], stored[label]))
    autos = [
        SentenceTransformerEmbedder(
            str(vit_b_32_dir),
            precision="auto",
            backend=backend,  # the graphs above
            cache_dir=tmp_path / "cache",
        ).precision_choice
        for backend in [*dict.fromkeys(backend for backend, _ in gate_settings()), "auto"]
    ]
    with capsys.disabled():
        for label, (images, text, cosine) in measured.items():
            print(
                f"\n{label}: image->image top-10 overlap {images:.3f}, text->image {text:.3f}, "
                f"min cosine to fp32 {cosine:.4f}"
            )
        for auto in autos:
            print(auto.describe())
    passing = {label for label, (images, text, _) in measured.items() if images >= 0.95 and text >= 0.95}
    # What auto picks passes the gate on real files, not only on its probe.
    for auto in autos:
        chosen = Trial(auto.precision, 0, backend=auto.backend).label
        assert chosen == "fp32" or chosen in passing, (auto.describe(), measured)
    # bf16 keeps the neighbours on this architecture wherever this CPU runs it; so do fp32 graphs of other backends,
    # and openvino int8 (GPTQ-rounded weights, products' outputs unquantised) where the CPU has int8 dot products
    must_pass = {"bf16", "onnx fp32", "openvino fp32", "openvino bf16"}
    if precision_module.cpu_flags() & {"avx512_vnni", "amx_int8"}:
        must_pass.add("openvino int8")
    assert not (set(measured) & must_pass) - passing, measured
