"""Shared fixtures: a tiny CLIP built locally, real Milvus Lite in a temporary directory, real Milvus servers,
sample images, and processes that are always stopped with everything they started."""

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
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.local_clip import build_local_clip
from imgsearch.model.sentence_transformer_embedder import SentenceTransformerEmbedder
from imgsearch.settings import Settings
from imgsearch.store import MilvusStore, release_hosted

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def isolated_working_directory(tmp_path_factory):
    """Run every test, and every process it starts, in an empty folder: no `.env` of the developer's is read
    and relative defaults such as ./data never land in the repository."""
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
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


def run_cli(imgsearch_bin: str, env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run the real `imgsearch` command to the end; its output as text."""
    return subprocess.run([imgsearch_bin, *args], env=env, capture_output=True, text=True, timeout=timeout)


def cli_environment(data_dir: Path, model_dir: Path) -> dict[str, str]:
    """Environment for running the real `imgsearch` command in a subprocess."""
    return {
        **os.environ,
        "IMGSEARCH_MILVUS_URI": str(data_dir / "milvus.db"),
        "IMGSEARCH_MODEL": str(model_dir),
        "IMGSEARCH_DEVICE": "cpu",
        "IMGSEARCH_BATCH_SIZE": "8",
        "IMGSEARCH_PRECISION": "fp32",
        "IMGSEARCH_CACHE_DIR": str(data_dir / "cache"),
        "IMGSEARCH_THUMBNAIL_DIR": str(data_dir / "thumbnails"),
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def cli_env(settings, tiny_model_dir) -> dict[str, str]:
    return cli_environment(Path(settings.milvus_uri).parent, tiny_model_dir)


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


def write_exif_photo(path: Path, seed: int, taken: str = "", make: str = "", model: str = "",
                     gps: tuple | None = None) -> Path:
    """A JPEG as a camera writes it: ``taken`` ("2019:06:01 09:30:00") as DateTimeOriginal, Make, Model and
    ``gps`` = (lat ref, (d, m, s), lon ref, (d, m, s))."""
    rng = np.random.default_rng(seed)
    pixels = np.kron(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8), np.ones((16, 16, 1), dtype=np.uint8))
    exif = Image.Exif()
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken
    if gps:
        exif.get_ifd(0x8825).update(dict(zip((1, 2, 3, 4), gps)))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, "JPEG", exif=exif.tobytes())
    return path


def write_photo_set(root: Path) -> Path:
    for i in range(6):
        write_photo(root / f"photo{i}.png", seed=i)
    for i in range(6, 10):
        write_photo(root / "trip" / f"photo{i}.jpg", seed=i)
    return root


@pytest.fixture
def photo_dir(tmp_path) -> Path:
    return write_photo_set(tmp_path / "photos")


# ── Processes: each in its own session, stopped with its whole group, never left behind ──────────────

_started: list[subprocess.Popen] = []


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def spawn(command: list[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    """Start ``command`` as the leader of a new process group, remembered so the session can check it stopped."""
    process = subprocess.Popen(command, env=env, start_new_session=True, **kwargs)
    _started.append(process)
    return process


def stop_process(process: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM the process's whole group, wait, then SIGKILL whatever of the group is left; always reaps."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (process.poll() is None or _group_alive(process.pid)):
        time.sleep(0.05)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    while _group_alive(process.pid) and time.monotonic() < deadline + 5:
        time.sleep(0.05)


def pytest_collection_modifyitems(config, items):
    """Mark the tests that run imgsearch in another process: `make mutants` leaves them out, since the code a
    child process runs is never the mutated copy."""
    for item in items:
        if "imgsearch_bin" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.own_process)
    _only_the_layers_own_tests(config, items)


# `make mutants`: a mutant runs against the test files of its own layer, the most direct first. mutmut would
# otherwise run every test that reached the function, and the API tests reach the indexer and the store
# through their fixtures: 70 tests per surviving mutant instead of about 15. The vector copy meets the API
# tests only in their [vector-copy] half.
_TESTS_OF_LAYER = {  # the first prefix that matches
    "imgsearch.store.vector_copy.": ("test_vector_copy.py", "test_api.py::vector-copy"),
    "imgsearch.store.fields.": ("test_filters.py", "test_store.py", "test_indexer.py", "test_vector_copy.py",
                                     "test_upgrade.py"),
    "imgsearch.store.filters.": ("test_filters.py", "test_vector_copy.py", "test_api.py"),
    "imgsearch.indexer.upgrade.": ("test_upgrade.py",),
    "imgsearch.": ("test_store.py", "test_upgrade.py", "test_indexer.py", "test_vector_copy.py",
                        "test_security.py"),
    "indexer.": ("test_plan.py", "test_indexer.py", "test_security.py"),
    "imgsearch.search.ranking.": ("test_ranking.py", "test_api.py"),
    "imgsearch.search_api.http_errors.": ("test_errors.py", "test_security.py", "test_api.py"),
    "imgsearch.search.service.": ("test_api.py", "test_security.py"),
}


def _mutant_under_test() -> str:
    """The mutant `make mutants` runs the tests against, else "". Read each time: mutmut sets it in each fork."""
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    return mutant if "__mutmut_" in mutant else ""


def pytest_configure(config):
    """Under `make mutants` a failing property test stops at its first counterexample: shrinking it to the
    smallest one (minutes on Milvus Lite) only tells a person more, and no person reads it."""
    if _mutant_under_test() or os.environ.get("MUTANT_UNDER_TEST") == "stats":
        from hypothesis import Phase, settings

        settings.register_profile("mutants", phases=[Phase.explicit, Phase.reuse, Phase.generate], database=None,
                                  derandomize=True)
        settings.load_profile("mutants")


MUTANT_TEST_LIMIT_S = 8  # every test of the mutation selection takes under 2 s on the real code


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under `make mutants` a test still running after MUTANT_TEST_LIMIT_S fails: the mutant broke something the
    test waits for (a copy that never gets fresh, an endpoint that never answers), and the test's own 30 s
    patience for a slow CI machine would otherwise be paid by every such mutant."""
    if not _mutant_under_test():
        return (yield)

    def too_slow(signum, frame):
        raise TimeoutError(f"over {MUTANT_TEST_LIMIT_S} s under a mutant")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.setitimer(signal.ITIMER_REAL, MUTANT_TEST_LIMIT_S)
    try:
        return (yield)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _only_the_layers_own_tests(config, items):
    mutant = _mutant_under_test()
    if not mutant:
        return
    files = next((files for prefix, files in _TESTS_OF_LAYER.items() if mutant.startswith(prefix)), None)
    if files is None:
        return

    def rank(item):  # "file::word": only the tests of that file whose id has the word
        for i, wanted in enumerate(files):
            name, _, word = wanted.partition("::")
            if item.path.name == name and word in item.nodeid:
                return i
        return len(files)

    items.sort(key=rank)  # stable: a file's tests keep their order
    dropped = [item for item in items if rank(item) == len(files)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        del items[len(items) - len(dropped):]


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if any process group a test started is still alive, and stop it."""
    leaked = [p for p in _started if _group_alive(p.pid)]
    for process in leaked:
        stop_process(process, grace_s=2)
    if leaked:
        commands = "\n".join(" ".join(map(str, p.args))[:160] for p in leaked)
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        reporter.write_line(f"processes left running by the tests:\n{commands}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_PORT_TAKEN = ("address already in use", "address in use", "bind failed", "errno 98")


def start_server(make_command: Callable[[int], list[str]], env: dict[str, str] | None,
                 ready: Callable[[int], bool], timeout_s: float = 90, attempts: int = 4) -> tuple[subprocess.Popen, int]:
    """Start a server on a free port and wait until ``ready(port)``; on a port taken meanwhile, retry another.

    Output goes to a temporary file, not a pipe: a pipe nobody reads fills up with access logs and blocks the
    server.
    """
    for _attempt in range(attempts):
        port = free_port()
        log = tempfile.TemporaryFile(mode="w+")
        process = spawn(make_command(port), env, stdout=log, stderr=subprocess.STDOUT, text=True)

        def output(log=log) -> str:
            log.seek(0)
            return log.read()[-5000:]

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if ready(port):
                    return process, port
            except Exception:
                pass
            time.sleep(0.3)
        stop_process(process, grace_s=5)
        text = output()
        if any(marker in text.lower() for marker in _PORT_TAKEN):
            continue  # another process took the port between free_port() and the bind
        pytest.fail(f"{' '.join(make_command(port))} did not become ready on port {port}: {text}")
    pytest.fail(f"no free port after {attempts} attempts")


def http_ready(path: str) -> Callable[[int], bool]:
    return lambda port: httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200


def start_api(imgsearch_bin: str, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """A real `imgsearch serve` (uvicorn); returns the process and its base URL."""
    process, port = start_server(lambda port: [imgsearch_bin, "serve", "--port", str(port)], env, http_ready("/health"))
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def server_env(tmp_path_factory, tiny_model_dir) -> dict[str, str]:
    data = tmp_path_factory.mktemp("served")
    photos = write_photo_set(data / "photos")
    return {**cli_environment(data / "data", tiny_model_dir), "IMGSEARCH_TEST_PHOTOS": str(photos),
            "IMGSEARCH_ALLOWED_ROOTS": json.dumps([str(photos)])}


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


# ── Real Milvus servers on 127.0.0.1, started once per session and shared through unique collections ─

MILVUS_SERVERS = ["milvus-lite-server", "milvus-2.3-standalone"]


def _milvus_ready(port: int) -> bool:
    from pymilvus import MilvusClient

    client = MilvusClient(uri=f"http://127.0.0.1:{port}", timeout=5)
    try:
        client.list_collections()
        return True
    finally:
        client.close()


def _milvus_command(kind: str, data_dir: Path) -> Callable[[int], list[str]]:
    bin_dir = Path(sys.executable).parent
    if kind == "milvus-lite-server":
        return lambda port: [str(bin_dir / "milvus-lite"), "server", "--data-dir", str(data_dir),
                             "--host", "127.0.0.1", "--port", str(port)]
    # The C++ standalone listens on a dozen fixed ports by default (etcd on 2379/2380 among them): give each a
    # free one. Its embedded etcd reads its addresses from the file ETCD_CONFIG_PATH names.
    def command(port: int) -> list[str]:
        client, peer = free_port(), free_port()
        (data_dir / "etcd.yaml").write_text(
            f"listen-client-urls: http://127.0.0.1:{client}\nadvertise-client-urls: http://127.0.0.1:{client}\n"
            f"listen-peer-urls: http://127.0.0.1:{peer}\ninitial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
            f"initial-cluster: default=http://127.0.0.1:{peer}\n")
        ports = [f"--{name}-port={free_port()}" for name in
                 ("root-coord", "proxy-internal", "query-coord", "query-node", "index-coord", "index-node",
                  "data-coord", "data-node")]
        return [str(bin_dir / "milvus-server"), "--data", str(data_dir), "--proxy-port", str(port),
                "--etcd-port", str(client), *ports]
    return command


@pytest.fixture(scope="session")
def milvus_servers(tmp_path_factory):
    """``milvus_servers(kind)`` -> the URI of a real Milvus server of that kind, started on first use."""
    running: dict[str, tuple[subprocess.Popen, str]] = {}

    def get(kind: str) -> str:
        if kind not in running:
            data_dir = tmp_path_factory.mktemp(kind)
            env = {**os.environ, "ETCD_CONFIG_PATH": str(data_dir / "etcd.yaml")}
            process, port = start_server(_milvus_command(kind, data_dir), env, _milvus_ready, timeout_s=180)
            running[kind] = (process, f"http://127.0.0.1:{port}")
        return running[kind][1]

    yield get
    for process, _uri in running.values():
        stop_process(process, grace_s=10)  # the C++ standalone ignores SIGTERM for a long while


def unique_collection() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"
