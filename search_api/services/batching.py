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

from imgsearch_core.encoder import Encoder, TextEmbedding


@dataclass
class _Request:
    texts: list[str]
    future: Future


class TextBatcher:
    def __init__(self, encoder: Encoder, max_texts: int = 64):
        self._encoder = encoder
        self._max_texts = max_texts
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="text-batcher", daemon=True)
        self._thread.start()

    async def embed(self, texts: list[str]) -> TextEmbedding:
        request = _Request(texts, Future())
        self._queue.put(request)
        return await asyncio.wrap_future(request.future)

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
            self._embed(batch)

    def _embed(self, batch: list[_Request]) -> None:
        try:
            embedded = self._encoder.embed_texts([text for request in batch for text in request.texts])
        except Exception as exc:  # hand the failure to every waiting request
            for request in batch:
                request.future.set_exception(exc)
            return
        start = 0
        for request in batch:
            end = start + len(request.texts)
            request.future.set_result(TextEmbedding(np.array(embedded.vectors[start:end]), embedded.truncated[start:end]))
            start = end
