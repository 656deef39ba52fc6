"""Gather the text queries that arrive together and embed them in one model call.

On a CPU the model's cost grows much less than linearly with the batch, so eight
concurrent searches embedded as one batch finish sooner than eight in a queue.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from imgsearch.errors import ImgsearchError
from imgsearch.model.embedder import Embedder, TextEmbedding


class QueryQueueFullError(ImgsearchError):
    """Too many text queries are waiting for the model (503: try again)."""


@dataclass
class _Request:
    texts: list[str]
    future: Future


class TextBatcher:
    """One thread feeds the model. The queue is bounded, a caller waits at most ``timeout_s``, and a text
    that makes the model fail fails only its own request."""

    def __init__(self, encoder: Embedder, max_texts: int = 64, max_waiting: int = 256, timeout_s: float = 30.0):
        self._encoder = encoder
        self._max_texts = max_texts
        self._timeout_s = timeout_s
        self._queue: queue.Queue[_Request | None] = queue.Queue(maxsize=max_waiting)
        self._thread = threading.Thread(target=self._run, name="text-batcher", daemon=True)
        self._thread.start()

    async def embed(self, texts: list[str]) -> TextEmbedding:
        request = _Request(texts, Future())
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            raise QueryQueueFullError(
                f"{self._queue.maxsize} text queries are waiting for the model; try again shortly"
            ) from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(request.future), self._timeout_s)
        except TimeoutError:
            raise QueryQueueFullError(
                f"the model did not embed the query within {self._timeout_s:.0f} s; "
                "the server is overloaded, try again shortly"
            ) from None

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = [first]
            count = len(first.texts)
            while count < self._max_texts:
                try:
                    following = self._queue.get_nowait()
                except queue.Empty:
                    break
                if following is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(following)
                count += len(following.texts)
            # A caller that gave up (cancelled, timed out) is dropped here, not embedded.
            live = [request for request in batch if request.future.set_running_or_notify_cancel()]
            if live:
                self._embed(live)

    def _embed(self, batch: list[_Request]) -> None:
        try:
            embedded = self._encoder.embed_texts([text for request in batch for text in request.texts])
        except Exception as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
            else:  # find the request that fails: the others still get their answer
                for request in batch:
                    self._embed([request])
            return
        start = 0
        for request in batch:
            end = start + len(request.texts)
            request.future.set_result(
                TextEmbedding(np.array(embedded.vectors[start:end]), embedded.truncated[start:end])
            )
            start = end
