"""Fixtures: a tiny CLIP built locally, real Milvus Lite in a temporary directory, real Milvus servers, sample
photos, and a shared `imgsearch serve`. Helpers live in tests/support; no test imports this file."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as the imgsearch command sets it (imgsearch/__init__.py)
# The developer's own IMGSEARCH_* settings (an API key, a server URI, ...) must not change what the tests see.
for _name in [name for name in os.environ if name.startswith("IMGSEARCH_")]:
    del os.environ[_name]

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests.support")  # helpers' asserts explain themselves too

from imgsearch.model.sentence_transformer_embedder import SentenceTransformerEmbedder
from imgsearch.settings import Settings
from imgsearch.store import MilvusStore, release_hosted
from tests.support.milvus import milvus_command, milvus_ready
from tests.support.models import build_local_clip
from tests.support.photos import write_photo_set
from tests.support.processes import cli_environment, start_api, start_server, stop_process

pytest_plugins = ["tests.support.mutation", "tests.support.processes"]


@pytest.fixture(scope="session", autouse=True)
def isolated_working_directory(tmp_path_factory):
    """Run every test, and every process it starts, in an empty folder, with a data home and a cache of its own: no
    `.env` of the developer's is read, and nothing lands in the repository or the developer's own index."""
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    homes = tmp_path_factory.mktemp("home")
    saved = {name: os.environ.get(name) for name in ("XDG_DATA_HOME", "XDG_CACHE_HOME")}
    os.environ.update(XDG_DATA_HOME=str(homes / "data"), XDG_CACHE_HOME=str(homes / "cache"))
    yield
    for name, value in saved.items():
        os.environ.pop(name, None) if value is None else os.environ.update({name: value})
    os.chdir(previous)


@pytest.fixture(autouse=True)
def release_lite_data_directories():
    """Stop serving every Milvus Lite data directory a test opened in this process, also when it failed."""
    yield
    release_hosted()


# Kept for the life of the process: `make mutants` runs one pytest session per mutant in forks of one process,
# and the model must not be built and loaded again for each.
_tiny_model: dict[str, object] = {}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    built = _tiny_model.get("dir")
    if built is None or not built.exists():
        cache = os.environ.get("TEST_TINY_MODEL_DIR")  # a folder that outlives one session, for `make mutants`
        folder = Path(cache) if cache else tmp_path_factory.mktemp("models") / "tiny-clip"
        built = folder if (folder / "modules.json").exists() else build_local_clip(folder, "tiny", seed=0)
        _tiny_model.clear()
        _tiny_model["dir"] = built
    return built


@pytest.fixture(scope="session")
def encoder(tiny_model_dir) -> SentenceTransformerEmbedder:
    if "encoder" not in _tiny_model:
        _tiny_model["encoder"] = SentenceTransformerEmbedder(str(tiny_model_dir), device="cpu", batch_size=8)
    return _tiny_model["encoder"]


@pytest.fixture
def settings(tmp_path, tiny_model_dir) -> Settings:
    return Settings(
        _env_file=None,
        milvus_uri=str(tmp_path / "data" / "milvus.db"),
        model=str(tiny_model_dir),
        device="cpu",
        batch_size=8,
        precision="fp32",  # the same numbers on every machine; tests/test_precision.py tests the others
        cache_dir=tmp_path / "data" / "cache",
        thumbnail_dir=tmp_path / "data" / "thumbnails",
        allowed_roots=[tmp_path],
    )


@pytest.fixture
def store(settings):
    store = MilvusStore.from_settings(settings)
    yield store
    store.close()


@pytest.fixture
def cli_env(settings, tiny_model_dir) -> dict[str, str]:
    return cli_environment(Path(settings.milvus_uri).parent, tiny_model_dir)


@pytest.fixture(scope="session")
def imgsearch_bin() -> str:
    """The installed console script, as a user runs it."""
    candidate = Path(sys.executable).parent / "imgsearch"
    return str(candidate) if candidate.exists() else shutil.which("imgsearch")


@pytest.fixture
def photo_dir(tmp_path) -> Path:
    return write_photo_set(tmp_path / "photos")


@pytest.fixture(scope="session")
def server_env(tmp_path_factory, tiny_model_dir) -> dict[str, str]:
    data = tmp_path_factory.mktemp("served")
    photos = write_photo_set(data / "photos")
    return {
        **cli_environment(data / "data", tiny_model_dir),
        "IMGSEARCH_TEST_PHOTOS": str(photos),
        "IMGSEARCH_ALLOWED_ROOTS": json.dumps([str(photos)]),
    }


@pytest.fixture(scope="session")
def served_process(imgsearch_bin, server_env):
    """One real `imgsearch serve` over 10 indexed photos, shared by the tests that only need a running server:
    (the process, its base URL).

    Tests that add images to it must compare counts before and after, not with a fixed number.
    """
    photos = server_env["IMGSEARCH_TEST_PHOTOS"]
    subprocess.run([imgsearch_bin, "index", photos], env=server_env, check=True, capture_output=True, timeout=120)
    process, base = start_api(imgsearch_bin, server_env)
    yield process, base
    stop_process(process)


@pytest.fixture(scope="session")
def server(served_process) -> str:
    """The base URL of the shared API process."""
    return served_process[1]


@pytest.fixture(scope="session")
def milvus_servers(tmp_path_factory):
    """``milvus_servers(kind)`` -> the URI of a real Milvus server of that kind, started on first use."""
    running: dict[str, tuple[subprocess.Popen, str]] = {}

    def get(kind: str) -> str:
        if kind not in running:
            data_dir = tmp_path_factory.mktemp(kind)
            env = {**os.environ, "ETCD_CONFIG_PATH": str(data_dir / "etcd.yaml")}
            process, port = start_server(milvus_command(kind, data_dir), env, milvus_ready, timeout_s=180)
            running[kind] = (process, f"http://127.0.0.1:{port}")
        return running[kind][1]

    yield get
    for process, _uri in running.values():
        stop_process(process, grace_s=10)  # the C++ standalone ignores SIGTERM for a long while
