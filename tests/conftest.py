"""Shared fixtures: a tiny CLIP built locally, real Milvus Lite in a temporary directory, sample images."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from imgsearch_core.encoder import Encoder
from imgsearch_core.local_clip import build_local_clip
from imgsearch_core.milvus_store import MilvusStore, release_hosted
from imgsearch_core.settings import Settings


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_local_clip(tmp_path_factory.mktemp("models") / "tiny-clip", "tiny", seed=0)


@pytest.fixture(scope="session")
def encoder(tiny_model_dir) -> Encoder:
    return Encoder(str(tiny_model_dir), device="cpu", batch_size=8)


@pytest.fixture
def settings(tmp_path, tiny_model_dir) -> Settings:
    return Settings(
        milvus_uri=str(tmp_path / "data" / "milvus.db"),
        model=str(tiny_model_dir),
        device="cpu",
        batch_size=8,
        thumbnail_dir=tmp_path / "data" / "thumbnails",
        allowed_roots=[tmp_path],
    )


@pytest.fixture
def store(settings):
    store = MilvusStore.from_settings(settings)
    yield store
    store.close()
    release_hosted(settings.milvus_uri)


@pytest.fixture
def cli_env(settings) -> dict[str, str]:
    """Environment for running the real `imgsearch` command in a subprocess."""
    return {
        **os.environ,
        "IMGSEARCH_MILVUS_URI": settings.milvus_uri,
        "IMGSEARCH_MODEL": settings.model,
        "IMGSEARCH_DEVICE": "cpu",
        "IMGSEARCH_BATCH_SIZE": "8",
        "IMGSEARCH_THUMBNAIL_DIR": str(settings.thumbnail_dir),
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="session")
def imgsearch_bin() -> str:
    """The installed console script, as a user runs it."""
    candidate = Path(sys.executable).parent / "imgsearch"
    return str(candidate) if candidate.exists() else shutil.which("imgsearch")


def write_photo(path: Path, seed: int, size: tuple[int, int] = (96, 64), fmt: str | None = None) -> Path:
    """A random but distinct picture: coloured blocks, so the tiny model tells pictures apart."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((size[1] // 4, size[0] // 6, 1), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


@pytest.fixture
def photo_dir(tmp_path) -> Path:
    root = tmp_path / "photos"
    for i in range(6):
        write_photo(root / f"photo{i}.png", seed=i)
    for i in range(6, 10):
        write_photo(root / "trip" / f"photo{i}.jpg", seed=i)
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_process(command: list[str], env: dict[str, str], ready_url: str, timeout_s: float = 90) -> subprocess.Popen:
    """Start a server process and wait until ``ready_url`` answers 200; fail the test with its output if not.

    Output goes to a temporary file, not a pipe: a pipe nobody reads fills up with access logs and
    blocks the server.
    """
    import tempfile

    log = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)

    def output() -> str:
        log.seek(0)
        return log.read()[-5000:]

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{command[1]} exited: {output()}")
        try:
            if httpx.get(ready_url, timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    pytest.fail(f"{' '.join(command)} did not become ready at {ready_url}: {output()}")


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture
def server(imgsearch_bin, cli_env, photo_dir):
    """A real `imgsearch serve` (uvicorn) over the indexed photo_dir; yields its base URL."""
    subprocess.run([imgsearch_bin, "index", str(photo_dir)], env=cli_env, check=True, capture_output=True, timeout=120)
    base = f"http://127.0.0.1:{free_port()}"
    process = start_process([imgsearch_bin, "serve", "--port", base.rsplit(":", 1)[1]], cli_env, f"{base}/health")
    yield base
    stop_process(process)
