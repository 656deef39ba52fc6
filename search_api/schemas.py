"""Request and response bodies of the search API (they make its OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from imgsearch_core.labels import MAX_LABEL_CHARS, MAX_LABELS, MAX_TEMPLATES
from imgsearch_core.store.fields import SearchFilter
from search_api.ranking import SORT_POOL

MAX_LIMIT = 200
MAX_OFFSET = 10_000
MAX_TERMS = 16


class QueryTerm(BaseModel):
    """One part of a composite query: a text, an indexed image or an uploaded one, with a weight."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, max_length=10_000, description=(
        'words; a part in double quotes ("IMG_2041") is matched against file and folder names only'))
    image_id: str | None = Field(None, min_length=1, max_length=64, description="an indexed image")
    upload_ref: str | None = Field(None, min_length=1, max_length=255, description=(
        "an image uploaded with POST /search/image: its field position ('0', '1' ...) or its file name"))
    weight: float = Field(1.0, ge=-10, le=10, description="how much it counts; negative pulls away")

    @model_validator(mode="after")
    def _exactly_one(self) -> QueryTerm:
        given = [name for name in ("text", "image_id", "upload_ref") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("a term has exactly one of 'text', 'image_id' or 'upload_ref'")
        if self.text is not None and not self.text.strip():
            raise ValueError("a text term must not be empty or only whitespace")
        if self.weight == 0:
            raise ValueError("a term's weight must not be 0: leave the term out instead")
        return self


class CutoffInfo(BaseModel):
    mode: Literal["auto"]
    threshold: float = Field(description="centred score a result needed (see README, 'Where results stop')")
    z: float = Field(description="standard deviations above the background the threshold lies")
    background_mean: float
    background_std: float
    knee: bool = Field(description="whether the largest gap in the scores moved the cut up")
    kept: int = Field(description="candidates above the cutoff (of at most the candidate pool)")
    params: dict[str, float] = Field(description="the collection's cutoff parameters")


class TermContribution(BaseModel):
    term: str = Field(description="the term as given: its text, image id or upload")
    weight: float
    cosine: float | None = Field(None, description="the term's own cosine to the result")
    contribution: float | None = Field(None, description="its share of the result's score (the shares add up to it)")
    name_rank: int | None = Field(None, description="names-only terms: the result's rank by name match")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, max_length=10_000, description="what to look for, in words")
    image_id: str | None = Field(None, min_length=1, max_length=64, description="id of an indexed image: more like this")
    negative_text: str | None = Field(None, max_length=10_000, description="what results should not look like")
    text_weight: float = Field(1.0, ge=0, le=10)
    image_weight: float = Field(1.0, ge=0, le=10)
    negative_weight: float = Field(0.5, ge=0, le=10)
    limit: int = Field(20, ge=1, le=MAX_LIMIT)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)
    min_score: float | None = Field(None, ge=-1, le=1)
    filter: SearchFilter | None = None
    sort: Literal["relevance", "newest"] = Field(
        "relevance", description=f"newest: the {SORT_POOL:,} best matches (above min_score), newest photo first")
    facets: bool = Field(False, description="also count the tags of the results returned (response 'facets')")
    terms: list[QueryTerm] = Field(default_factory=list, max_length=MAX_TERMS, description=(
        "a composite query; text, image_id and negative_text are shorthands for terms and add to these"))
    explain: bool = Field(False, description="each result carries each term's cosine and share of the score")
    cutoff: Literal["auto", "none"] = Field("none", description=(
        "auto: stop where this query's relevant results end, judged from its scores against the collection"))
    collapse: bool = Field(False, description="fold near-identical results into one, listed in 'duplicates'")
    collapse_threshold: float = Field(0.95, ge=0.5, le=1.0, description=(
        "cosine, with the collection's mean vector taken off, at which two images count as one"))
    diversity: float = Field(0.0, ge=0, le=1, description="0: by relevance; towards 1: fewer look-alikes (MMR)")
    lexical_weight: float = Field(0.0, ge=0, le=1, description=(
        "hybrid search: how much file, folder and sidecar text matches (BM25) count against the picture, "
        "fused by rank; 0 is off. Quoted text is always matched this way."))

    @field_validator("text", "negative_text")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty or only whitespace")
        return value

    @model_validator(mode="after")
    def _something_to_search_for(self, info: ValidationInfo) -> SearchRequest:
        has_upload = bool(info.context and info.context.get("has_upload"))
        if self.text is None and self.image_id is None and not self.terms and not has_upload:
            raise ValueError("give at least one of 'text', 'image_id' or 'terms'")
        if self.text is not None and self.image_id is not None and self.text_weight == self.image_weight == 0:
            raise ValueError("text_weight and image_weight cannot both be 0")
        return self


class FoldedImage(BaseModel):
    """A near-identical image that collapse folded into a result."""

    id: str
    path: str
    score: float = Field(description="its own score for the query")
    image_url: str
    thumbnail_url: str


