"""The Milvus gateway on real Milvus Lite: which model and weights a collection accepts, which failures become
which errors, and what a search returns."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from pymilvus import MilvusException

from imgsearch.errors import (
    CollectionNotFoundError,
    ModelMismatchError,
    StoreUnavailableError,
    WeightsMismatchError,
)
from imgsearch.store.catalogue import _CREATED_PROPERTY, fingerprints_match
from imgsearch.store.collection import search_params
from imgsearch.store.fields import SCHEMA_VERSION, SearchFilter, wall_clock_datetime, wall_clock_seconds
from imgsearch.store.filters import ImageFilter
from imgsearch.store.lite import _pid_alive
from tests.support import REPO
from tests.support.vectors import DIM, unit_rows


def near(vector, cosine: float, seed: int = 0) -> np.ndarray:
    """A vector at exactly ``cosine`` to ``vector``."""
    v = np.asarray(vector, dtype=np.float64)
    v = v / np.linalg.norm(v)
    other = np.random.default_rng(seed).standard_normal(v.shape)
    other -= (other @ v) * v
    other /= np.linalg.norm(other)
    return cosine * v + np.sqrt(1 - cosine**2) * other


@pytest.mark.parametrize(
    ("cosine", "same"), [(1.0, True), (0.99, True), (0.981, True), (0.979, False), (0.5, False), (-1.0, False)]
)
def test_fingerprints_match_only_when_nearly_the_same(cosine, same):
    probe = np.random.default_rng(1).standard_normal(64)
    assert fingerprints_match(probe, near(probe, cosine)) is same
    assert fingerprints_match(near(probe, cosine), probe) is same


def test_fingerprints_of_other_lengths_or_none_at_all_never_match():
    probe = np.random.default_rng(1).standard_normal(64)
    assert not fingerprints_match(probe, probe[:32])
    assert not fingerprints_match([], [])
    assert fingerprints_match(probe * 3, probe)  # the scale of the numbers does not matter, only the direction


def test_a_collection_accepts_its_own_model_and_weights_only(store):
    probe = np.random.default_rng(2).standard_normal(64)
    store.ensure_collection("model-a", DIM, probe)
    store.check_model("model-a", DIM, probe)
    store.check_model("model-a", None, near(probe, 0.99))  # same weights on another device: tiny differences
    store.ensure_collection("model-a", DIM, probe)  # opening it again is fine
    with pytest.raises(ModelMismatchError, match="model-a") as wrong_model:
        store.check_model("model-b", DIM, probe)
    assert "model-b" in str(wrong_model.value)
    with pytest.raises(ModelMismatchError) as wrong_dim:
        store.check_model("model-a", DIM + 1)
    assert f"Collection '{store.collection}' was indexed with model 'model-a' (dim {DIM})" in str(wrong_dim.value)
    assert f"uses 'model-a' (dim {DIM + 1})" in str(wrong_dim.value)
    with pytest.raises(WeightsMismatchError) as wrong_weights:
        store.check_model("model-a", DIM, near(probe, 0.9))
    assert f"Collection '{store.collection}' was indexed with other weights than those now at 'model-a'" in str(
        wrong_weights.value
    )
    with pytest.raises(WeightsMismatchError):
        store.ensure_collection("model-a", DIM, near(probe, 0.9), record_fingerprint=True)  # never overwritten
    assert store.model_info() == ("model-a", DIM)


def test_a_reader_never_records_a_fingerprint(store):
    store.ensure_collection("model-a", DIM)
    probe = np.random.default_rng(3).standard_normal(64)
    store.check_model("model-a", DIM, probe)  # a reader: records nothing
    store.check_model("model-a", DIM, -probe)
    store.check_model("model-a", DIM, probe, record_missing=True)  # a writer: records its own
    store.check_model("model-a", DIM, near(probe, 0.99))
    with pytest.raises(WeightsMismatchError):
        store.check_model("model-a", DIM, -probe)


def test_a_missing_collection_says_so(store):
    assert not store.exists() and store.count() == 0 and store.indexed_roots() == []
    with pytest.raises(CollectionNotFoundError):
        store.model_info()
    with pytest.raises(CollectionNotFoundError):
        store.creation_token()
    with pytest.raises(CollectionNotFoundError):
        store.check_model("model-a")


def test_each_creation_of_a_collection_gets_its_own_token(store):
    store.ensure_collection("model-a", DIM)
    first = store.creation_token()
    assert first == store.creation_token()
    store.drop()
    store.ensure_collection("model-a", DIM)
    assert store.creation_token() not in ("", first)


def test_roots_are_recorded_once_each_and_kept(store):
    store.ensure_collection("model-a", DIM)
    store.add_roots(["/b", "/a"])
    store.add_roots(["/a", "/c"])
    assert store.indexed_roots() == ["/a", "/b", "/c"]


def test_roots_are_recorded_when_milvus_lite_loses_a_race_between_two_writers(store, monkeypatch):
    """Milvus Lite's server saves properties through one temporary file: two indexers recording their roots at
    once can fail one write (seen in tests/test_milvus_server.py). The indexer records its roots all the same."""
    store.ensure_collection("model-a", DIM)
    client, real = store._client, store._client.alter_collection_properties
    failures = []

    def loses_the_race_twice(*args, **kwargs):
        if len(failures) < 2:
            failures.append(1)
            raise MilvusException(
                code=1,
                message="[Errno 2] No such file or directory: '/d/collections/c/schema.json.tmp'"
                " -> '/d/collections/c/schema.json'",
            )
        return real(*args, **kwargs)

    monkeypatch.setattr(client, "alter_collection_properties", loses_the_race_twice)
    store.add_roots(["/photos"])
    assert store.indexed_roots() == ["/photos"] and len(failures) == 2

    def refuses(*args, **kwargs):  # any other error is the caller's, at once
        failures.append(1)
        raise MilvusException(code=1100, message="properties too long")

    monkeypatch.setattr(client, "alter_collection_properties", refuses)
    with pytest.raises(MilvusException, match="too long"):
        store.add_roots(["/more"])
    assert len(failures) == 3


# Messages as gRPC and Milvus word them when the server is gone or the collection is.
@pytest.mark.parametrize(
    "message",
    [
        "<_InactiveRpcError: StatusCode.UNAVAILABLE>",
        "failed to connect to all addresses",
        "Deadline Exceeded",
        "Channel closed!",
        "Socket closed",
        "recvmsg: socket reset by peer",
    ],
)
def test_an_unreachable_milvus_becomes_store_unavailable(store, message):
    store.ensure_collection("model-a", DIM)
    calls = []

    def fails(_client):
        calls.append(1)
        raise MilvusException(code=2, message=message)

    with pytest.raises(StoreUnavailableError, match="cannot be reached"):
        store._call(fails)
    assert len(calls) == 2  # embedded: reconnected once and tried again


@pytest.mark.parametrize("message", ["collection not found[collection=images]", "can't find collection: images"])
def test_a_dropped_collection_becomes_collection_not_found(store, message):
    def fails(_client):
        raise MilvusException(code=100, message=message)

    with pytest.raises(CollectionNotFoundError):
        store._call(fails)


def test_other_milvus_errors_are_not_mistaken_for_an_outage(store):
    calls = []

    def fails(_client):
        calls.append(1)
        raise MilvusException(code=1100, message="invalid expression: width >>> 3")

    with pytest.raises(MilvusException, match="invalid expression"):
        store._call(fails)
    assert len(calls) == 1  # no reconnect, no retry


@pytest.mark.parametrize("message", ["collection not loaded", "collection has been released"])
def test_a_released_collection_is_loaded_again_and_the_call_retried(store, message):
    store.ensure_collection("model-a", DIM)
    store._call(lambda c: c.release_collection(store.collection))
    calls = []

    def fails_once(client):
        calls.append(1)
        if len(calls) == 1:
            raise MilvusException(code=101, message=message)
        return client.query(store.collection, filter="", output_fields=["count(*)"])

    assert store._call(fails_once)[0]["count(*)"] == 0
    assert len(calls) == 2


def test_deep_pages_of_a_search_are_exact(store):
    store.ensure_collection("model-a", DIM)
    rows = unit_rows(300, seed=4)
    store.upsert(rows)
    query = np.asarray(rows[0]["vector"])
    expected = np.argsort(-np.stack([r["vector"] for r in rows]) @ query, kind="stable")
    ids = [rows[i]["id"] for i in expected]
    first = [hit.id for hit in store.search(query[None, :], limit=100, offset=0)[0]]
    second = [hit.id for hit in store.search(query[None, :], limit=100, offset=100)[0]]
    assert first == ids[:100] and second == ids[100:200]  # beyond the default search breadth of 64
    hit = store.search(query[None, :], limit=1)[0][0]
    assert hit.id == rows[0]["id"] and hit.score == pytest.approx(1.0, abs=1e-5)
    assert hit.row["path"] == rows[0]["path"] and hit.row["width"] == rows[0]["width"]


def test_rows_can_be_read_back_with_and_without_vectors(store):
    store.ensure_collection("model-a", DIM)
    rows = unit_rows(3, seed=5)
    store.upsert(rows)
    got = store.get([rows[0]["id"], "no-such-id", "'; drop"], with_vectors=True)
    assert list(got) == [rows[0]["id"]]
    np.testing.assert_allclose(got[rows[0]["id"]]["vector"], rows[0]["vector"], atol=1e-6)
    plain = store.get([rows[1]["id"]])[rows[1]["id"]]
    assert "vector" not in plain and plain["content_hash"] == rows[1]["content_hash"]
    assert sorted(r["id"] for r in store.iter_rows(batch_size=2)) == sorted(r["id"] for r in rows)
    chosen = sorted([rows[0]["id"], rows[2]["id"]])
    assert sorted(r["id"] for r in store.iter_rows(filter_expr=f"id in {chosen}", batch_size=1)) == chosen
    store.delete([r["id"] for r in rows], batch=2)
    assert store.count() == 0


@pytest.mark.parametrize(("index_type", "knob"), [("HNSW", "ef"), ("DISKANN", "search_list")])
@pytest.mark.parametrize("depth", [1, 64, 65, 500])
def test_the_search_breadth_reaches_the_deepest_result_asked_for(index_type, knob, depth):
    # A Milvus server refuses an HNSW ef or a DiskANN search_list below limit + offset.
    assert search_params(index_type, depth) == {knob: max(64, depth)}


@pytest.mark.parametrize(("index_type", "knobs"), [("IVF_FLAT", {"nprobe"}), ("FLAT", set()), ("AUTOINDEX", set())])
def test_other_index_types_get_only_their_own_knobs(index_type, knobs):
    assert set(search_params(index_type, 100)) == knobs


class RecordingClient:
    """Stands in for MilvusClient: records the search the gateway sends (Milvus Lite ignores most of it)."""

    def __init__(self):
        self.calls = []

    def search(self, collection, **kwargs):
        self.calls.append((collection, kwargs))
        return [[]]


def test_a_search_asks_milvus_for_cosine_over_the_page_with_the_metadata_but_not_the_vectors(store, monkeypatch):
    client = RecordingClient()
    monkeypatch.setattr(store, "index_type", "HNSW")
    monkeypatch.setattr(store, "_client", client)
    store.search(
        np.ones((1, DIM), np.float16),
        limit=30,
        offset=90,
        image_filter=ImageFilter.from_request(SearchFilter(min_width=10)),
    )
    ((collection, sent),) = client.calls
    assert collection == store.collection
    assert sent["search_params"] == {"metric_type": "COSINE", "params": {"ef": 120}}
    assert (sent["limit"], sent["offset"], sent["filter"]) == (30, 90, "width >= 10")
    assert "vector" not in sent["output_fields"] and {"path", "width", "height"} <= set(sent["output_fields"])
    assert sent["data"] == [[1.0] * DIM]  # plain floats: gRPC cannot carry numpy's float16


def test_errors_about_a_missing_collection_name_it(store):
    with pytest.raises(CollectionNotFoundError, match=store.collection):
        store.creation_token()

    def fails(_client):
        raise MilvusException(code=100, message="collection not found[collection=x]")

    with pytest.raises(CollectionNotFoundError, match=store.collection):
        store._call(fails)


def test_a_collection_made_before_creation_tokens_has_an_empty_one(store):
    store.ensure_collection("model-a", DIM)
    store._call(lambda c: c.drop_collection_properties(store.collection, property_keys=[_CREATED_PROPERTY]))
    assert store.creation_token() == ""


def test_a_process_is_alive_until_it_has_exited_and_been_reaped():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert _pid_alive(child.pid) and _pid_alive(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert not _pid_alive(child.pid)


def test_a_collection_not_made_by_imgsearch_is_refused_and_named_as_such(store):
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=8)
    store._call(lambda c: c.create_collection(store.collection, schema=schema))
    assert store.model_info() == ("(not an imgsearch collection)", 0)
    with pytest.raises(ModelMismatchError, match=r"indexed with model '\(not an imgsearch collection\)' \(dim 0\)"):
        store.check_model("model-a", DIM)


def test_the_collection_is_made_as_its_columns_declare(store):
    from pymilvus import DataType

    from imgsearch.store.fields import COLUMNS

    store.ensure_collection("model-a", DIM)
    info = store._call(lambda c: c.describe_collection(store.collection))
    made = {
        f["name"]: (
            f["type"],
            f["params"].get("max_length") or f["params"].get("max_capacity"),
            f.get("element_type"),
            f.get("is_primary", False),
        )
        for f in info["fields"]
    }
    declared = {
        c.name: (c.dtype, c.max_capacity or c.max_length or None, c.element_type, c.name == "id") for c in COLUMNS
    }
    assert made == declared | {
        "vector": (DataType.FLOAT_VECTOR, None, None, False),
        "text_sparse": (DataType.SPARSE_FLOAT_VECTOR, None, None, False),
    }
    assert next(f for f in info["fields"] if f["name"] == "vector")["params"]["dim"] == DIM
    # No dynamic fields: a typo in a column name fails instead of storing a new key. Strong: a search sees
    # every write that came before it, also on a Milvus server.
    assert not info["enable_dynamic_field"] and info["consistency_level_name"] == "Strong"
    properties = info["properties"]
    assert (properties["imgsearch.schema"], properties["imgsearch.model"], properties["imgsearch.dim"]) == (
        str(SCHEMA_VERSION),
        "model-a",
        str(DIM),
    )
    assert store.target() == f"{store.collection}_v{SCHEMA_VERSION}"  # the configured name is an alias
    index = store._call(lambda c: c.describe_index(store.collection, "vector"))
    assert (index["index_type"], index["metric_type"]) == (store.index_type, "COSINE")


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2019, 6, 1, 9, 30),
        datetime(1969, 12, 31, 23, 59, 59),
        datetime(1826, 1, 1),
        datetime(2200, 12, 31, 23, 59, 59),
    ],
)
def test_a_stored_capture_time_reads_back_as_the_wall_clock_it_was(moment):
    """taken_at is kept as seconds and shown as a date: a photo taken at 09:30 reads 09:30, with no zone."""
    stored = wall_clock_seconds(moment)
    assert wall_clock_datetime(stored) == moment
    assert wall_clock_seconds(moment.replace(tzinfo=timezone(timedelta(hours=10)))) == stored  # its own clock


def test_releasing_one_hosted_data_directory_leaves_the_others_served(tmp_path):
    from imgsearch.store import MilvusStore, release_hosted
    from imgsearch.store.lite import ENDPOINT_FILE

    uris = [str(tmp_path / name / "milvus.db") for name in ("a", "b")]
    stores = [MilvusStore(uri, "images") for uri in uris]
    try:
        for store in stores:
            store.ensure_collection("model-a", DIM)
            store.upsert(unit_rows(2, seed=1))
        release_hosted(uris[0])
        assert not (tmp_path / "a" / "milvus.db" / ENDPOINT_FILE).exists()  # the next process may host it
        assert f'"pid": {os.getpid()}' in (tmp_path / "b" / "milvus.db" / ENDPOINT_FILE).read_text()
        assert stores[1].count() == 2  # still served
    finally:
        for store in stores:
            store.close()
        release_hosted(uris[1])
    assert not (tmp_path / "b" / "milvus.db" / ENDPOINT_FILE).exists()


def test_a_served_data_directory_takes_the_keepalive_pings_of_an_idle_client(tmp_path):
    """pymilvus pings its server every 10 s, also between calls. A gRPC server's defaults allow one such ping in 5
    minutes and hang up after a few more ("too_many_pings", logged as an error by the client of a process idle
    for a minute, such as an indexer while auto measures the model). Here a ping a second, for 5 seconds."""
    import time

    import grpc

    from imgsearch.store import lite

    uri = str(tmp_path / "milvus.db")
    channel = grpc.insecure_channel(
        lite.resolve_uri(uri),
        options=[
            ("grpc.keepalive_time_ms", 1000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ],
    )
    states = []
    try:
        channel.subscribe(states.append, try_to_connect=True)
        with pytest.raises(grpc.RpcError) as raised:  # one call, then idle
            channel.unary_unary("/milvus.proto.milvus.MilvusService/NoSuchMethod")(b"", timeout=10)
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
        time.sleep(5)
        assert states[-1] == grpc.ChannelConnectivity.READY, states  # not hung up on
    finally:
        channel.close()
        lite.release_hosted(uri)


def test_the_endpoint_another_process_wrote_is_used_only_while_it_is_live_and_its_own(tmp_path):
    """What a second process finds in a data directory another process serves: the socket, only while that
    process lives, listens, and the socket is where this folder's would be."""
    import json
    import socket

    from imgsearch.store.lite import ENDPOINT_FILE, _live_endpoint, _socket_path
    from tests.support.processes import spawn, stop_process

    data_dir = tmp_path / "milvus.db"
    data_dir.mkdir(mode=0o700)  # as resolve_uri makes it
    host = spawn([sys.executable, "-c", "import time; time.sleep(60)"])  # stands in for the serving process
    path = _socket_path(data_dir, host.pid)
    endpoint = data_dir / ENDPOINT_FILE
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(str(path))
        listener.listen()
        endpoint.write_text(json.dumps({"pid": host.pid, "socket": str(path)}))
        assert _live_endpoint(data_dir) == f"unix:{path}"
        for written in (
            "not json",
            json.dumps({"pid": host.pid}),
            json.dumps({"socket": str(path)}),
            json.dumps({"pid": host.pid, "socket": str(tmp_path / "elsewhere.sock")}),
            json.dumps({"pid": os.getpid(), "socket": str(path)}),
        ):
            endpoint.write_text(written)
            assert _live_endpoint(data_dir) is None, written
        endpoint.write_text(json.dumps({"pid": host.pid, "socket": str(path)}))
        listener.close()
        assert _live_endpoint(data_dir) is None  # nobody listens any more
    finally:
        listener.close()
        stop_process(host, grace_s=2)
    listener = socket.socket(socket.AF_UNIX)
    path.unlink()
    listener.bind(str(path))
    listener.listen()
    try:
        assert _live_endpoint(data_dir) is None  # a socket whose process has exited
    finally:
        listener.close()


