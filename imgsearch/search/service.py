"""Turn a search request into query vectors and a Milvus filter, run it, shape the hits."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from starlette.concurrency import run_in_threadpool

from imgsearch.media.images import DecodedImage
from imgsearch.model.embedder import Embedder
from imgsearch.ocr.matching import holds_a_word
from imgsearch.search.batching import TextBatcher
from imgsearch.search.ranking import blend
from imgsearch.search.relevance import (
    Cutoff,
    CutoffParams,
    auto_cutoff,
    centre,
    collapse,
    contributions,
    diversify,
    fuse,
)
from imgsearch.search.requests import (
    SORT_POOL,
    CutoffInfo,
    FoldedImage,
    SearchHit,
    SearchRequest,
    SearchResponse,
    TermContribution,
)
from imgsearch.store import Hit, MilvusStore
from imgsearch.store.fields import wall_clock_datetime
from imgsearch.store.filters import ImageFilter
from imgsearch.store.vector_copy import VectorCopy

MIN_POOL, MAX_POOL = 100, 1000  # candidates a cutoff, fusion, collapse or MMR works over
BACKGROUND_SAMPLE = 2000  # rows of the collection an auto cutoff compares a query's scores with
BACKGROUND_REFRESH_S = 60.0  # on a server, which has no generation token


@dataclass
class Entry:
    """A result on its way to the page: its hit, its cosine to the query (or BM25 score for names only), the
    score it was ranked by, and its rank among the word matches."""

    hit: Hit
    score: float
    rank_score: float = 0.0
    name_rank: int | None = None
    in_image_text: bool = False  # found by its words inside the text read in the picture
    duplicates: list[Entry] = field(default_factory=list)  # near-identical results folded into this one


@dataclass(frozen=True)
class Background:
    """A fixed sample of the collection, centred on its mean, and what a cutoff needs besides."""

    mean: np.ndarray | float  # the sample's mean vector (0.0 for an empty collection)
    centred: np.ndarray  # the sample's vectors, centred (relevance.centre)
    size: int  # rows in the collection
    params: CutoffParams

    @classmethod
    def of(cls, store: MilvusStore | VectorCopy) -> Background:
        sample = store.sample_vectors(BACKGROUND_SAMPLE)
        mean = sample.mean(axis=0) if len(sample) else 0.0
        return cls(
            mean,
            centre(sample, mean) if len(sample) else sample,
            max(store.count(), len(sample)),
            CutoffParams.from_json(store.cutoff_params()),
        )


@dataclass
class Ranked:
    page: list[Entry] = field(default_factory=list)
    cutoff: CutoffInfo | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Query:
    """A request's terms: vectors with weights (texts, images) and words matched against names only."""

    labels: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    images: list[bool] = field(default_factory=list)
    names_only: list[str] = field(default_factory=list)  # quoted texts
    words: list[str] = field(default_factory=list)  # unquoted texts, with lexical_weight > 0

    def add_vector(self, label: str, weight: float, vector: np.ndarray, image: bool = False) -> None:
        self.labels.append(label)
        self.weights.append(weight)
        self.vectors.append(np.asarray(vector, dtype=np.float32))
        self.images.append(image)

    def blended(self) -> np.ndarray | None:
        return blend(list(zip(self.vectors, self.weights))) if self.vectors else None

    @property
    def image_only(self) -> bool:
        """Whether every term that pulls towards something is an image (its scores are then centred too)."""
        return all(image for image, weight in zip(self.images, self.weights) if weight > 0)

    def lexical_text(self) -> str | None:
        text = " ".join(self.names_only + self.words).strip()
        return text or None

    def explain(self, vector: np.ndarray | None, name_rank: int | None) -> list[TermContribution]:
        explained = []
        if self.vectors and vector is not None:
            cosines, shares = contributions(np.stack(self.vectors), self.weights, vector)
            explained = [
                TermContribution(term=label, weight=weight, cosine=cosine, contribution=share)
                for label, weight, cosine, share in zip(self.labels, self.weights, cosines, shares)
            ]
        for text in self.names_only + self.words:
            explained.append(TermContribution(term=f'"{text}"', weight=1.0, name_rank=name_rank))
        return explained


def split_quoted(text: str) -> tuple[str, list[str]]:
    """A text's unquoted part (embedded) and its double-quoted parts (matched against names only)."""
    quoted = [part.strip() for part in _QUOTED.findall(text) if part.strip()]
    rest = " ".join(_QUOTED.sub(" ", text).split())
    return rest, quoted


