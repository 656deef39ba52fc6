"""The CLI talks to a local API only when it is this user's: another local user listening on the port first gets
nothing, the API key included, and what the CLI prints cannot drive the terminal."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from imgsearch.cli.common import shown
from imgsearch.cli.local_api import NotOurs, check_ours, listener_uid
from tests.support.processes import free_port, run_cli, spawn, stop_process

NOBODY = 65534


def test_a_port_this_user_listens_on_is_ours_and_a_free_one_is_not():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert listener_uid(port) == os.getuid()
        check_ours(f"http://127.0.0.1:{port}")
    with pytest.raises(NotOurs):
        check_ours(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(NotOurs):
        check_ours("http://192.0.2.1:8000")  # not this machine: never asked


@pytest.mark.skipif(os.getuid() != 0, reason="starting a server as another user needs root")
def test_a_server_of_another_user_on_the_api_port_gets_no_request_and_no_key(
    imgsearch_bin, cli_env, photo_dir, tmp_path
):
    assert run_cli(imgsearch_bin, cli_env, "index", str(photo_dir)).returncode == 0
    port, heard = free_port(), tmp_path / "heard"
    heard.touch()
    os.chmod(tmp_path, 0o755)
    os.chmod(heard, 0o666)
    squatter = textwrap.dedent(f"""
        import os, socket
        os.setgid({NOBODY}); os.setuid({NOBODY})
        server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", {port})); server.listen()
        while True:
            connection, _ = server.accept()
            with open({str(heard)!r}, "ab") as log:
                log.write(connection.recv(65536))
            connection.sendall(b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\n{{}}")
            connection.close()
    """)
    fake = spawn([sys.executable, "-c", squatter], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while listener_uid(port) != NOBODY:
            assert time.monotonic() < deadline, "the other user's server did not start"
            time.sleep(0.1)
        env = {**cli_env, "IMGSEARCH_API_URL": f"http://127.0.0.1:{port}", "IMGSEARCH_API_KEY": "s3cret-key"}
        found = run_cli(imgsearch_bin, env, "search", "a photo", "-k", "3")
        assert found.returncode == 0, found.stderr
        assert len(found.stdout.splitlines()) == 3  # answered here, from the index
        assert heard.read_bytes() == b""  # not a byte, and so not the key, went to the other user's server
    finally:
        stop_process(fake)


def test_what_the_cli_prints_cannot_drive_the_terminal():
    hostile = "photo\x1b]52;c;ZXZpbA==\x07\x1b[31m\nfake line.jpg"
    printed = shown(hostile)
    assert "\x1b" not in printed and "\x07" not in printed and "\n" not in printed
    assert printed.startswith("photo") and printed.endswith("fake line.jpg")
    assert shown("Ünïcode café/IMG_2041.jpg") == "Ünïcode café/IMG_2041.jpg"


def test_a_server_that_dribbles_or_floods_its_answer_is_let_go_at_the_deadline():
    import threading

    from imgsearch.cli import local_api

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        stop = threading.Event()

        def dribble():
            connection, _ = server.accept()
            with connection:
                for byte in b"HTTP/1.1 200 OK\r\nx-slow: " + b"a" * 200:
                    if stop.is_set():
                        return
                    connection.sendall(bytes([byte]))
                    time.sleep(0.05)

        threading.Thread(target=dribble, daemon=True).start()
        started = time.monotonic()
        with pytest.raises(NotOurs):
            local_api.call("GET", f"http://127.0.0.1:{port}/health", "", 0.5)
        assert time.monotonic() - started < 2
        stop.set()