def test_a_socket_folder_another_user_took_first_does_not_stop_the_store(tmp_path, monkeypatch, request):
    """With a data path too long for a socket and no XDG_RUNTIME_DIR (cron, ssh), the socket goes to
    /tmp/imgsearch-UID, a name any local user can create first: the store then refused to open at all. Now it
    serves from a folder nobody can guess, and another process, whatever its XDG_RUNTIME_DIR, finds it."""
    import json
    import shutil
    import tempfile

    from imgsearch.store import MilvusStore, lite

    fake_tmp = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))  # short: a socket path holds 107 bytes
    request.addfinalizer(lambda: shutil.rmtree(fake_tmp, ignore_errors=True))
    (fake_tmp / f"imgsearch-{os.getuid()}").symlink_to(tmp_path)  # taken: not a folder of this user
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(fake_tmp))
    monkeypatch.setattr(lite, "_fallback_runtime", [], raising=False)
    data_dir = tmp_path / ("a-long-folder-name-" * 4) / "milvus.db"
    store = MilvusStore(str(data_dir), "images")
    try:
        assert not store.exists()
        served = json.loads((data_dir / lite.ENDPOINT_FILE).read_text())["socket"]
        assert os.path.dirname(served).startswith(str(fake_tmp / f"imgsearch-{os.getuid()}-"))
        code = (
            "import sys; from pathlib import Path; from imgsearch.store.lite import _live_endpoint; "
            "print(_live_endpoint(Path(sys.argv[1])))"
        )
        elsewhere = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "other-runtime")}
        found = subprocess.run(
            [sys.executable, "-c", code, str(data_dir)],
            env=elsewhere,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=str(REPO),
        )
        assert found.stdout.strip() == f"unix:{served}", found.stderr
    finally:
        store.close()
        lite.release_hosted(str(data_dir))


def test_an_index_in_a_folder_others_may_write_in_is_refused(tmp_path):
    """Another user who may write in the folder could move the index aside, and the next run starts an empty one."""
    from imgsearch.errors import StoreUnavailableError
    from imgsearch.store import MilvusStore, release_hosted

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # writable by all, no sticky bit
    with pytest.raises(StoreUnavailableError, match="could move the index away"):
        MilvusStore(str(shared / "milvus.db"), "images")
    os.chmod(shared, 0o1777)  # as /tmp: others may write, but not move what is ours
    store = MilvusStore(str(shared / "milvus.db"), "images")
    store.close()
    release_hosted(str(shared / "milvus.db"))