_QUOTED = re.compile(r'"([^"]*)"')


def request_terms(request: SearchRequest, uploads: Sequence[tuple[str, DecodedImage]]) -> list[Term]:
    """The request's terms: its shorthands (text, image_id, negative_text; an upload no term names counts as
    the example image) and then ``terms``, each ``upload_ref`` resolved to an upload's position."""
    terms: list[Term] = []
    if request.text is not None and request.text_weight > 0:
        terms.append(Term(request.text, None, None, request.text_weight))
    if request.image_id is not None and request.image_weight > 0:
        terms.append(Term(None, request.image_id, None, request.image_weight))
    if request.negative_text is not None and request.negative_weight > 0:
        terms.append(Term(request.negative_text, None, None, -request.negative_weight))
    named = [(term, upload_position(term.upload_ref, uploads)) for term in request.terms]
    referenced = {position for _, position in named if position is not None}
    for position, (name, _) in enumerate(uploads):
        if position not in referenced and request.image_weight > 0:
            terms.append(Term(None, None, position, request.image_weight, label=f"upload {name}"))
    for term, position in named:
        label = f"upload {uploads[position][0]}" if position is not None else ""
        terms.append(Term(term.text, term.image_id, position, term.weight, label=label))
    return terms


@dataclass(frozen=True)
class Term:
    text: str | None
    image_id: str | None
    upload: int | None  # position among the uploads
    weight: float
    label: str = ""


def upload_position(ref: str | None, uploads: Sequence[tuple[str, DecodedImage]]) -> int | None:
    """The position of the upload ``ref`` names: a position ('0', '1' ...) or a file name."""
    if ref is None:
        return None
    if ref.isdigit() and int(ref) < len(uploads):
        return int(ref)
    for position, (name, _) in enumerate(uploads):
        if name == ref:
            return position
    raise UploadNotFoundError(ref, [name for name, _ in uploads])


class UploadNotFoundError(LookupError):
    def __init__(self, ref: str, names: list[str]):
        super().__init__(
            f"no upload '{ref}' in this request (upload positions count from 0"
            + (f"; file names: {', '.join(names)})" if names else ")")
        )


class ImageNotFoundError(LookupError):
    def __init__(self, image_id: str):
        super().__init__(f"no indexed image with id '{image_id}'")


