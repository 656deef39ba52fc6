"""Talking to an imgsearch API on this machine from the CLI, as safely as to a stranger.

Another local user can listen on 127.0.0.1:8000 first. So the CLI trusts a local port only when the socket that
listens on it belongs to this user (Linux: /proc/net/tcp and tcp6), sends the API key to nobody else, and reads every
answer within an overall deadline and a byte limit: a server that dribbles or floods cannot stall or fill the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_ANSWER_BYTES = 8 * 1024 * 1024
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


class NotOurs(Exception):
    """The address is not an imgsearch API of this user's on this machine, or it did not answer well in time."""


def listener_uid(port: int) -> int | None:
    """The user id owning the socket that listens on ``port`` (any local address), from /proc; None if none."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 7 and fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return int(fields[7])
    return None


def check_ours(url: str) -> None:
    """Raise NotOurs unless ``url`` is a loopback address whose port this user listens on."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK or parts.port is None:
        raise NotOurs(f"{url} is not a local http address with a port")
    if listener_uid(parts.port) != os.getuid():
        raise NotOurs(f"what listens on port {parts.port} is not this user's")


def call(method: str, url: str, api_key: str, deadline_s: float, json_body: Any = None) -> tuple[int, Any]:
    """(status, JSON body) of one request to a local API of this user's, within ``deadline_s`` in all (headers
    dribbled a byte at a time included) and at most MAX_ANSWER_BYTES; NotOurs otherwise. Plain http.client, on a
    thread the CLI stops waiting for at the deadline: a CLI search through a running API is mostly its imports."""
    import threading

    check_ours(url)
    outcome: list[Any] = []
    exchange = threading.Thread(
        target=lambda: outcome.append(_exchange(method, url, api_key, deadline_s, json_body)), daemon=True
    )
    exchange.start()
    exchange.join(deadline_s)
    if not outcome:
        raise NotOurs(f"{url} did not answer well within {deadline_s:g} s")
    if isinstance(outcome[0], Exception):
        raise NotOurs(f"{url}: {type(outcome[0]).__name__}")
    return outcome[0]


def _exchange(method: str, url: str, api_key: str, timeout_s: float, json_body: Any) -> tuple[int, Any] | Exception:
    import http.client

    parts = urlsplit(url)
    headers = {"X-API-Key": api_key} if api_key else {}
    body = None
    if json_body is not None:
        body = json.dumps(json_body).encode()
        headers["Content-Type"] = "application/json"
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    try:
        connection.request(method, parts.path or "/", body=body, headers=headers)
        response = connection.getresponse()
        answer = bytearray()
        while chunk := response.read1(65536):
            answer += chunk
            if len(answer) > MAX_ANSWER_BYTES:
                return NotOurs(f"{url} answered more than {MAX_ANSWER_BYTES} bytes")
        return response.status, json.loads(answer) if answer else None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return exc
    finally:
        connection.close()
