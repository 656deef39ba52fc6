"""A collection's rows: writes that bump the generation token, reads by id or in pages, vector and text search.
A mixin of ``MilvusStore``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymilvus import MilvusException

from imgsearch.media.searchable_text import compose, name_words, with_image_text, with_tags, word_tokens
from imgsearch.ocr.matching import inside_score, inside_tokens
from imgsearch.store.catalogue import TEXT_MATCH_PROPERTY, VALID_ID
from imgsearch.store.fields import MAX_IMAGE_TEXT, METADATA_FIELDS, TEXT_SPARSE, fit_utf8
from imgsearch.store.filters import ImageFilter, quote

log = logging.getLogger(__name__)

_MAX_PAGE = 16384  # the most rows Milvus returns per query

_GET_BATCH = 2000  # rows with vectors got by id per request
_UNREAD = ("image_text", "text_read_from")  # a row written without them: its picture's text is not read yet


class Rows:
    """The rows of an image collection: writes, reads and searches. Expects ``MilvusStore``'s connection."""

    # On a server the collection is Strong, and a Strong search waits for the server's next time tick: 200 ms a
    # query on the Milvus 2.3 standalone (bench/query_latency.py --milvus standalone). The API's store searches at
    # Session (its own writes at once, another process's within a tick); a one-shot command keeps Strong, so that
    # it sees what the command before it wrote. Milvus Lite ignores both.
    search_consistency: str = "Strong"

    def upsert(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write whole rows. A row without ``text`` gets its file and folder names as its searchable text, and one
        without the text read in its picture gets none (read by the indexer's text stage)."""
        if rows:
            payload = [
                {
                    "text": compose(name_words(row["path"])) if "text" not in row else row["text"],
                    **{name: "" for name in _UNREAD if name in METADATA_FIELDS},
                    **row,
                    "vector": np.asarray(row["vector"], dtype=np.float32).tolist(),
                }
                for row in rows
            ]
            self._call(lambda c: c.upsert(self.collection, payload))
            self._wrote()

    def set_tags(self, tags: dict[str, tuple[list[str], list[float], str]]) -> int:
        """Write only the ``tags``, ``tag_scores`` and searchable ``text`` (given as it was read, before the new
        tags) of rows by id: a partial update, so a vector or path that an indexer wrote meanwhile stays. Rows
        deleted meanwhile are skipped. Returns the rows written.

        A server without partial updates (before Milvus 2.6) gets whole rows, read again just before."""
        if not tags:
            return 0
        payload = [
            {"id": i, "tags": names, "tag_scores": scores, "text": with_tags(text, names)}
            for i, (names, scores, text) in tags.items()
        ]
        return self._update_fields(
            payload,
            lambda row: {
                **row,
                "tags": tags[row["id"]][0],
                "tag_scores": tags[row["id"]][1],
                "text": with_tags(row["text"], tags[row["id"]][0]),
            },
        )

    def set_image_text(self, read: dict[str, tuple[str, str]]) -> int:
        """Write the text read in pictures, by id: (text read, content hash it was read from). Only the rows still
        holding that content get it (a file changed meanwhile is read again after its next embedding); their
        ``text`` keeps its other parts as they are now. Returns the rows written."""
        current = self.get(list(read))
        payload = [
            {
                "id": i,
                "image_text": fit_utf8(text, MAX_IMAGE_TEXT),
                "text_read_from": digest,
                "text": with_image_text(current[i]["text"], text),
            }
            for i, (text, digest) in read.items()
            if i in current and current[i]["content_hash"] == digest
        ]
        if not payload:
            return 0
        by_id = {row["id"]: row for row in payload}
        return self._update_fields(
            payload,
            lambda row: {
                **row,
                **by_id[row["id"]],
                "text": with_image_text(row["text"], by_id[row["id"]]["image_text"]),
            },
        )

    def _update_fields(self, payload: list[dict[str, Any]], whole: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
        """Write some fields of rows by id (``payload``, each with its ``id``): a partial update, so what another
        writer changed meanwhile in the other fields stays. Rows deleted meanwhile are skipped. A server without
        partial updates (before Milvus 2.6) gets whole rows, read again just before and changed by ``whole``."""
        if self._partial_updates is not False:
            try:
                return self._upsert_partial(payload)
            except MilvusException as exc:  # rows deleted meanwhile, or a server without partial updates
                log.info("a batch of partial updates was refused (%s); writing the rows that remain", exc.message)
            present = self.get([row["id"] for row in payload])
            try:
                return self._upsert_partial([row for row in payload if row["id"] in present]) if present else 0
            except MilvusException:
                if self._partial_updates:  # they work here: never fall back to whole rows and their race
                    raise
                log.info("this Milvus has no partial updates: some columns are written with whole rows")
                self._partial_updates = False
        rows = [whole(row) for row in self.get([row["id"] for row in payload], with_vectors=True).values()]
        self.upsert(rows)
        return len(rows)

    def _upsert_partial(self, rows: list[dict[str, Any]]) -> int:
        self._call(lambda c: c.upsert(self.collection, rows, partial_update=True))
        self._partial_updates = True
        self._wrote()
        return len(rows)

    def delete(self, ids: Sequence[str], batch: int = 1000) -> None:
        for start in range(0, len(ids), batch):
            chunk = list(ids[start : start + batch])
            self._call(lambda c, chunk=chunk: c.delete(self.collection, ids=chunk))
            self._wrote()

    def generation(self) -> str:
        """Changes after every write by any imgsearch process to this embedded collection; '' on a server."""
        return self.generation_token.read() if self.generation_token else ""

    def _wrote(self) -> None:
        if self.generation_token:
            self.generation_token.bump()

    def flush(self) -> None:
        self._call(lambda c: c.flush(self.collection))

    def count(self) -> int:
        if not self.exists():
            return 0
        result = self._call(lambda c: c.query(self.collection, filter="", output_fields=["count(*)"]))
        return int(result[0]["count(*)"])

    def get(self, ids: Sequence[str], with_vectors: bool = False) -> dict[str, dict[str, Any]]:
        """Rows by id; ids that are missing (or could never be ours) are absent from the result."""
        ids = [i for i in ids if VALID_ID.fullmatch(i)]  # pymilvus puts ids into a filter expression
        if not ids:
            return {}
        fields = METADATA_FIELDS + (["vector"] if with_vectors else [])
        rows = self._call(lambda c: c.get(self.collection, ids=list(ids), output_fields=fields))
        return {row["id"]: row for row in rows}

    def iter_metadata(self) -> Iterator[dict[str, Any]]:
        """Every row's metadata (no vectors)."""
        return self.iter_rows()

    def iter_rows(
        self, fields: list[str] | None = None, with_vectors: bool = False, filter_expr: str = "", batch_size: int = 5000
    ) -> Iterator[dict[str, Any]]:
        """Rows matching ``filter_expr`` (all by default), with ``fields`` (all metadata by default).

        With vectors, the ids are listed first and the rows then got by id: Milvus Lite's query iterator sorts
        every row by id for each page, and pages with vectors are small, so at 100,000 rows it took 99 s where
        listing and getting took 21 s (2 cores). A row deleted in between is skipped; one added is not seen."""
        output_fields = list(fields or METADATA_FIELDS)
        if not with_vectors:
            yield from self._iterate(output_fields, filter_expr, batch_size)
            return
        ids = [row["id"] for row in self._iterate(["id"], filter_expr, _MAX_PAGE)]
        for start in range(0, len(ids), _GET_BATCH):
            chunk = ids[start : start + _GET_BATCH]
            yield from self._call(
                lambda c, chunk=chunk: c.get(self.collection, ids=chunk, output_fields=output_fields + ["vector"])
            )

    def _iterate(self, output_fields: list[str], filter_expr: str, batch_size: int) -> Iterator[dict[str, Any]]:
        iterator = self._call(
            lambda c: c.query_iterator(
                self.collection, batch_size=batch_size, filter=filter_expr, output_fields=output_fields
            )
        )
        try:
            while True:
                try:
                    batch = iterator.next()
                except MilvusException as exc:
                    raise self._domain_error(exc) from exc
                if not batch:
                    break
                yield from batch
        finally:
            iterator.close()

    def search(
        self,
        vectors: np.ndarray,
        limit: int,
        offset: int = 0,
        image_filter: ImageFilter = ImageFilter(),
        with_vectors: bool = False,
    ) -> list[list[Hit]]:
        """Nearest rows by cosine similarity, best first, one list per query vector."""
        fields = METADATA_FIELDS + (["vector"] if with_vectors else [])
        results = self._call(
            lambda c: c.search(
                self.collection,
                data=np.asarray(vectors).tolist(),
                anns_field="vector",
                limit=limit,
                offset=offset,
                filter=image_filter.expr(),
                output_fields=fields,
                search_params={"metric_type": "COSINE", "params": search_params(self.index_type, limit + offset)},
                consistency_level=self.search_consistency,
            )
        )
        return [[_hit(hit["id"], float(hit["distance"]), dict(hit["entity"])) for hit in hits] for hits in results]

    def search_text(
        self, text: str, limit: int, image_filter: ImageFilter = ImageFilter(), with_vectors: bool = False
    ) -> list[Hit]:
        """Rows whose searchable text (names, descriptions, tags) matches the words of ``text``, best BM25
        match first; ``Hit.score`` is the BM25 score (larger is better)."""
        fields = METADATA_FIELDS + (["vector"] if with_vectors else [])
        if self._text_match is None:  # a property of the server the collection was made on: read once
            self._text_match = self._properties().get(TEXT_MATCH_PROPERTY, "bm25")
        if self._text_match == "like":
            return self._search_text_like(text, limit, image_filter, fields)
        results = self._call(
            lambda c: c.search(
                self.collection,
                data=[text],
                anns_field=TEXT_SPARSE,
                limit=limit,
                filter=image_filter.expr(),
                output_fields=fields,
                search_params={"metric_type": "BM25"},
                consistency_level=self.search_consistency,
            )
        )
        # Milvus Lite reports BM25 scores negated (best most negative); a server reports them positive. Ties go by
        # id, as the vector copy's own BM25 orders them (Milvus Lite's order is the order rows were written in), so
        # that a search answers alike wherever it runs.
        hits = [_hit(hit["id"], abs(float(hit["distance"])), dict(hit["entity"])) for hit in results[0]]
        return sorted(hits, key=lambda hit: (-hit.score, hit.id))

    def _search_text_like(self, text: str, limit: int, image_filter: ImageFilter, fields: list[str]) -> list[Hit]:
        """Without BM25 (Milvus before 2.5): rows holding any of the words, most words first, scored by the
        share of words they hold. Slower and cruder, but names are still found."""
        words = list(dict.fromkeys(word_tokens(text)))[:16]
        if not words:
            return []
        like = " or ".join(f"text like {quote('%' + word + '%')}" for word in words)
        expr = f"({like})" + (f" and {image_filter.expr()}" if image_filter.clauses else "")
        rows = self._query_or_nothing(expr, fields)
        scored = [(sum(word in row["text"] for word in words) / len(words), row) for row in rows]
        scored.sort(key=lambda pair: (-pair[0], pair[1]["id"]))
        return [_hit(row["id"], score, dict(row)) for score, row in scored[:limit]]

    def search_image_text(
        self, text: str, limit: int, image_filter: ImageFilter = ImageFilter(), with_vectors: bool = False
    ) -> list[Hit]:
        """Rows whose text read in the picture holds the words of ``text``, inside longer words and codes too
        (imgsearch/ocr/matching.py), most of the words first; ``Hit.score`` is the share held (0 to 1)."""
        tokens = inside_tokens(text)
        if not tokens:
            return []
        # ``text`` holds the words read in lower case: LIKE is case-blind there. The read text itself decides.
        like = " or ".join(f"text like {quote('%' + token + '%')}" for token in tokens)
        expr = f'image_text != "" and ({like})' + (f" and {image_filter.expr()}" if image_filter.clauses else "")
        found = self._query_or_nothing(expr, ["id", "image_text"])
        scored = sorted(
            ((score, row["id"]) for row in found if (score := inside_score(tokens, row["image_text"])) > 0),
            key=lambda pair: (-pair[0], pair[1]),
        )[:limit]
        rows = self.get([row_id for _, row_id in scored], with_vectors=with_vectors)  # only the best get vectors
        return [_hit(row_id, score, dict(rows[row_id])) for score, row_id in scored if row_id in rows]

    def _query_or_nothing(self, expr: str, fields: list[str]) -> list[dict[str, Any]]:
        """The rows matching a ``LIKE '%word%'`` expression; none on a server that refuses it (Milvus 2.3 matches
        prefixes only): searches there rank by the picture alone."""
        try:
            return self._call(lambda c: c.query(self.collection, filter=expr, output_fields=fields, limit=_MAX_PAGE))
        except MilvusException as exc:
            log.warning("this Milvus cannot match words inside text (%s): searching by the picture alone", exc.message)
            return []

    def sample_vectors(self, size: int = 2000) -> np.ndarray:
        """The vectors of a fixed random sample of about ``size`` rows: those whose id (a hash, so uniformly
        spread) falls below a bound. The same rows every time, until rows come or go."""
        total = self.count()
        if total == 0:
            return np.zeros((0, 0), dtype=np.float32)
        bound = id_sample_bound(size, total)
        expr = f'id < "{bound}"' if bound else ""
        rows = list(self.iter_rows(fields=["id"], with_vectors=True, filter_expr=expr))
        return np.asarray([row["vector"] for row in rows[: 2 * size]], dtype=np.float32)


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    row: dict[str, Any]
    vector: np.ndarray | None = None  # with_vectors only


def id_sample_bound(size: int, total: int) -> str:
    """An id bound that about ``size`` of ``total`` rows lie below ('' when all should be taken)."""
    if total <= size:
        return ""
    return format(max(1, int(size / total * 16**6)), "06x")


def _hit(row_id: str, score: float, entity: dict[str, Any]) -> Hit:
    vector = entity.pop("vector", None)
    return Hit(
        id=row_id, score=score, row=entity, vector=None if vector is None else np.asarray(vector, dtype=np.float32)
    )


def search_params(index_type: str, depth: int) -> dict[str, int]:
    """The search breadth for ``index_type`` that reaches ``depth`` (limit + offset) results: a server refuses an
    HNSW ``ef`` or a DiskANN ``search_list`` below it. The floor of 64 and IVF's nprobe trade speed for recall
    on a server's index; Milvus Lite searches exactly whatever they are."""
    if index_type == "HNSW":
        return {"ef": max(64, depth)}
    if index_type == "DISKANN":
        return {"search_list": max(64, depth)}
    if index_type == "IVF_FLAT":
        return {"nprobe": 32}
    return {}
