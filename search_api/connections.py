"""What the HTTP server does with connections that never finish a request.

uvicorn waits for a request's head for as long as a client cares to take: a local user that opens connections
and sends nothing, or a byte now and then, holds one of the server's file descriptors each, until it has them all
and no one else gets an answer. Here a request's head (its request line and headers) must arrive within
``HEAD_TIMEOUT_S`` of the connection opening or of the first byte after a response, or the connection is
closed; and the server takes as many file descriptors as the system lets it.
"""

from __future__ import annotations

import asyncio
import logging
import resource

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_TIMEOUT_S = 10.0

log = logging.getLogger("uvicorn.error")


class HeadTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools) with a deadline for each request's head."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:  # the first byte of a request after a response (keep-alive)
        super().on_message_begin()
        if self._head_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


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
