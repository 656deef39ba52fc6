"""The hostile cases of the threat model (README "Security"), on real files, real Milvus and a real API process.

Trusted: the indexed folders and the machine's owner. Not trusted: file contents and names, symbolic links,
network clients, other local users.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from imgsearch.errors import WeightsMismatchError
from imgsearch.indexer.runner import run_index
from imgsearch.store import MilvusStore, release_hosted
from tests.support.milvus import milvus_command, milvus_ready, unique_collection
from tests.support.models import build_local_clip
from tests.support.photos import write_photo
from tests.support.processes import cli_environment, free_port, start_api, start_server, stop_process


def index(root, settings, encoder, store, **kwargs):
    report = run_index([str(root)], settings, encoder, store, **kwargs)
    accounted = report.embedded + report.unchanged + report.moved + report.copied + len(report.failed)
    assert accounted == report.scanned and report.removed >= 0, report
    return report


def paths_in(store) -> set[str]:
    return {row["path"] for row in store.iter_rows()}


def index_cli(imgsearch_bin, env, *args) -> subprocess.CompletedProcess:
    """`imgsearch index ARGS` as a user runs it."""
    return subprocess.run(
        [imgsearch_bin, "index", *map(str, args)], env=env, capture_output=True, text=True, timeout=120
    )


def indexed_share(tmp_path, imgsearch_bin, env, photos: int) -> Path:
    """A folder of ``photos`` images, indexed, then emptied."""
    share = tmp_path / "share"
    for i in range(photos):
        write_photo(share / f"p{i}.png", seed=i)
    assert index_cli(imgsearch_bin, env, share).returncode == 0
    for photo in share.iterdir():
        photo.unlink()
    return share


def reasons(report) -> dict[str, str]:
    return {Path(f["path"]).name: f["reason"] for f in report.failed}


# ── What the indexer reads ──────────────────────────────────────────────────────────────────────────


def test_a_link_to_a_file_outside_the_roots_is_not_followed_and_one_inside_is(tmp_path, settings, encoder, store):
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_photo(root / "sub" / "a.png", seed=1)
    secret = write_photo(outside / "secret.png", seed=2)
    (root / "inside-link.png").symlink_to(root / "sub" / "a.png")
    (root / "escape.png").symlink_to(secret)

    report = index(root, settings, encoder, store)

    assert paths_in(store) == {str(root / "sub" / "a.png"), str(root / "inside-link.png")}
    assert "outside the indexed folders" in reasons(report)["escape.png"]


def test_fifo_socket_and_oversized_files_are_skipped_with_reasons_and_never_block(tmp_path, cli_env, imgsearch_bin):
    root = tmp_path / "root"
    write_photo(root / "ok.png", seed=1)
    os.mkfifo(root / "pipe.jpg")  # opening it for reading would wait for a writer forever
    big = write_photo(root / "big.png", seed=2, size=(600, 400))
    env = {**cli_env, "IMGSEARCH_MAX_FILE_BYTES": str(big.stat().st_size - 1)}

    result = subprocess.run(
        [imgsearch_bin, "index", str(root), "--json"], env=env, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["embedded"] == 1
    failed = {Path(f["path"]).name: f["reason"] for f in report["failed"]}
    assert "FIFO" in failed["pipe.jpg"] and "IMGSEARCH_MAX_FILE_BYTES" in failed["big.png"]


def test_a_file_name_that_is_not_utf8_is_skipped_and_the_rest_indexed(tmp_path, cli_env, imgsearch_bin):
    root = tmp_path / "root"
    write_photo(root / "ok.png", seed=1)
    data = write_photo(tmp_path / "x.png", seed=2).read_bytes()
    with open(os.path.join(os.fsencode(root), b"caf\xe9.png"), "wb") as handle:
        handle.write(data)

    result = subprocess.run(
        [imgsearch_bin, "index", str(root)], env=cli_env, capture_output=True, text=True, timeout=120, errors="replace"
    )

    assert result.returncode == 0, result.stderr
    assert "embedded 1," in result.stdout and "failed 1 " in result.stdout
    assert "caf\ufffd.png: the file name is not valid UTF-8" in result.stdout


def test_a_folder_that_cannot_be_listed_keeps_its_rows(tmp_path, settings, encoder, store, monkeypatch):
    root = tmp_path / "root"
    for i in range(3):
        write_photo(root / "locked" / f"p{i}.png", seed=i)
    write_photo(root / "open.png", seed=9)
    index(root, settings, encoder, store)
    before = paths_in(store)

    # Tests run as root here, where chmod 000 does not stop a listing: make the listing fail as it would.
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(root / "locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = index(root, settings, encoder, store)

    assert paths_in(store) == before and report.removed == 0
    assert "cannot list folder: Permission denied" in reasons(report)["locked"]


def test_a_root_that_is_now_empty_sweeps_nothing_until_pruned(tmp_path, cli_env, imgsearch_bin, settings):
    share = indexed_share(tmp_path, imgsearch_bin, cli_env, 3)  # what an unmounted share looks like: empty

    refused = index_cli(imgsearch_bin, cli_env, share)
    assert refused.returncode == 1
    assert "3 are indexed under it" in refused.stderr and "--prune" in refused.stderr
    assert "removed 0" in refused.stdout

    pruned = index_cli(imgsearch_bin, cli_env, share, "--prune")
    assert pruned.returncode == 0 and "removed 3" in pruned.stdout, pruned.stderr


def test_an_emptied_folder_inside_a_root_sweeps_nothing_until_pruned(tmp_path, settings, encoder, store):
    root = tmp_path / "photos"
    write_photo(root / "local.png", seed=1)
    for i in range(3):
        write_photo(root / "nas" / f"p{i}.png", seed=10 + i)
    write_photo(root / "album" / "a.png", seed=20)
    index(root, settings, encoder, store)
    for photo in (root / "nas").iterdir():  # the share's mount point, unmounted: there, but empty
        photo.unlink()
    shutil.rmtree(root / "album")  # a folder deleted as a whole is an ordinary deletion

    report = index(root, settings, encoder, store)
    assert report.removed == 1 and len(report.refused) == 1 and "--prune" in report.refused[0]
    assert sum("/nas/" in p for p in paths_in(store)) == 3

    assert index(root, settings, encoder, store, prune=True).removed == 3


def test_a_missing_root_sweeps_nothing_until_pruned(tmp_path, cli_env, imgsearch_bin):
    share = indexed_share(tmp_path, imgsearch_bin, cli_env, 2)
    share.rmdir()

    refused = index_cli(imgsearch_bin, cli_env, share)
    assert refused.returncode == 1 and "no such file or directory" in refused.stderr and "--prune" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1  # one line, no traceback

    pruned = index_cli(imgsearch_bin, cli_env, share, "--prune")
    assert pruned.returncode == 0 and "removed 2" in pruned.stdout, pruned.stderr


def test_a_file_put_back_during_a_run_is_not_swept(tmp_path, settings, encoder, store):
    """What a second indexer (or the user) confirms while this run works is never deleted by it."""
    root = tmp_path / "root"
    write_photo(root / "a.png", seed=1)
    kept = write_photo(root / "b.png", seed=2)
    data = kept.read_bytes()
    index(root, settings, encoder, store)
    kept.unlink()
    write_photo(root / "c.png", seed=3)  # gives the run something to do, so progress is reported

    def put_back(done, total):
        if not kept.exists():
            kept.write_bytes(data)

    report = index(root, settings, encoder, store, on_progress=put_back)

    assert str(kept) in paths_in(store) and report.removed == 0


# ── The embedded database ──────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("depth", [1, 12], ids=["socket-in-data-dir", "path-too-long-for-a-socket"])
def test_the_shared_lite_endpoint_is_a_socket_only_the_owner_can_reach(tmp_path, depth):
    data_dir = tmp_path.joinpath(*["nested-folder"] * depth) / "milvus.db"
    store = MilvusStore(str(data_dir), unique_collection())
    try:
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        endpoint = data_dir / "imgsearch-endpoint.json"
        assert stat.S_IMODE(endpoint.stat().st_mode) == 0o600
        info = json.loads(endpoint.read_text())
        assert "port" not in info  # no TCP port: other local users had one to connect to
        sock = Path(info["socket"])
        assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(sock.stat().st_mode) & 0o077 == 0
        assert store.count() == 0
    finally:
        store.close()
        release_hosted(str(data_dir))
    assert not sock.exists()  # removed when the host stops


# ── The model behind a name ─────────────────────────────────────────────────────────────────────────


def test_other_weights_saved_under_the_indexed_model_folder_are_refused(tmp_path, imgsearch_bin):
    model = build_local_clip(tmp_path / "model", "tiny", seed=0)
    env = cli_environment(tmp_path / "data", model)
    root = tmp_path / "root"
    for i in range(3):
        write_photo(root / f"p{i}.png", seed=i)
    subprocess.run([imgsearch_bin, "index", str(root)], env=env, check=True, capture_output=True, timeout=120)
    shutil.rmtree(model)
    build_local_clip(model, "tiny", seed=1)  # a fine-tune saved over the same folder: same name, other weights

    write_photo(root / "p9.png", seed=9)
    refused = subprocess.run([imgsearch_bin, "index", str(root)], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "other weights" in refused.stderr
    search = subprocess.run([imgsearch_bin, "search", "x"], env=env, capture_output=True, text=True, timeout=120)
    assert search.returncode == 1 and "other weights" in search.stderr


def test_only_the_indexer_records_a_fingerprint_on_a_collection_made_before_them(settings, encoder, store):
    store.ensure_collection(encoder.name, encoder.dim)  # as an older imgsearch made it: no fingerprint
    other = [-v for v in encoder.fingerprint]
    store.check_model(encoder.name, encoder.dim, other)  # a reader (the API, `imgsearch search`) with other weights
    store.ensure_collection(encoder.name, encoder.dim, encoder.fingerprint, record_fingerprint=True)  # the indexer
    with pytest.raises(WeightsMismatchError):
        store.check_model(encoder.name, encoder.dim, other)


def test_the_api_checks_again_when_its_collection_is_dropped_and_made_again(settings, encoder, photo_dir):
    from fastapi.testclient import TestClient

    from imgsearch.search_api.main import create_app

    with TestClient(create_app(settings, encoder=encoder)) as client:
        store = client.app.state.store
        run_index([str(photo_dir)], settings, encoder, store)
        assert client.post("/search", json={"text": "x"}).status_code == 200
        store.drop()
        store.ensure_collection(encoder.name, encoder.dim, [-v for v in encoder.fingerprint])  # other weights
        client.app.state.search_service.recheck_s = 0  # look at once rather than within 5 s
        refused = client.post("/search", json={"text": "x"})
        assert refused.status_code == 409 and "other weights" in refused.json()["detail"]
        store.drop()
        assert client.post("/search", json={"text": "x"}).status_code == 503  # gone: says so, no 500
        store.ensure_collection(encoder.name, encoder.dim, encoder.fingerprint)
        assert client.post("/search", json={"text": "x"}).status_code == 200


# ── What the API serves ────────────────────────────────────────────────────────────────────────────


@pytest.fixture
def served(tmp_path, tiny_model_dir, imgsearch_bin):
    """A real API over a root holding a photo and a link to another photo inside the root."""
    root = tmp_path / "root"
    write_photo(root / "real.png", seed=1)
    write_photo(root / "other.png", seed=2)
    write_photo(root / "big.png", seed=3, size=(600, 400))
    (root / "link.png").symlink_to(root / "other.png")
    env = cli_environment(tmp_path / "data", tiny_model_dir)
    subprocess.run([imgsearch_bin, "index", str(root)], env=env, check=True, capture_output=True, timeout=120)
    process, base = start_api(imgsearch_bin, env)
    try:
        with httpx.Client(base_url=base, timeout=20) as client:
            rows = client.post("/search", json={"text": "photo", "limit": 10}).json()["results"]
            yield client, root, {Path(r["path"]).name: r["id"] for r in rows}
    finally:
        stop_process(process)


@pytest.mark.parametrize("target", ["/etc/passwd", "/dev/zero"])
def test_a_link_re_pointed_after_indexing_serves_nothing(served, target):
    client, root, ids = served
    assert client.get(f"/images/{ids['link.png']}").status_code == 200
    (root / "link.png").unlink()
    (root / "link.png").symlink_to(target)

    for url in (f"/images/{ids['link.png']}", f"/images/{ids['link.png']}/thumbnail?size=512"):
        response = client.get(url)
        assert response.status_code == 404, url
        assert b"root:" not in response.content and "not served" in response.json()["detail"]


def test_a_file_replaced_by_a_fifo_is_not_opened(served):
    client, root, ids = served
    (root / "real.png").unlink()
    os.mkfifo(root / "real.png")
    response = client.get(f"/images/{ids['real.png']}", timeout=10)  # a blocked open would time out here
    assert response.status_code == 404 and "FIFO" in response.json()["detail"]


def test_concurrent_requests_for_one_new_thumbnail_all_get_a_whole_jpeg(served):
    client, _root, ids = served
    url = f"/images/{ids['big.png']}/thumbnail?size=512"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: client.get(url), range(16)))
    assert {r.status_code for r in responses} == {200}
    for response in responses:
        Image.open(io.BytesIO(response.content)).load()  # raises on a truncated JPEG
    assert len({r.content for r in responses}) == 1


@pytest.mark.parametrize(
    "path", ["~nosuchuser/photos", "/" + "x" * 300 + "/photos", "relative/photos", "/a" * 300, "/tmp/\x00x"]
)
def test_unusable_index_paths_get_422_with_a_message(server, path):
    response = httpx.post(f"{server}/index", json={"paths": [path]}, timeout=20)
    assert response.status_code == 422 and response.json()["detail"]


def test_a_newline_in_path_prefix_is_a_literal_not_a_500(server):
    body = {"text": "x", "filter": {"path_prefix": "/tmp/a\nb\\c\td'e\"f"}}
    response = httpx.post(f"{server}/search", json=body, timeout=20)
    assert response.status_code == 200 and response.json()["results"] == []


def test_many_long_path_requests_do_not_stall_health(server):
    body = {"paths": ["/" + "/".join(["deep"] * 200) + "/x"] * 100}

    def post(_):
        return httpx.post(f"{server}/index", json=body, timeout=60).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        posts = [pool.submit(post, i) for i in range(24)]
        slowest = 0.0
        while not all(p.done() for p in posts):
            started = time.monotonic()
            assert httpx.get(f"{server}/health", timeout=10).status_code == 200
            slowest = max(slowest, time.monotonic() - started)
        codes = {p.result() for p in posts}
    assert codes <= {403, 404} and slowest < 5.0, (codes, slowest)


def peak_memory_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def test_four_one_bit_png_bombs_at_once_are_refused_without_the_memory(served_process):
    process, base = served_process
    bomb = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(bomb, format="PNG")  # 100 M pixels: at the pixel cap, not over it
    assert len(bomb.getvalue()) < 20_000
    before = peak_memory_mb(process.pid)

    def upload(_):
        return httpx.post(f"{base}/search/image", files={"file": ("bomb.png", bomb.getvalue())}, timeout=60)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(upload, range(4)))

    assert {r.status_code for r in responses} == {422}
    assert "IMGSEARCH_MAX_DECODED_MB" in responses[0].json()["detail"]
    assert peak_memory_mb(process.pid) - before < 100  # decoded naively, each would take 400 MB


# ── Milvus going away ─────────────────────────────────────────────────────────────────────────────


def test_milvus_going_away_gives_503_and_the_api_recovers(tmp_path, tiny_model_dir, imgsearch_bin):
    port = free_port()
    command = milvus_command("milvus-lite-server", tmp_path / "milvus")
    milvus, _ = start_server(lambda _p: command(port), None, lambda _p: milvus_ready(port))
    env = {
        **cli_environment(tmp_path / "data", tiny_model_dir),
        "IMGSEARCH_MILVUS_URI": f"http://127.0.0.1:{port}",
        "IMGSEARCH_COLLECTION": unique_collection(),
    }
    root = tmp_path / "root"
    for i in range(3):
        write_photo(root / f"p{i}.png", seed=i)
    api = None
    try:
        subprocess.run([imgsearch_bin, "index", str(root)], env=env, check=True, capture_output=True, timeout=120)
        api, base = start_api(imgsearch_bin, env)
        assert httpx.post(f"{base}/search", json={"text": "x"}, timeout=30).status_code == 200

        stop_process(milvus)
        down = httpx.post(f"{base}/search", json={"text": "x"}, timeout=120)
        assert down.status_code == 503 and "cannot be reached" in down.json()["detail"]
        cli = subprocess.run([imgsearch_bin, "search", "x"], env=env, capture_output=True, text=True, timeout=180)
        assert cli.returncode == 1 and len(cli.stderr.strip().splitlines()) == 1, cli.stderr

        milvus, _ = start_server(lambda _p: command(port), None, lambda _p: milvus_ready(port))
        deadline = time.monotonic() + 60
        while (status := httpx.post(f"{base}/search", json={"text": "x"}, timeout=60).status_code) != 200:
            assert time.monotonic() < deadline, status
            time.sleep(1)
        assert len(httpx.post(f"{base}/search", json={"text": "x"}, timeout=30).json()["results"]) == 3
    finally:
        if api is not None:
            stop_process(api)
        stop_process(milvus)