class SearchHit(BaseModel):
    id: str
    path: str
    score: float
    width: int
    height: int
    image_url: str
    thumbnail_url: str
    taken_at: datetime | None = Field(None, description="local wall-clock time the photo was taken, no time zone")
    taken_at_source: Literal["exif", "mtime", ""] = Field("", description="exif, or the file's time when EXIF has none")
    format: str = Field("", description="JPEG, PNG, WEBP ... as Pillow names it")
    camera_make: str = ""
    camera_model: str = ""
    gps: str = Field("", description="'lat,lon' in decimal degrees, from EXIF")
    tags: list[str] = Field(default_factory=list, description="zero-shot tags from the label sets, best first")
    tag_scores: list[float] = Field(default_factory=list, description="the score that gave each tag")
    duplicates: list[str] = Field(default_factory=list, description="with collapse: ids of near-identical images folded in")
    folded: list[FoldedImage] = Field(default_factory=list, description="with collapse: those images, best first")
    name_match: bool = Field(False, description="found (also) by its file, folder or sidecar text")
    explanation: list[TermContribution] | None = Field(None, description="with explain: what each term contributed")


class SearchResponse(BaseModel):
    results: list[SearchHit]
    took_ms: float
    notes: list[str] = Field(default_factory=list, description="e.g. that a text was truncated")
    facets: dict[str, int] | None = Field(None, description="with facets: images per tag among the results, most first")
    cutoff: CutoffInfo | None = Field(None, description="with cutoff auto: where and why the results stop")


class LabelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., max_length=MAX_LABEL_CHARS)
    threshold: float | None = Field(None, ge=-1, le=1, description="this label's own cut, in the set's unit")
    templates: list[str] | None = Field(None, max_length=MAX_TEMPLATES)


class LabelSetRequest(BaseModel):
    """A label set to store with the collection; every image is then tagged from it (a job)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    labels: list[Annotated[str, Field(max_length=MAX_LABEL_CHARS)] | LabelSpec] = Field(
        ..., min_length=1, max_length=MAX_LABELS)
    templates: list[Annotated[str, Field(max_length=300)]] | None = Field(
        None, min_length=1, max_length=MAX_TEMPLATES, description="default ['a photo of a {}.']; each holds {} once")
    top: int = Field(3, ge=1, le=16, description="at most this many labels of the set per image")
    min_score: float | None = Field(None, ge=-1, le=1, description="cosine: default 0.25; softmax: a probability, default 0.1")
    mode: Literal["cosine", "softmax"] = "cosine"


class LabelSetInfo(BaseModel):
    name: str
    labels: int
    mode: Literal["cosine", "softmax"]
    top: int
    min_score: float
    templates: list[str]


class LabelSetDetail(LabelSetInfo):
    label_names: list[str]


class TagCountsResponse(BaseModel):
    images: int = Field(description="images in the collection")
    tagged: int = Field(description="images with at least one tag")
    tags: dict[str, int] = Field(description="images per tag, most first")


class HealthResponse(BaseModel):
    """With an API key set, a caller without it gets only ``status``: nothing about the collection."""

    status: Literal["ok"]
    model: str | None = None
    dim: int | None = None
    runs: str | None = Field(None, description=(
        "what runs the model for queries: backend and precision, such as 'torch fp32' or 'onnx int8' "
        "(IMGSEARCH_BACKEND and IMGSEARCH_PRECISION; auto says what it chose)"))
    count: int | None = None
    vector_cache: Literal["fresh", "catching-up", "off"] | None = Field(
        None, description="whether searches are answered from the in-memory copy (fresh) or by Milvus")
    collection: str | None = Field(None, description=(
        "the collection searched, by its own name: the configured name points to it (imgsearch migrate moves it)"))
    switch: str | None = Field(None, description=(
        "'serving', or 'switching to ...' while the model of the collection the name now points to loads, or why "
        "that failed (the API then keeps serving the collection it served)"))


class IndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(..., min_length=1, max_length=100)


class IndexJob(BaseModel):
    job_id: str
    kind: Literal["index", "tag"] = Field("index", description="index: files; tag: tagging from a label set")
    state: Literal["queued", "running", "done", "failed"]
    paths: list[str] = Field(default_factory=list)
    label_set: str | None = Field(None, description="tag jobs: the label set added, replaced or removed")
    processed: int = 0
    total: int = 0
    report: dict | None = None
    error: str | None = None


class DuplicateMember(BaseModel):
    id: str
    path: str
    similarity: float = Field(description="cosine to the group's first image")
    why: str = Field(description="what differs between the files ('' for the first)")


class DuplicateGroup(BaseModel):
    images: list[DuplicateMember]


class DuplicatesResponse(BaseModel):
    threshold: float
    images: int = Field(description="images looked at")
    groups: list[DuplicateGroup] = Field(description="largest first")


class ErrorResponse(BaseModel):
    detail: str
