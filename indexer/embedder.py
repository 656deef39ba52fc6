"""Read, hash and decode files on worker threads while the model embeds the previous batch."""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from imgsearch.errors import ImageDecodeError
from imgsearch.indexer.profile import NO_CLOCK, StageClock
from imgsearch.indexer.scanner import FileEntry
from imgsearch.media.images import DecodedImage, decode_image
from imgsearch.media.safe_files import UnsafeFileError, read_regular
from imgsearch.model.embedder import Embedder
from imgsearch.store.fields import content_hash


@dataclass
class LoadedFile:
    entry: FileEntry
    content_hash: str = ""
    decoded: DecodedImage | None = None  # None when the content is already indexed, or on error
    error: str | None = None


@dataclass
class EmbeddedBatch:
    files: list[LoadedFile]
    vectors: np.ndarray  # (len(files), dim)


def load_file(
    entry: FileEntry,
    known_hashes: Callable[[str], bool],
    min_side: int,
    max_pixels: int,
    roots: list[str],
    max_bytes: int,
    max_decoded_bytes: int,
    clock: StageClock = NO_CLOCK,
) -> LoadedFile:
    """Read ``entry`` once (a regular file inside ``roots``, at most ``max_bytes``): hash it, and decode it
    unless its content is already in the index. ``clock`` times each stage (indexer/profile.py)."""
    loaded = LoadedFile(entry)
    try:
        with clock.stage("read"):
            data = read_regular(entry.path, roots, max_bytes)
    except UnsafeFileError as exc:
        loaded.error = exc.reason
        return loaded
    except OSError as exc:
        loaded.error = f"cannot read: {exc.strerror or exc}"
        return loaded
    with clock.stage("hash"):
        loaded.content_hash = content_hash(data)
    if known_hashes(loaded.content_hash):
        return loaded
    try:
        with clock.stage("decode"):
            loaded.decoded = decode_image(data, entry.path, min_side, max_pixels, max_decoded_bytes)
    except ImageDecodeError as exc:
        loaded.error = exc.reason
    return loaded


def load_in_parallel(
    entries: Iterable[FileEntry],
    workers: int,
    window: int,
    load: Callable[[FileEntry], LoadedFile],
    clock: StageClock = NO_CLOCK,
) -> Iterator[LoadedFile]:
    """``load`` each entry on ``workers`` threads, at most ``window`` ahead; yields in input order."""

    def next_done(pending):
        with clock.stage("waiting for decode"):
            return pending.popleft().result()

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque[Future[LoadedFile]] = deque()
        for entry in entries:
            pending.append(pool.submit(load, entry))
            if len(pending) >= window:
                yield next_done(pending)
        while pending:
            yield next_done(pending)


def embed_in_batches(
    loaded: Iterable[LoadedFile], encoder: Embedder, batch_size: int, clock: StageClock = NO_CLOCK
) -> Iterator[LoadedFile | EmbeddedBatch]:
    """Pass through files that need no embedding; group the decoded ones into embedded batches."""
    batch: list[LoadedFile] = []
    for item in loaded:
        if item.decoded is None:
            yield item
            continue
        batch.append(item)
        if len(batch) >= batch_size:
            yield _embed(batch, encoder, clock)
            batch = []
    if batch:
        yield _embed(batch, encoder, clock)


def _embed(batch: list[LoadedFile], encoder: Embedder, clock) -> EmbeddedBatch:
    with clock.stage("embed"):
        vectors = encoder.embed_images([item.decoded.image for item in batch])
    for item in batch:
        item.decoded = dataclasses.replace(item.decoded, image=None)  # free the pixels, keep what was learnt
    return EmbeddedBatch(batch, vectors)
