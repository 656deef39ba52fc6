"""Request and response bodies of the search API (they make its OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from imgsearch.tagging.labels import MAX_LABEL_CHARS, MAX_LABELS, MAX_TEMPLATES


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
        ..., min_length=1, max_length=MAX_LABELS
    )
    templates: list[Annotated[str, Field(max_length=300)]] | None = Field(
        None, min_length=1, max_length=MAX_TEMPLATES, description="default ['a photo of a {}.']; each holds {} once"
    )
    top: int = Field(3, ge=1, le=16, description="at most this many labels of the set per image")
    min_score: float | None = Field(
        None, ge=-1, le=1, description="cosine: default 0.25; softmax: a probability, default 0.1"
    )
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
    runs: str | None = Field(
        None,
        description=(
            "what runs the image tower (indexing, image queries): backend and precision, such as 'torch fp32' or "
            "'onnx int8' (IMGSEARCH_BACKEND and IMGSEARCH_PRECISION; auto says what it chose)"
        ),
    )
    text_runs: str | None = Field(
        None,
        description=(
            "what runs the text tower for queries: with auto, the setting measured fastest on one query that agrees "
            "with fp32 (such as 'onnx int8'); until it is measured, as 'runs'"
        ),
    )
    count: int | None = None
    index_id: str | None = Field(
        None, description="which index this server searches (a hash of the Milvus URI and the collection name)"
    )
    vector_cache: Literal["fresh", "catching-up", "off"] | None = Field(
        None, description="whether searches are answered from the in-memory copy (fresh) or by Milvus"
    )
    collection: str | None = Field(
        None,
        description=(
            "the collection searched, by its own name: the configured name points to it (imgsearch migrate moves it)"
        ),
    )
    switch: str | None = Field(
        None,
        description=(
            "'serving', or 'switching to ...' while the model of the collection the name now points to loads, or why "
            "that failed (the API then keeps serving the collection it served)"
        ),
    )
    advice: str | None = Field(
        None,
        description="on the embedded default past about 500,000 images: why and how to move to a Milvus server",
    )


class IndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(..., min_length=1, max_length=100)


class IndexJob(BaseModel):
    job_id: str
    kind: Literal["index", "tag", "watch"] = Field(
        "index",
        description="index: files; tag: tagging from a label set; watch: a watcher's run (changed files, or the "
        "catch-up and reconcile of a watched root)",
    )
    state: Literal["queued", "running", "done", "failed"]
    paths: list[str] = Field(default_factory=list)
    label_set: str | None = Field(None, description="tag jobs: the label set added, replaced or removed")
    processed: int = 0
    total: int = 0
    report: dict | None = None
    error: str | None = None


class WatchedRoot(BaseModel):
    path: str
    mode: Literal["events", "polling"] = Field(description="events: inotify; polling: looked through periodically")
    reason: str | None = Field(None, description="why the root is polled, if it is")
    last_event: str | None = Field(None, description="when a change was last seen (UTC, ISO 8601)")
    last_reconcile: str | None = Field(None, description="when the root was last indexed whole (UTC)")
    problem: str | None = Field(None, description="why rows under it are kept (missing or emptied root)")


class WatchStatus(BaseModel):
    roots: list[WatchedRoot] = Field(description="the watched roots; empty when the API watches nothing")
    pending: int = Field(0, description="changed files waiting to settle (or to be looked at again)")
    indexing: Literal["catch-up", "reconcile", "changes"] | None = Field(None, description="the run going on")
    indexing_files: int = Field(0, description="files in the changes run going on")
    runs: int = Field(0, description="runs finished since the API started")
    rescan_minutes: int = Field(description="every root is reconciled this often (IMGSEARCH_RESCAN_MINUTES)")
    last_report: dict | None = Field(None, description="the last run's report, with its kind")
    failed: list[dict[str, str]] = Field(default_factory=list, description="the last files that could not be indexed")


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
