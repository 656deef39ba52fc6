"""The search request and response: what a query may say (terms, filter, cutoff, collapse ...) and what a hit carries.
The API's OpenAPI schema is made from these; the CLI builds the same request."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from imgsearch.store.fields import SearchFilter

SORT_POOL = 1_000  # sort=newest orders this many best matches by date
MAX_LIMIT = 200
MAX_OFFSET = 10_000
MAX_TERMS = 16
LEXICAL_WEIGHT = 0.5  # words count as much as the picture by default (docs/text-in-images.md)


class QueryTerm(BaseModel):
    """One part of a composite query: a text, an indexed image or an uploaded one, with a weight."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(
        None,
        max_length=10_000,
        description=('words; a part in double quotes ("IMG_2041") is matched against file and folder names only'),
    )
    image_id: str | None = Field(None, min_length=1, max_length=64, description="an indexed image")
    upload_ref: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description=("an image uploaded with POST /search/image: its field position ('0', '1' ...) or its file name"),
    )
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
    image_id: str | None = Field(
        None, min_length=1, max_length=64, description="id of an indexed image: more like this"
    )
    negative_text: str | None = Field(None, max_length=10_000, description="what results should not look like")
    text_weight: float = Field(1.0, ge=0, le=10)
    image_weight: float = Field(1.0, ge=0, le=10)
    negative_weight: float = Field(0.5, ge=0, le=10)
    limit: int = Field(20, ge=1, le=MAX_LIMIT)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)
    min_score: float | None = Field(None, ge=-1, le=1)
    filter: SearchFilter | None = None
    sort: Literal["relevance", "newest"] = Field(
        "relevance", description=f"newest: the {SORT_POOL:,} best matches (above min_score), newest photo first"
    )
    facets: bool = Field(False, description="also count the tags of the results returned (response 'facets')")
    terms: list[QueryTerm] = Field(
        default_factory=list,
        max_length=MAX_TERMS,
        description=("a composite query; text, image_id and negative_text are shorthands for terms and add to these"),
    )
    explain: bool = Field(False, description="each result carries each term's cosine and share of the score")
    cutoff: Literal["auto", "none"] = Field(
        "none",
        description=(
            "auto: stop where this query's relevant results end, judged from its scores against the collection"
        ),
    )
    collapse: bool = Field(False, description="fold near-identical results into one, listed in 'duplicates'")
    collapse_threshold: float = Field(
        0.95,
        ge=0.5,
        le=1.0,
        description=("cosine, with the collection's mean vector taken off, at which two images count as one"),
    )
    diversity: float = Field(0.0, ge=0, le=1, description="0: by relevance; towards 1: fewer look-alikes (MMR)")
    lexical_weight: float = Field(
        LEXICAL_WEIGHT,
        ge=0,
        le=1,
        description=(
            "how much the query's words found in an image's words count against the picture, fused by rank: "
            "the text read in the picture (also inside longer words and codes, case-blind), its file and folder "
            "names, descriptions, sidecars and tags. 0 is off: the picture alone. Quoted text is always matched "
            "against the names."
        ),
    )

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
    duplicates: list[str] = Field(
        default_factory=list, description="with collapse: ids of near-identical images folded in"
    )
    folded: list[FoldedImage] = Field(default_factory=list, description="with collapse: those images, best first")
    name_match: bool = Field(
        False, description="found (also) by its words: file, folder, sidecar or description text, or text read in it"
    )
    text_match: bool = Field(False, description="found (also) by the query's words inside the text read in it")
    image_text: str = Field("", description="the text read in the picture, lines joined by newlines ('' if none)")
    explanation: list[TermContribution] | None = Field(None, description="with explain: what each term contributed")


class SearchResponse(BaseModel):
    results: list[SearchHit]
    took_ms: float
    notes: list[str] = Field(default_factory=list, description="e.g. that a text was truncated")
    facets: dict[str, int] | None = Field(None, description="with facets: images per tag among the results, most first")
    cutoff: CutoffInfo | None = Field(None, description="with cutoff auto: where and why the results stop")
