"""IMGSEARCH_BACKEND: onnx and openvino run the same model's towers, agree with torch, build their graphs once,
and say what to do when they cannot run."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from imgsearch.media.safe_files import UnsafeFileError
from imgsearch.model import precision as decision
from imgsearch.model import precision as precision_module
from imgsearch.model import runtimes as backends
from imgsearch.model.precision import Choice, Trial, candidates, pick
from imgsearch.model.sentence_transformer_embedder import SentenceTransformerEmbedder
from tests.support import REPO
from tests.support.photos import write_photo_set
from tests.support.processes import run_cli

SETTINGS = [(backend, precision) for backend in ("onnx", "openvino") for precision in decision.PRECISIONS[backend]]


def needs(backend: str):
    return pytest.mark.skipif(
        not backends.installed(backend),
        reason=f"the [{backend}] extra is not installed (pip install 'imgsearch[{backend}]')",
    )


def installed_settings():
    return [pytest.param(b, p, marks=needs(b), id=f"{b}-{p}") for b, p in SETTINGS]


def test_auto_weighs_another_backend_against_torch_fp32():
    trials = [
        Trial("fp32", 10.0),
        Trial("fp32", 9.0, 1.0, 1.0, backend="onnx"),
        Trial("int8", 20.0, 0.999, 0.97, backend="onnx"),
    ]
    assert (pick(trials).backend, pick(trials).precision) == ("onnx", "int8")
    described = Choice("int8", trials, backend="onnx").describe()
    assert described.startswith("precision auto -> onnx int8: fp32 1.00x; onnx fp32 0.90x")
    trials[2].neighbour_overlap = 0.90  # below the gate: and the backend's fp32 is slower than torch's
    assert (pick(trials).backend, pick(trials).precision) == ("torch", "fp32")


@pytest.mark.parametrize(
    ("backend", "flags", "expected"),
    [
        ("openvino", {"avx512_bf16", "avx512_vnni", "avx2"}, ["int8", "bf16", "fp32"]),
        ("openvino", {"avx2"}, ["fp32"]),  # bf16 would be emulated; int8 without VNNI is slower than fp32
        ("openvino", {"avx2", "avx_vnni"}, ["int8", "fp32"]),
        ("openvino", {"sse4_2"}, ["fp32"]),
        ("onnx", {"avx512_vnni"}, ["int8", "fp32"]),
        ("onnx", {"sse4_2"}, ["fp32"]),
    ],
)
def test_auto_probes_a_backends_own_settings(backend, flags, expected):
    assert candidates("cpu", flags, backend) == expected
    assert candidates("cuda", flags, backend) == []


def test_a_backend_that_cannot_run_says_what_to_do(monkeypatch):
    with pytest.raises(ValueError, match="IMGSEARCH_BACKEND=openvino runs on the CPU; on CUDA use torch"):
        decision.check_backend("openvino", "auto", "cuda:0")
    monkeypatch.setattr(decision, "installed", lambda backend, precision="": False)
    with pytest.raises(ValueError, match=r"IMGSEARCH_BACKEND=onnx needs its extra: pip install 'imgsearch\[onnx\]'"):
        decision.check_backend("onnx", "fp32", "cpu")
    monkeypatch.setattr(decision, "installed", lambda backend, precision="": True)
    with pytest.raises(ValueError, match="IMGSEARCH_BACKEND=openvino runs fp32, bf16, int8, not fp16"):
        decision.check_backend("openvino", "fp16", "cpu")
    monkeypatch.setattr(decision, "installed", lambda backend, precision="": precision != "int8")
    with pytest.raises(
        ValueError, match=r"openvino at int8 quantises with onnxruntime: pip install 'imgsearch\[openvino\]'"
    ):
        decision.check_backend("openvino", "int8", "cpu")
    decision.check_backend("openvino", "bf16", "cpu")  # no error
    decision.check_backend("torch", "int8", "cuda")  # torch's own check says that one (check_supported)


@pytest.mark.parametrize(("backend", "precision"), installed_settings())
def test_a_backend_embeds_like_torch_and_builds_its_graphs_once(tiny_model_dir, tmp_path, caplog, backend, precision):
    pictures = precision_module.probe_pictures(32, 5)
    texts = ["a dog", "a red bicycle leaning on a wall " * 20, "x"]  # one truncated; the batch padded
    torch_fp32 = SentenceTransformerEmbedder(str(tiny_model_dir), precision="fp32")
    with caplog.at_level(logging.WARNING, logger="imgsearch.model.runtimes"):
        ours = SentenceTransformerEmbedder(
            str(tiny_model_dir), precision=precision, backend=backend, cache_dir=tmp_path / "cache"
        )
        built = [r.getMessage() for r in caplog.records if "building the" in r.getMessage()]
    bf16_cpu = bool(precision_module.cpu_flags() & precision_module.BF16_INSTRUCTIONS)
    said_fp32 = any("on this one it runs the model in fp32" in r.getMessage() for r in caplog.records)
    assert said_fp32 == ((backend, precision) == ("openvino", "bf16") and not bf16_cpu)
    assert (ours.backend, ours.precision) == (backend, precision)
    assert len(built) == 2 and f"{backend} {precision} image graph" in built[0]  # said while it works
    assert ours.fingerprint == torch_fp32.fingerprint  # taken in torch fp32, so a collection accepts either
    assert {p.device.type for p in ours._model.parameters()} == {"meta"}  # torch's copy of the weights is freed

    for theirs, mine in (
        (torch_fp32.embed_images(pictures), ours.embed_images(pictures)),
        (torch_fp32.embed_texts(texts).vectors, ours.embed_texts(texts).vectors),
    ):
        assert mine.dtype == np.float32 and mine.shape == theirs.shape
        np.testing.assert_allclose(np.linalg.norm(mine, axis=1), 1.0, atol=1e-5)
        assert np.min(np.sum(mine * theirs, axis=1)) > 0.995
        differs = np.abs(mine - theirs).max()
        # fp32 is torch's arithmetic to rounding; bf16 and int8 really ran in their precision, but for openvino
        # int8's texts, which run in fp32, and openvino bf16 on a CPU without bf16 instructions, which says so
        exact = (
            precision == "fp32"
            or (backend, precision, mine.shape[0]) == ("openvino", "int8", len(texts))
            or (backend, precision) == ("openvino", "bf16")
            and not bf16_cpu
        )
        assert differs < 1e-4 if exact else differs > 1e-4, differs
    # Padding a short text to the batch's longest changes nothing (int8 quantises each batch's activations with
    # that batch's own scale, so there only nearly nothing).
    one_by_one = np.concatenate([ours.embed_texts([t]).vectors for t in texts])
    cosines = np.sum(one_by_one * ours.embed_texts(texts).vectors, axis=1)
    assert cosines.min() > (0.995 if precision == "int8" else 0.99999), cosines
    assert ours.embed_texts(texts).truncated == [False, True, False]

    graphs = list((tmp_path / "cache" / "graphs").iterdir())
    assert len(graphs) == 1 and graphs[0].name.startswith(f"{backend}-{precision}-")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="imgsearch.model.runtimes"):
        again = SentenceTransformerEmbedder(
            str(tiny_model_dir), precision=precision, backend=backend, cache_dir=tmp_path / "cache"
        )
    assert not [r for r in caplog.records if "building the" in r.getMessage()]  # loaded, not built again
    np.testing.assert_allclose(again.embed_images(pictures), ours.embed_images(pictures), atol=1e-6)


@needs("onnx")
def test_a_failed_build_leaves_nothing_half_written(tiny_model_dir, tmp_path, monkeypatch):
    real_export = backends.CompiledModel._export

    def crash(self, *args):
        real_export(self, *args)  # the file is written, then the process "dies"
        raise RuntimeError("killed during the build")

    monkeypatch.setattr(backends.CompiledModel, "_export", crash)
    with pytest.raises(RuntimeError, match="killed during the build"):
        SentenceTransformerEmbedder(str(tiny_model_dir), precision="fp32", backend="onnx", cache_dir=tmp_path)
    (folder,) = (tmp_path / "graphs").iterdir()
    assert list(folder.iterdir()) == []  # neither a graph that looks finished nor the build folder

    monkeypatch.setattr(backends.CompiledModel, "_export", real_export)
    SentenceTransformerEmbedder(str(tiny_model_dir), precision="fp32", backend="onnx", cache_dir=tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["image", "text"]


@needs("onnx")
def test_what_a_process_killed_while_building_left_is_removed_at_the_next_start(tiny_model_dir, tmp_path):
    """A build killed with the process (Ctrl-C, OOM, a reboot) left its hidden folder, hundreds of MB for a real
    model, for good; so did a removal killed midway."""
    cache = tmp_path / "cache"
    killed_mid_build = (
        "import os, signal, sys\n"
        "from imgsearch.model import runtimes as backends\n"
        "from imgsearch.model.sentence_transformer_embedder import SentenceTransformerEmbedder\n"
        "real_export = backends.CompiledModel._export\n"
        "def die(self, *args):\n"
        "    real_export(self, *args)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "backends.CompiledModel._export = die\n"
        "SentenceTransformerEmbedder(sys.argv[1], precision='fp32', backend='onnx', cache_dir=sys.argv[2])\n"
    )
    died = subprocess.run([sys.executable, "-c", killed_mid_build, str(tiny_model_dir), str(cache)])
    assert died.returncode == -9
    (folder,) = (cache / "graphs").iterdir()
    (left,) = folder.iterdir()
    assert left.name.startswith(".") and left.name.endswith(".building") and any(left.iterdir())
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:  # still building
        try:
            host = os.uname().nodename
            busy = folder / f".image.{other.pid}@{host}.building"
            old = folder / ".text.12345.building"  # named as before pid@host, two days old
            recent_unknown = folder / ".text.23456.building"
            removal = cache / "graphs" / f".{folder.name}-x.{other.pid}@{host}.removing"  # its owner may go on
            for path in (busy, old, recent_unknown, removal):
                path.mkdir()
                (path / "tower.onnx").write_bytes(b"x" * 1000)
            os.utime(old, (0, os.stat(old).st_mtime - 2 * 86400))

            model = SentenceTransformerEmbedder(str(tiny_model_dir), precision="fp32", backend="onnx", cache_dir=cache)
            assert model.embed_texts(["a dog"]).vectors.shape == (1, model.dim)
            assert sorted(p.name for p in folder.iterdir()) == sorted([busy.name, recent_unknown.name, "image", "text"])
            assert not removal.exists()
        finally:
            other.kill()


@needs("onnx")
def test_a_graph_folder_a_killed_removal_left_half_empty_is_built_again(tiny_model_dir, tmp_path):
    """The probe removes the graphs of settings it did not choose; killed in the middle, it left a tower folder
    with some of its files, which made the setting fail to build ever after."""
    SentenceTransformerEmbedder(str(tiny_model_dir), precision="fp32", backend="onnx", cache_dir=tmp_path)
    (folder,) = (tmp_path / "graphs").iterdir()
    (folder / "text" / backends._GRAPH_FILE["onnx"]).unlink()
    (folder / "text" / "tower.data").write_bytes(b"what was not deleted yet")

    again = SentenceTransformerEmbedder(str(tiny_model_dir), precision="fp32", backend="onnx", cache_dir=tmp_path)
    assert again.embed_texts(["a dog"]).vectors.shape == (1, again.dim)
    assert (folder / "text" / backends._GRAPH_FILE["onnx"]).is_file()
    assert not (folder / "text" / "tower.data").exists()


@needs("onnx")
def test_a_graph_another_user_could_have_put_there_is_not_loaded(tiny_model_dir, tmp_path):
    """A graph is code the model runs: one behind a link (a folder another user may write to) is never loaded;
    the folders on the way are refused or replaced by this user's own."""
    SentenceTransformerEmbedder(str(tiny_model_dir), precision="fp32", backend="onnx", cache_dir=tmp_path / "cache")
    (folder,) = (tmp_path / "cache" / "graphs").iterdir()
    planted = tmp_path / "planted"
    (folder / "image").rename(planted)  # stands in for a graph made to give every image one vector
    (folder / "image").symlink_to(planted)
    SentenceTransformerEmbedder(str(tiny_model_dir), precision="fp32", backend="onnx", cache_dir=tmp_path / "cache")
    assert not (folder / "image").is_symlink() and (folder / "image").is_dir()  # rebuilt, not followed

    (tmp_path / "cache" / "graphs").rename(tmp_path / "shared-graphs")
    (tmp_path / "cache" / "graphs").symlink_to(tmp_path / "shared-graphs")
    with pytest.raises(UnsafeFileError, match="not a folder of this user"):
        SentenceTransformerEmbedder(str(tiny_model_dir), precision="fp32", backend="onnx", cache_dir=tmp_path / "cache")


