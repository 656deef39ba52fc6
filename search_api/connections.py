"""What the HTTP server does with clients that hold a connection without moving a request along.

uvicorn waits for a client as long as it cares to take: a local user can open connections that send nothing, a
byte now and then, a request body a byte at a time, blank lines between requests, or a request whose response they
never read. Each one holds a file descriptor, and the last an open image file too, until the server has none left
for anyone. Here every stage of a request has a deadline (in the manner of Apache's ``mod_reqtimeout``):

- the request's head (request line and headers) must arrive within ``HEAD_TIMEOUT_S`` of the connection opening,
  of the previous response, or of the first byte of a pipelined request (while the previous response is still
  on its way, the response's deadline applies instead);
- its body must come at ``MIN_RATE`` bytes/s or more, judged over each ``BODY_GRACE_S`` while the server reads
  (time the app keeps the client waiting does not count);
- a response must be taken at ``MIN_RATE`` bytes/s or more, judged over each ``WRITE_GRACE_S`` while bytes of it
  wait in the server (the kernel's buffers do not count against the client).

A client past a deadline is disconnected. The server also takes as many file descriptors as the system lets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import resource
import socket
import struct
import termios

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_TIMEOUT_S = 10.0
BODY_GRACE_S = 20.0
WRITE_GRACE_S = 30.0
MIN_RATE = 500  # bytes/s either way: a 3 MB photo may take 100 minutes; a body a byte a second is let go after 20 s

log = logging.getLogger("uvicorn.error")


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools) with deadlines for each request's head, body and response."""

    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _write_timer: asyncio.TimerHandle | None = None
    _body_received = 0
    _body_at_check = 0
    _delivered_at_check = 0

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(_CountingTransport(transport, self._watch_writes))
        self._arm_head()

    def on_message_begin(self) -> None:  # a pipelined request begins while the one before is answered
        super().on_message_begin()
        if self._head_timer is None:
            self._arm_head()

    def on_headers_complete(self) -> None:
        self._head_timer = _cancel(self._head_timer)
        super().on_headers_complete()
        self._body_received = self._body_at_check = 0
        self._body_timer = self.loop.call_later(BODY_GRACE_S, self._check_body)

    def on_body(self, body: bytes) -> None:
        self._body_received += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._body_timer = _cancel(self._body_timer)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        next_request_queued = bool(self.pipeline)
        super().on_response_complete()
        # uvicorn's keep-alive timer stops at any byte, such as the blank lines a parser skips before a request
        if not next_request_queued and self._head_timer is None and not self.transport.is_closing():
            self._arm_head()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._watch_writes()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm_head(self) -> None:
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._check_head)

    def _check_head(self) -> None:
        if self.transport.get_write_buffer_size():  # still sending the last response: its own deadline applies
            self._watch_writes()
            self._arm_head()
        else:
            self._give_up()

    def _check_body(self) -> None:
        came = self._body_received - self._body_at_check
        if came < MIN_RATE * BODY_GRACE_S and not self.flow.read_paused:  # paused: the app has not taken what came
            self._give_up()
            return
        self._body_at_check = self._body_received
        self._body_timer = self.loop.call_later(BODY_GRACE_S, self._check_body)

    def _watch_writes(self) -> None:
        """Judges the client's reading while bytes wait in the server for it (called when the transport pauses
        the app's writes, when the connection closes with bytes still to send, and when the next request's head
        is due while the last response is still on its way)."""
        if self._write_timer is None and self.transport.get_write_buffer_size():
            self._delivered_at_check = self._delivered()
            self._write_timer = self.loop.call_later(WRITE_GRACE_S, self._check_write)

    def _check_write(self) -> None:
        self._write_timer = None
        if not self.transport.get_write_buffer_size():
            return  # all handed to the kernel: the next pause or response end watches again
        delivered = self._delivered()
        if delivered - self._delivered_at_check < MIN_RATE * WRITE_GRACE_S:
            self._give_up()
            return
        self._delivered_at_check = delivered
        self._write_timer = self.loop.call_later(WRITE_GRACE_S, self._check_write)

    def _delivered(self) -> int:
        """Bytes of responses the client has taken: written, less what waits in the transport's buffer and in the
        socket's (the kernel's buffers hold megabytes, so the transport's alone can sit still for seconds while
        the client reads)."""
        in_kernel = 0
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                in_kernel = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        return self.transport.written - self.transport.get_write_buffer_size() - in_kernel

    def _give_up(self) -> None:
        self._disarm()
        if self.transport.get_write_buffer_size():
            sock = self.transport.get_extra_info("socket")
            # a reset: else the kernel keeps the unsent megabytes for a client that does not read them
            with contextlib.suppress(AttributeError, OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()  # close() would wait for that client
        elif not self.transport.is_closing():
            self.transport.close()

    def _disarm(self) -> None:
        for timer in (self._head_timer, self._body_timer, self._write_timer):
            _cancel(timer)
        self._head_timer = self._body_timer = self._write_timer = None


class _CountingTransport:
    """The connection's transport, counting the bytes written to it; a close with bytes still to send tells the
    protocol (such a close waits for the client)."""

    def __init__(self, transport: asyncio.Transport, on_close_with_bytes_left):
        self._transport = transport
        self._on_close_with_bytes_left = on_close_with_bytes_left
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self._transport.write(data)

    def close(self) -> None:
        self._transport.close()
        if self._transport.get_write_buffer_size():
            self._on_close_with_bytes_left()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()


def raise_open_file_limit() -> int:
    """The soft limit on open files raised to the hard one (often 1024 against 500,000): each client connection
    takes one. Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    target = hard if hard != unlimited else 1 << 20
    if soft == unlimited or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("imgsearch: cannot raise the open-file limit from %d: %s", soft, exc)
        return soft
    return target