@dataclass
class SearchService:
    encoder: Embedder
    store: MilvusStore | VectorCopy  # the copy on the embedded default: exact in-memory search
    text_batcher: TextBatcher  # concurrent text queries share one model call
    recheck_s: float = 5.0  # how often to look whether the collection was dropped and made again
    _checked_token: str | None = field(default=None, init=False)
    _checked_at: float = field(default=-1e9, init=False)
    _background_key: str | None = field(default=None, init=False)
    _background: Background | None = field(default=None, init=False)

    def check_collection(self) -> None:
        """If the collection was re-created since the last look, check its model and weights again.

        Raises ModelMismatchError (409) or CollectionNotFoundError (503). Blocking: call off the event loop.
        """
        token = self.store.creation_token()
        if token != self._checked_token:
            self.store.check_model(self.encoder.name, self.encoder.dim, self.encoder.fingerprint)
            self._checked_token = token
        self._checked_at = time.monotonic()

    async def search(self, request: SearchRequest, uploads: Sequence[tuple[str, DecodedImage]] = ()) -> SearchResponse:
        """Run ``request``; ``uploads`` are the (file name, image) pairs of POST /search/image."""
        started = time.perf_counter()
        if time.monotonic() - self._checked_at >= self.recheck_s:  # no thread hop on the searches in between
            await run_in_threadpool(self.check_collection)
        notes: list[str] = []
        query = await self._resolve(request, uploads, notes)
        image_filter = ImageFilter.from_request(request.filter)
        found = await run_in_threadpool(self._rank, request, query, image_filter)
        results = []
        for entry in found.page:
            hit = to_hit(entry.hit, entry.score)
            hit.folded = [
                FoldedImage(
                    id=folded.hit.id,
                    path=folded.hit.row["path"],
                    score=round(folded.score, 6),
                    **image_urls(folded.hit.id),
                )
                for folded in entry.duplicates
            ]
            hit.duplicates = [folded.id for folded in hit.folded]
            hit.name_match = entry.name_rank is not None
            hit.text_match = entry.in_image_text
            if request.explain:
                hit.explanation = query.explain(entry.hit.vector, entry.name_rank)
            results.append(hit)
        facets = count_tags(hit.tags for hit in results) if request.facets else None
        return SearchResponse(
            results=results,
            took_ms=round((time.perf_counter() - started) * 1000, 2),
            notes=notes + found.notes,
            facets=facets,
            cutoff=found.cutoff,
        )

    async def _resolve(
        self, request: SearchRequest, uploads: Sequence[tuple[str, DecodedImage]], notes: list[str]
    ) -> Query:
        """The request's terms as vectors (texts embedded together, uploads together) and words to match."""
        terms = request_terms(request, uploads)
        split = {i: split_quoted(term.text) for i, term in enumerate(terms) if term.text is not None}
        vectors: dict[int, tuple[np.ndarray, bool]] = {}  # by term position: (vector, is an image)
        texts = [(i, text) for i, (text, _) in split.items() if text]
        if texts:
            embedded = await self.text_batcher.embed([text for _, text in texts])
            if any(embedded.truncated):
                notes.append(f"text longer than the model's {self.encoder.max_text_tokens}-token limit was truncated")
            vectors |= {i: (vector, False) for (i, _), vector in zip(texts, embedded.vectors)}
        wanted_ids = [term.image_id for term in terms if term.image_id is not None]
        if wanted_ids:
            rows = await run_in_threadpool(self.store.get, wanted_ids, True)
            for i, term in enumerate(terms):
                if term.image_id is not None:
                    if term.image_id not in rows:
                        raise ImageNotFoundError(term.image_id)
                    vectors[i] = (np.asarray(rows[term.image_id]["vector"], dtype=np.float32), True)
        uploaded = [i for i, term in enumerate(terms) if term.upload is not None]
        if uploaded:
            images = [uploads[terms[i].upload][1].image for i in uploaded]
            embedded_images = await run_in_threadpool(self.encoder.embed_images, images)
            vectors |= {i: (vector, True) for i, vector in zip(uploaded, embedded_images)}
        query = Query()
        for i, term in enumerate(terms):  # in the order given, so explanations list them so
            if i in vectors:
                label = term.label or term.text or f"image {term.image_id}"
                query.add_vector(label, term.weight, vectors[i][0], image=vectors[i][1])
            if term.text is not None and term.weight > 0:
                text, quoted = split[i]
                query.names_only += quoted
                if text and request.lexical_weight > 0:
                    query.words.append(text)
        if not query.vectors and not query.names_only:
            raise ValueError("nothing to search for: every term has weight 0 or is empty")
        return query

    def _rank(self, request: SearchRequest, query: Query, image_filter: ImageFilter) -> Ranked:
        """The page of results: nearest by the blended vector, stopped by the cutoff, fused with the word
        matches, near-duplicates folded, re-ranked for variety, paged. Blocking: runs in a worker thread."""
        vector = query.blended()
        words = query.lexical_text()
        page_end = request.offset + request.limit
        pooled = (
            request.cutoff == "auto"
            or request.collapse
            or request.diversity > 0
            or words is not None
            or request.sort == "newest"
        )
        ranked = Ranked()
        if not pooled:  # the plain search: Milvus (or the copy) pages
            hits = self.store.search(
                vector[None, :], request.limit, request.offset, image_filter, with_vectors=request.explain
            )[0]
            ranked.page = [
                Entry(hit, hit.score) for hit in hits if request.min_score is None or hit.score >= request.min_score
            ]
            return ranked
        pool = max(SORT_POOL, page_end) if request.sort == "newest" else min(MAX_POOL, max(MIN_POOL, 5 * page_end))
        by_vector = (
            self.store.search(vector[None, :], pool, 0, image_filter, with_vectors=True)[0]
            if vector is not None
            else []
        )
        if request.cutoff == "auto" and vector is not None and by_vector:
            keep, cutoff = self._cut(by_vector, vector, query.image_only)
            by_vector = [hit for hit, kept in zip(by_vector, keep) if kept]
            ranked.cutoff = CutoffInfo(**asdict(cutoff))
        by_words = self.store.search_text(words, pool, image_filter, with_vectors=True) if words else []
        by_words = [hit for hit in by_words if holds_a_word(hit.row["text"], words)]
        inside = " ".join(query.words)  # quoted text is for names only
        by_inside = self.store.search_image_text(inside, pool, image_filter, with_vectors=True) if inside else []
        entries = self._fuse(by_vector, by_words, by_inside, vector, request.lexical_weight)
        if request.min_score is not None:
            entries = [entry for entry in entries if entry.score >= request.min_score]
        if request.collapse and entries:
            centred = centre(np.stack([entry.hit.vector for entry in entries]), self.background().mean)
            groups = collapse(centred, request.collapse_threshold)
            for group in groups:
                entries[group[0]].duplicates = [entries[i] for i in group[1:]]
            entries = [entries[group[0]] for group in groups]
        if request.diversity > 0 and entries:
            order = diversify(
                np.asarray([entry.rank_score for entry in entries]),
                np.stack([entry.hit.vector for entry in entries]),
                request.diversity,
                min(len(entries), page_end),
            )
            entries = [entries[i] for i in order]
        if request.sort == "newest":
            entries.sort(key=lambda entry: (-entry.hit.row["taken_at"], -entry.score))
        if words and not by_words and not by_inside:
            ranked.notes.append("no file, folder, description or text in a picture matched the words")
        ranked.page = entries[request.offset : page_end]
        return ranked

    def _fuse(
        self,
        by_vector: list[Hit],
        by_words: list[Hit],
        by_inside: list[Hit],
        vector: np.ndarray | None,
        lexical_weight: float,
    ) -> list[Entry]:
        """One ranking from the vector hits, the word hits (BM25) and the hits by words inside the text read in
        pictures: weighted reciprocal rank fusion of those there are. With no word hits, the vector ranking as
        it is."""
        name_rank = {hit.id: rank for rank, hit in enumerate(by_words, start=1)}
        inside = {hit.id for hit in by_inside}
        if vector is None and not by_inside:  # names only: the BM25 order and score
            return [Entry(hit, hit.score, hit.score, name_rank[hit.id]) for hit in by_words]
        if not by_words and not by_inside:
            return [Entry(hit, hit.score, hit.score) for hit in by_vector]
        hits = {hit.id: hit for hit in by_inside} | {hit.id: hit for hit in by_words}
        hits |= {hit.id: hit for hit in by_vector}
        weight = lexical_weight if lexical_weight > 0 else 0.5  # quoted words alone: an even say
        fused = fuse(
            [[hit.id for hit in by_vector], [hit.id for hit in by_words], [hit.id for hit in by_inside]],
            [1 - weight, weight, weight],
        )
        return [
            Entry(
                hits[i],
                float(hits[i].vector @ vector) if vector is not None else score,
                score,
                name_rank.get(i),
                in_image_text=i in inside,
            )
            for i, score in fused
        ]

    def _cut(self, hits: list[Hit], vector: np.ndarray, image_only: bool) -> tuple[np.ndarray, Cutoff]:
        background = self.background()
        probe = centre(vector, background.mean) if image_only else vector
        candidates = centre(np.stack([hit.vector for hit in hits]), background.mean) @ probe
        return auto_cutoff(
            candidates,
            background.centred @ probe if background.centred.size else np.zeros(0),
            background.size,
            background.params,
        )

    def background(self) -> Background:
        """The collection's fixed sample, read again after writes (embedded) or each minute (server)."""
        key = self.store.generation() or str(int(time.monotonic() // BACKGROUND_REFRESH_S))
        if key != self._background_key or self._background is None:
            self._background, self._background_key = Background.of(self.store), key
        return self._background


def to_hit(hit: Hit, score: float | None = None) -> SearchHit:
    row = hit.row
    return SearchHit(
        id=hit.id,
        path=row["path"],
        score=round(hit.score if score is None else score, 6),
        width=row["width"],
        height=row["height"],
        **image_urls(hit.id),
        taken_at=wall_clock_datetime(row["taken_at"]),
        taken_at_source=row["taken_at_source"],
        format=row["format"],
        camera_make=row["camera_make"],
        camera_model=row["camera_model"],
        gps=row["gps"],
        tags=list(row.get("tags") or []),
        tag_scores=[round(float(v), 4) for v in row.get("tag_scores") or []],
        image_text=row.get("image_text") or "",
    )


def image_urls(image_id: str) -> dict[str, str]:
    """Where the API serves an image and its thumbnail (search_api/routes/images.py)."""
    return {"image_url": f"/images/{image_id}", "thumbnail_url": f"/images/{image_id}/thumbnail"}


def count_tags(tag_lists: Iterable[Sequence[str]]) -> dict[str, int]:
    """Images per tag, most first (then by name)."""
    counts = Counter(tag for tags in tag_lists for tag in tags)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