@needs("onnx")
def test_auto_with_a_backend_measures_it_against_torch_and_remembers(tiny_model_dir, tmp_path):
    first = SentenceTransformerEmbedder(str(tiny_model_dir), precision="auto", backend="onnx", cache_dir=tmp_path)
    trials = first.precision_choice.trials
    assert [(t.backend, t.precision) for t in trials][0] == ("torch", "fp32")
    assert {(t.backend, t.precision) for t in trials[1:]} == {
        ("onnx", p) for p in candidates("cpu", precision_module.cpu_flags(), "onnx")
    }
    chosen = pick(trials)
    assert (first.backend, first.precision) == (chosen.backend, chosen.precision)

    cached = json.loads((tmp_path / "precision.json").read_text())
    assert [entry["backend"] for key, entry in cached.items() if key.endswith("|backend onnx")] == [chosen.backend]
    second = SentenceTransformerEmbedder(str(tiny_model_dir), precision="auto", backend="onnx", cache_dir=tmp_path)
    assert second.precision_choice.cached and (second.backend, second.precision) == (first.backend, first.precision)


@needs("onnx")
def test_backend_auto_measures_every_installed_backend_and_keeps_only_the_chosen_graph(
    tiny_model_dir, tmp_path, monkeypatch, caplog
):
    SentenceTransformerEmbedder(str(tiny_model_dir), precision="int8", backend="onnx", cache_dir=tmp_path)
    built_by_hand = {p.name for p in (tmp_path / "graphs").iterdir()}
    picked = []

    def onnx_fp32(trials):  # whatever the probe measured: what it picks is what runs, and what is kept
        picked.extend(t for t in trials if (t.backend, t.precision) == ("onnx", "fp32"))
        return picked[0] if picked else trials[0]

    monkeypatch.setattr("imgsearch.model.precision.pick", onnx_fp32)
    auto = SentenceTransformerEmbedder(str(tiny_model_dir), precision="auto", backend="auto", cache_dir=tmp_path)
    # The first choice is torch's own settings, timed in seconds: no graph is built before a job asks for it
    assert auto.needs_tuning and {t.backend for t in auto.precision_choice.trials} == {"torch"}
    assert {p.name for p in (tmp_path / "graphs").iterdir()} == built_by_hand
    auto.tune()
    measured = [(t.backend, t.precision) for t in auto.precision_choice.trials]
    assert measured == decision.fast_settings(precision_module.cpu_flags())  # torch fp32 first, then every setting
    assert {"torch", "onnx"} <= {backend for backend, _ in measured}
    assert (auto.backend, auto.precision) == ("onnx", "fp32")
    assert auto.precision_choice.describe().startswith("precision auto -> onnx fp32: fp32 1.00x; ")
    graphs = {p.name for p in (tmp_path / "graphs").iterdir()}
    # the chosen graph stays; those the probe built for settings it left are gone; the one built by hand stays
    assert {name.rsplit("-", 1)[0] for name in graphs - built_by_hand} == {"onnx-fp32"}
    assert built_by_hand <= graphs

    monkeypatch.undo()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = SentenceTransformerEmbedder(str(tiny_model_dir), precision="auto", backend="auto", cache_dir=tmp_path)
    assert again.precision_choice.cached and (again.backend, again.precision) == ("onnx", "fp32")
    assert not [r for r in caplog.records if "building the" in r.getMessage() or "measuring" in r.getMessage()]


