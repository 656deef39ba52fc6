"""What the HTTP server does with clients that hold a connection without moving a request along.

uvicorn waits for a client as long as it cares to take: a local user can open connections that send nothing, a
byte now and then, a request body a byte at a time, blank lines between requests, or a request whose response they
never read. Each one holds a file descriptor, and the last two an open image file too, until the server has none
left for anyone. Here every stage of a request has a deadline (as Apache's ``mod_reqtimeout`` gives them):

- the request's head (request line and headers) must arrive within ``HEAD_TIMEOUT_S`` of the connection opening,
  of the previous response, or of the first byte of a pipelined request;
- its body within ``BODY_GRACE_S``, plus a second for each ``MIN_RATE`` bytes received, while the server reads
  (time the app keeps the client waiting does not count);
- a response, once more of it waits to be sent than the transport buffers: ``WRITE_GRACE_S``, plus a second for
  each ``MIN_RATE`` bytes the client reads meanwhile.

A client past a deadline is disconnected. The server also takes as many file descriptors as the system lets it.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import resource
import struct
import termios

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_TIMEOUT_S = 10.0
BODY_GRACE_S = 20.0
WRITE_GRACE_S = 30.0
MIN_RATE = 500  # bytes/s, either way: a 20 MB upload may take 11 hours; a body a byte a second is let go after 20 s

log = logging.getLogger("uvicorn.error")


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools) with deadlines for each request's head, body and response."""

    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _write_timer: asyncio.TimerHandle | None = None
    _body_started = 0.0
    _body_received = 0
    _write_started = 0.0
    _write_waiting = 0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head()

    def on_message_begin(self) -> None:  # a pipelined request begins while the one before is answered
        super().on_message_begin()
        if self._head_timer is None:
            self._arm_head()

    def on_headers_complete(self) -> None:
        self._head_timer = _cancel(self._head_timer)
        super().on_headers_complete()
        self._body_started, self._body_received = self.loop.time(), 0
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
        if self._write_timer is None:  # while paused the app writes nothing: the buffer shrinks as the client reads
            self._write_started, self._write_waiting = self.loop.time(), self._unsent()
            self._write_timer = self.loop.call_later(WRITE_GRACE_S, self._check_write)

    def resume_writing(self) -> None:
        self._write_timer = _cancel(self._write_timer)
        super().resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm_head(self) -> None:
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._give_up)

    def _check_body(self) -> None:
        now = self.loop.time()
        if self.flow.read_paused:  # the app has not taken what came: the client is not the one who is slow
            self._body_started = now - self._body_received / MIN_RATE
            due = now + BODY_GRACE_S
        else:
            due = self._body_started + BODY_GRACE_S + self._body_received / MIN_RATE
        if now < due:
            self._body_timer = self.loop.call_later(due - now, self._check_body)
        else:
            self._give_up()

    def _check_write(self) -> None:
        now = self.loop.time()
        sent = max(self._write_waiting - self._unsent(), 0)
        due = self._write_started + WRITE_GRACE_S + sent / MIN_RATE
        if now < due:
            self._write_timer = self.loop.call_later(due - now, self._check_write)
        else:
            self._give_up()

    def _unsent(self) -> int:
        """Bytes the client has yet to take: in the transport's buffer, and in the socket's (the kernel's buffers
        hold megabytes, so the transport's alone can sit still for seconds while the client reads)."""
        in_kernel = 0
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                in_kernel = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
            except (OSError, ValueError):
                pass
        return self.transport.get_write_buffer_size() + in_kernel

    def _give_up(self) -> None:
        self._disarm()
        if self.transport.get_write_buffer_size():
            self.transport.abort()  # close() would wait for a client that does not read
        elif not self.transport.is_closing():
            self.transport.close()

    def _disarm(self) -> None:
        for timer in (self._head_timer, self._body_timer, self._write_timer):
            _cancel(timer)
        self._head_timer = self._body_timer = self._write_timer = None


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
