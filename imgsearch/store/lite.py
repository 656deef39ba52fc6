"""Milvus Lite hosting: several processes share one embedded data directory.

Milvus Lite allows one process per data directory. The first imgsearch process that opens it serves it over
gRPC on a Unix socket and writes the socket's path to ``<data dir>/imgsearch-endpoint.json``; later processes
connect to it. If the serving process exits, the next call of another process takes over. The socket lies in
the data directory (mode 0700) or, when that path is too long for a socket, in a private runtime folder: only
the owner can connect. With a server URI (``http://host:19530``) every process simply connects.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from imgsearch.errors import StoreUnavailableError
from imgsearch.media.safe_files import UnsafeFileError, private_dir

log = logging.getLogger(__name__)

# Milvus Lite lacks AllocTimestamp; pymilvus' query iterator falls back to a client timestamp, which is
# correct, but both sides log the miss on every call.
logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)
# When the process serving a data directory exits, pymilvus logs a traceback for each recovery it tries on the
# dead socket; the store takes over the directory and says so in one line (MilvusStore._call).
logging.getLogger("pymilvus.client.connection_manager").setLevel(logging.ERROR)

ENDPOINT_FILE = "imgsearch-endpoint.json"

_hosted: dict[Path, tuple[Any, Any, int]] = {}
_hosted_lock = threading.Lock()


def resolve_uri(milvus_uri: str, wait_s: float = 30.0) -> str:
    """The gRPC address to connect to for ``milvus_uri``; hosts a Lite data directory if nobody does."""
    if not milvus_uri.endswith(".db"):
        return milvus_uri
    data_dir = Path(milvus_uri).expanduser().resolve()
    _private_dir(data_dir)
    deadline = time.monotonic() + wait_s
    while True:
        url = _live_endpoint(data_dir)
        if url:
            return url
        try:
            return _host(data_dir)
        except _DataDirLocked:
            # Another process holds the directory and is about to publish its socket (or is a
            # process that does not share it, such as a plain pymilvus script).
            if time.monotonic() > deadline:
                raise StoreUnavailableError(
                    f"Milvus Lite data directory {data_dir} is locked by another process that does not "
                    f"serve it to others. Stop that process, or point IMGSEARCH_MILVUS_URI at a Milvus server."
                ) from None
            time.sleep(0.2)


class _DataDirLocked(Exception):
    pass


def _private_dir(path: Path) -> None:
    """The data directory, this user's alone, in a folder nobody else can move it out of."""
    try:
        private_dir(path)
    except UnsafeFileError as exc:
        raise StoreUnavailableError(f"{path}: {exc.reason}; refusing to keep Milvus data in it") from None
    parent = os.lstat(path.parent)
    others_write = stat.S_IMODE(parent.st_mode) & 0o022 and not parent.st_mode & stat.S_ISVTX
    if parent.st_uid not in (os.getuid(), 0) or others_write:
        raise StoreUnavailableError(
            f"{path.parent}: another user owns this folder or may write in it, and could move the index away; "
            "keep the Milvus Lite directory in a folder of your own (IMGSEARCH_MILVUS_URI)"
        )


_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux, 104 on macOS


def _socket_stem(data_dir: Path) -> Path:
    """The folder and name prefix of ``data_dir``'s sockets: inside it, or in a private runtime folder when
    that path would be too long for a socket (judged with the longest pid, so it never depends on the pid)."""
    if len(os.fsencode(data_dir / "imgsearch-4294967295.sock")) <= _MAX_SOCKET_PATH:
        return data_dir / "imgsearch"
    return _runtime_dir() / hashlib.blake2b(os.fsencode(data_dir), digest_size=10).hexdigest()


_fallback_runtime: list[Path] = []


def _runtime_dir() -> Path:
    """A folder of this user's alone for sockets: ``imgsearch-UID`` in XDG_RUNTIME_DIR or the temporary folder;
    where another user took that name first (anyone can make a folder in /tmp), a new one no one can guess.
    Other processes find the socket through the endpoint file, wherever it is (``_live_endpoint``)."""
    for base in (os.environ.get("XDG_RUNTIME_DIR"), tempfile.gettempdir()):
        if base:
            candidate = Path(base) / f"imgsearch-{os.getuid()}"
            try:
                private_dir(candidate)
                return candidate
            except (UnsafeFileError, OSError):
                continue
    if not _fallback_runtime:
        _fallback_runtime.append(Path(tempfile.mkdtemp(prefix=f"imgsearch-{os.getuid()}-")))  # 0700, unguessable
        log.warning(
            "imgsearch: %s is taken by another user; sockets go to %s",
            Path(tempfile.gettempdir()) / f"imgsearch-{os.getuid()}",
            _fallback_runtime[0],
        )
    return _fallback_runtime[0]


def _private_folder_of_ours(path: Path) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not stat.S_IMODE(info.st_mode) & 0o077


def _socket_path(data_dir: Path, pid: int) -> Path:
    """Where process ``pid`` serves ``data_dir``. The pid is part of the name: a new host never reuses the
    address of a dead one, which pymilvus would still hold a broken channel to."""
    stem = _socket_stem(data_dir)
    return stem.with_name(f"{stem.name}-{pid}.sock")