def test_backend_auto_with_a_named_precision_runs_torch(tiny_model_dir, tmp_path):
    named = SentenceTransformerEmbedder(str(tiny_model_dir), precision="int8", backend="auto", cache_dir=tmp_path)
    assert (named.backend, named.precision, named.precision_choice) == ("torch", "int8", None)
    assert not (tmp_path / "graphs").exists()


@needs("onnx")
def test_imgsearch_indexes_and_searches_with_the_onnx_backend(tmp_path, imgsearch_bin, cli_env):
    photos = write_photo_set(tmp_path / "photos")
    index = run_cli(imgsearch_bin, cli_env, "index", str(photos), "--backend", "onnx", "--precision", "int8")
    assert index.returncode == 0, index.stderr
    assert "embedded 10" in index.stdout and "building the onnx int8 image graph" in index.stderr

    # searched with another backend: the collection's fingerprint is torch fp32's whatever ran the model
    for backend in ("onnx", "torch"):
        found = run_cli(imgsearch_bin, cli_env, "search", "a photo", "--json", "-k", "3", "--backend", backend)
        assert found.returncode == 0, found.stderr
        assert len(json.loads(found.stdout)) == 3


def test_imgsearch_refuses_a_precision_the_backend_does_not_run_in_one_line(tmp_path, imgsearch_bin, cli_env):
    photos = write_photo_set(tmp_path / "photos")
    refused = run_cli(imgsearch_bin, cli_env, "index", str(photos), "--backend", "openvino", "--precision", "fp16")
    assert refused.returncode == 1
    expected = (
        "runs fp32, bf16, int8, not fp16"
        if backends.installed("openvino")
        else "needs its extra: pip install 'imgsearch[openvino]'"
    )
    assert refused.stderr.strip().splitlines() == [
        f"imgsearch index: error: IMGSEARCH_BACKEND=openvino {expected}"
        + (" (or use auto)" if backends.installed("openvino") else "")
    ]


def test_the_openvino_backend_sends_nothing_anywhere(tiny_model_dir, tmp_path):
    """Importing openvino sends a usage event to Intel's analytics from a forked process unless the user opted
    out; imgsearch runs it with that off. Checked in a process of its own, whose audit hook sees every fork and
    connection."""
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    script = f"""
import sys
events = []
sys.addaudithook(lambda event, args: events.append(event) if event in ("os.fork", "socket.connect", "subprocess.Popen") else None)
from imgsearch.model.sentence_transformer_embedder import SentenceTransformerEmbedder
SentenceTransformerEmbedder({str(tiny_model_dir)!r}, precision="fp32", backend="openvino", cache_dir={str(tmp_path)!r})
import time; time.sleep(1)
print("EVENTS", sorted(set(events)))
"""
    ran = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "CI": "", "HF_HUB_OFFLINE": "1"},
    )
    assert ran.returncode == 0, ran.stderr
    assert "EVENTS []" in ran.stdout, ran.stdout
