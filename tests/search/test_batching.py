"""The text batcher: bounded, timed, and one bad query or a caller that leaves harms no one else."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from imgsearch.model.embedder import TextEmbedding
from imgsearch.search.batching import QueryQueueFullError, TextBatcher


class FakeEncoder:
    """Embeds a text as [len(text)]; fails on "boom"; waits for ``gate`` when it is cleared."""

    def __init__(self):
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[list[str]] = []

    def embed_texts(self, texts):
        self.calls.append(list(texts))
        self.gate.wait(10)
        if "boom" in texts:
            raise RuntimeError("the model failed on this text")
        return TextEmbedding(np.array([[float(len(t))] for t in texts]), [False] * len(texts))


@pytest.fixture
def encoder():
    return FakeEncoder()


def test_a_text_that_makes_the_model_fail_fails_only_its_own_request(encoder):
    batcher = TextBatcher(encoder)

    async def main():
        encoder.gate.clear()  # hold the model so the next three queries are batched together
        first = asyncio.ensure_future(batcher.embed(["a"]))
        await asyncio.sleep(0.1)
        rest = [asyncio.ensure_future(batcher.embed([t])) for t in ("bb", "boom", "dddd")]
        await asyncio.sleep(0.1)
        encoder.gate.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    results = asyncio.run(main())
    batcher.close()
    assert [r.vectors[0][0] for i, r in enumerate(results) if i != 2] == [1.0, 2.0, 4.0]
    assert isinstance(results[2], RuntimeError)
    assert ["bb", "boom", "dddd"] in encoder.calls  # they were one batch before the failure split it


def test_a_cancelled_request_never_breaks_later_batches(encoder):
    batcher = TextBatcher(encoder)

    async def main():
        encoder.gate.clear()
        first = asyncio.ensure_future(batcher.embed(["a"]))
        await asyncio.sleep(0.1)
        leaving = asyncio.ensure_future(batcher.embed(["gone"]))
        await asyncio.sleep(0.1)
        leaving.cancel()
        await asyncio.sleep(0.1)  # the loop passes the cancellation on to the batcher's future
        encoder.gate.set()
        await first
        return await batcher.embed(["later"])

    later = asyncio.run(main())
    batcher.close()
    assert later.vectors[0][0] == 5.0
    assert ["gone"] not in encoder.calls  # nobody waits for it, so it is not embedded


def test_a_full_queue_and_a_slow_model_give_a_clear_error(encoder):
    batcher = TextBatcher(encoder, max_waiting=1, timeout_s=0.5)

    async def main():
        encoder.gate.clear()
        first = asyncio.ensure_future(batcher.embed(["a"]))  # taken by the model thread, which then waits
        await asyncio.sleep(0.1)
        queued = asyncio.ensure_future(batcher.embed(["b"]))  # fills the one waiting place
        await asyncio.sleep(0.05)
        with pytest.raises(QueryQueueFullError, match="waiting for the model"):
            await batcher.embed(["c"])
        with pytest.raises(QueryQueueFullError, match="within 0 s|within 1 s"):
            await first
        await asyncio.gather(queued, return_exceptions=True)

    asyncio.run(main())
    encoder.gate.set()
    batcher.close()