def _remove_stale_sockets(data_dir: Path) -> None:
    """Sockets of hosts that died; called while holding the directory's lock, so none is in use."""
    stem = _socket_stem(data_dir)
    for stale in stem.parent.glob(f"{stem.name}-*.sock"):
        stale.unlink(missing_ok=True)


def _live_endpoint(data_dir: Path) -> str | None:
    with _hosted_lock:
        if data_dir in _hosted:
            return f"unix:{_hosted[data_dir][2]}"
    try:
        info = json.loads((data_dir / ENDPOINT_FILE).read_text())
        pid, path = int(info["pid"]), str(info["socket"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # Only a socket named as this folder's would be, in a folder no other user can write to (where it is depends on
    # XDG_RUNTIME_DIR and on who took the runtime folder's name, which differ between processes).
    if (
        not _pid_alive(pid)
        or Path(path).name != _socket_path(data_dir, pid).name
        or not _private_folder_of_ours(Path(path).parent)
    ):
        return None
    try:
        with socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(1.0)
            probe.connect(path)
        return f"unix:{path}"
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # as Milvus Lite's own server and Milvus standalone


def _grpc_server(db):
    """Milvus Lite's gRPC service for ``db``, as its own ``milvus-lite server`` makes it, taking pymilvus' pings."""
    from concurrent import futures

    import grpc
    from milvus_lite.adapter.grpc.servicer import MilvusServicer
    from pymilvus.grpc_gen import milvus_pb2_grpc

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            # pymilvus pings its server every 10 s, also between calls. A gRPC server's defaults allow such a ping once
            # in 5 minutes and hang up after a few more ("too_many_pings": an error in the log of a process idle for a
            # minute, such as an indexer while auto measures the model). The socket is the owner's alone.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_ping_strikes", 0),  # never hang up on a client's pings
        ],
    )
    milvus_pb2_grpc.add_MilvusServiceServicer_to_server(MilvusServicer(db), server)
    return server


def _host(data_dir: Path) -> str:
    from milvus_lite import DataDirLockedError, MilvusLite

    with _hosted_lock:
        if data_dir in _hosted:
            return f"unix:{_hosted[data_dir][2]}"
        try:
            db = MilvusLite(str(data_dir))
        except DataDirLockedError:
            raise _DataDirLocked() from None
        path = _socket_path(data_dir, os.getpid())
        try:
            _remove_stale_sockets(data_dir)
            server = _grpc_server(db)
            server.add_insecure_port(f"unix:{path}")
            server.start()
            os.chmod(path, 0o600)
        except BaseException:
            db.close()
            raise
        _hosted[data_dir] = (server, db, str(path))
    endpoint = data_dir / ENDPOINT_FILE
    tmp = endpoint.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps({"pid": os.getpid(), "socket": str(path)}))
    os.replace(tmp, endpoint)
    log.info("serving Milvus Lite data directory %s on %s", data_dir, path)
    return f"unix:{path}"


def release_hosted(milvus_uri: str | None = None) -> None:
    """Stop serving the Lite data directory of ``milvus_uri`` (all of them when None; called at exit)."""
    with _hosted_lock:
        wanted = None if milvus_uri is None else Path(milvus_uri).expanduser().resolve()
        entries = [(d, e) for d, e in _hosted.items() if wanted is None or d == wanted]
        for data_dir, _entry in entries:
            del _hosted[data_dir]
    for data_dir, (server, db, socket_path) in entries:
        try:
            info = json.loads((data_dir / ENDPOINT_FILE).read_text())
            if info.get("pid") == os.getpid():
                (data_dir / ENDPOINT_FILE).unlink()
        except (OSError, ValueError):
            pass
        try:
            server.stop(grace=2).wait(5)  # pragma: no mutate (how long in-flight calls get to finish)
            Path(socket_path).unlink(missing_ok=True)  # before the lock goes: the next host makes its own
        finally:
            db.close()


atexit.register(release_hosted)

# Past this many images the embedded default is the wrong tool (bench/query_latency.py at 1,000,000 rows on two
# cores: inserts at about 1,000 rows/s, 4 GB on disk, the API's vector copy more than 10 minutes and 8 GB of
# memory to load at start-up, while searches go to Milvus Lite itself meanwhile; at 100,000 rows 45 s and 3 GB).
LITE_ADVISED_ROWS = 500_000


def outgrown_advice(rows: int) -> str | None:
    """One line for the user of an embedded collection of ``rows`` images, when a Milvus server would serve them
    better; None below ``LITE_ADVISED_ROWS``."""
    if rows <= LITE_ADVISED_ROWS:
        return None
    return (
        f"{rows:,} images is more than Milvus Lite is made for (about {LITE_ADVISED_ROWS:,}): the server's start-up "
        "takes minutes and gigabytes to load them; move to a Milvus server with IMGSEARCH_MILVUS_URI "
        "(docs/deployment.md, 'When to leave Milvus Lite')"
    )
