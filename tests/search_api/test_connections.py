"""The HTTP protocol's deadlines (search_api/connections.py), against a real uvicorn server on a real socket.

The server runs in this process so each test can shorten the deadlines; `test_server_process.py` checks that
`imgsearch serve` uses the protocol at all."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import uvicorn

from imgsearch.search_api import connections

BIG = 16 * 1024 * 1024


async def app(scope, receive, send):
    """Echoes how many body bytes arrived (`/slow-reader` first keeps the client waiting); `/big` sends 16 MB,
    `/sized?N` N bytes in one write."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/sized":
        size = int(scope["query_string"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % size)]})
        await send({"type": "http.response.body", "body": b"s" * size})
        return
    if scope["path"] == "/big":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(BIG).encode())]})
        chunk = b"x" * (1 << 20)
        for _ in range(BIG // len(chunk)):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if scope["path"] == "/slow-reader":
        await asyncio.sleep(3)
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        received += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = str(received).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]}
    )
    await send({"type": "http.response.body", "body": body})


def serve(listener: socket.socket):
    server = uvicorn.Server(
        uvicorn.Config(
            app, http=connections.DeadlineProtocol, log_level="warning", lifespan="off", timeout_graceful_shutdown=2
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        yield listener.getsockname()
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()


@pytest.fixture
def address():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    yield from serve(listener)


@pytest.fixture
def small_buffers():
    """A server whose sockets buffer a few KB in the kernel (set on the listener, the accepted sockets inherit it),
    so what a client leaves unread stays in the server's own buffer, as megabytes would with the usual sizes."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    yield from serve(listener)


def small_window_client(address) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(address)
    return sock


def post_head(length: int, path: str = "/") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()


def seconds_until_closed(sock: socket.socket, keep_going, limit: float = 15) -> float | None:
    """Calls keep_going(sock) every 0.2 s until the server closes the connection; None if it never did."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < limit:
        try:
            keep_going(sock)
            if sock.recv(1 << 20) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
    return None


def read_response(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        data += (chunk := sock.recv(65536))
        assert chunk, "the server closed the connection"
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    while len(body) < length:
        body += (chunk := sock.recv(65536))
        assert chunk, "the server closed the connection"
    return body


def test_a_body_dribbled_a_byte_at_a_time_is_let_go_while_a_slow_honest_upload_completes(address, monkeypatch):
    monkeypatch.setattr(connections, "BODY_GRACE_S", 1.0)
    monkeypatch.setattr(connections, "MIN_RATE", 100)
    dribbler = socket.create_connection(address)
    dribbler.sendall(post_head(100_000))
    honest = socket.create_connection(address)
    honest.sendall(post_head(2000))

    def upload():  # 400 bytes/s, four times the minimum: 5 s, five times the grace
        for _ in range(20):
            honest.sendall(b"y" * 100)
            time.sleep(0.25)

    uploader = threading.Thread(target=upload)
    uploader.start()
    closed_after = seconds_until_closed(dribbler, lambda sock: sock.send(b"x"))
    uploader.join()
    assert read_response(honest) == b"2000"
    assert closed_after is not None and closed_after < 3, closed_after
    dribbler.close()
    honest.close()


def test_time_the_server_keeps_a_client_waiting_does_not_count_against_its_body(address, monkeypatch):
    monkeypatch.setattr(connections, "BODY_GRACE_S", 1.0)
    monkeypatch.setattr(connections, "MIN_RATE", 10**9)
    with socket.create_connection(address) as client:
        client.sendall(post_head(1_000_000, "/slow-reader") + b"z" * 1_000_000)  # the app reads it only after 3 s
        assert read_response(client) == b"1000000"


def test_blank_lines_between_requests_do_not_keep_a_connection_while_a_keep_alive_client_is_answered(
    address, monkeypatch
):
    monkeypatch.setattr(connections, "HEAD_TIMEOUT_S", 1.0)
    idler = socket.create_connection(address)
    idler.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(idler) == b"0"
    closed_after = seconds_until_closed(
        idler, lambda sock: sock.send(b"\r\n")
    )  # uvicorn's keep-alive timer stops at each
    assert closed_after is not None and closed_after < 3, closed_after
    with socket.create_connection(address) as client:  # one request every 0.5 s, for three times the deadline
        for _ in range(6):
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(client) == b"0"
            time.sleep(0.5)
    idler.close()


def test_a_response_nobody_reads_is_dropped_while_a_reader_that_pauses_gets_all_of_it(address, monkeypatch):
    monkeypatch.setattr(connections, "WRITE_GRACE_S", 2.0)
    monkeypatch.setattr(connections, "MIN_RATE", 100_000)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(address)
    stalled.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    with socket.create_connection(address) as reader:
        reader.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        reader.settimeout(10)
        got = 0
        for _pause in range(4):  # stops reading for 1.5 s four times: 6 s in all, three times the grace
            time.sleep(1.5)
            got += len(reader.recv(4 * 1024 * 1024))
        while got < BIG and (chunk := reader.recv(1 << 20)):
            got += len(chunk)
    stalled.settimeout(10)
    time.sleep(1)
    got_stalled = 0
    try:
        while chunk := stalled.recv(1 << 20):
            got_stalled += len(chunk)
    except ConnectionResetError:
        pass
    stalled.close()
    assert got >= BIG
    assert got_stalled < BIG  # the connection ended before the response did


def test_a_response_left_unread_on_a_closing_connection_is_dropped(small_buffers, monkeypatch):
    """40 KB stays under the 64 KB at which the transport pauses the app: nothing judged the client, and the close
    after the response waited for it for good."""
    monkeypatch.setattr(connections, "WRITE_GRACE_S", 1.0)
    idler = small_window_client(small_buffers)
    idler.sendall(b"GET /sized?40000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    time.sleep(3)
    idler.settimeout(5)
    got = 0
    try:
        while chunk := idler.recv(65536):
            got += len(chunk)
    except ConnectionResetError:
        pass
    idler.close()
    assert got < 40000  # it ended before the response did


def test_a_slow_reader_gets_all_of_a_response_that_outlasts_the_next_requests_deadline(small_buffers, monkeypatch):
    """The deadline for the next request's head used to start when the app finished its response, and cut off the
    end of a download still on its way at a steady 8 KB/s."""
    monkeypatch.setattr(connections, "HEAD_TIMEOUT_S", 1.0)
    monkeypatch.setattr(connections, "WRITE_GRACE_S", 1.0)
    monkeypatch.setattr(connections, "MIN_RATE", 1000)
    with small_window_client(small_buffers) as reader:
        reader.sendall(b"GET /sized?40000 HTTP/1.1\r\nHost: x\r\n\r\n")
        reader.settimeout(5)
        data = b""
        while len(data.partition(b"\r\n\r\n")[2]) < 40000 and (chunk := reader.recv(2048)):  # 8 KB/s: 5 s for the 40 KB
            data += chunk
            time.sleep(0.25)
        assert len(data.partition(b"\r\n\r\n")[2]) == 40000
