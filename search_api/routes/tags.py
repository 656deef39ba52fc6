"""Zero-shot tags: counts per tag, and the label sets that give them (adding one starts a tagging job)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status
from starlette.concurrency import run_in_threadpool

from imgsearch.search_api.deps import JobsDep, StoreDep
from imgsearch.search_api.schemas import (
    ErrorResponse,
    IndexJob,
    LabelSetDetail,
    LabelSetInfo,
    LabelSetRequest,
    TagCountsResponse,
)
from imgsearch.tagging.labels import LabelSet, make_label_set
from imgsearch.tagging.tagger import stored_label_sets

router = APIRouter(tags=["tags"])


@router.get("/tags", response_model=TagCountsResponse)
async def tag_counts(request: Request) -> TagCountsResponse:
    """Images per tag over the whole collection, most first."""
    return await run_in_threadpool(request.app.state.tag_counter.counts)


@router.get("/labels", response_model=list[LabelSetInfo])
async def label_sets(store: StoreDep) -> list[LabelSetInfo]:
    """The label sets stored with the collection: every image is tagged from all of them."""
    return [_info(label_set) for label_set in await run_in_threadpool(stored_label_sets, store)]


@router.get("/labels/{name}", response_model=LabelSetDetail, responses={404: {"model": ErrorResponse}})
async def label_set(name: str, store: StoreDep) -> LabelSetDetail:
    found = await _find(store, name)
    return LabelSetDetail(**_info(found).model_dump(), label_names=found.names)


@router.post(
    "/labels",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=IndexJob,
    responses={422: {"model": ErrorResponse}, 429: {"model": ErrorResponse}},
)
async def put_label_set(body: LabelSetRequest, jobs: JobsDep) -> IndexJob:
    """Store a label set (replacing one of the same name) and start a job that tags every image again from the
    stored vectors; follow it at `GET /index/{job_id}`. 422 for duplicated labels or a template without `{}`."""
    labels = [label if isinstance(label, str) else label.model_dump(exclude_none=True) for label in body.labels]
    checked = make_label_set(
        body.name, labels, "", templates=body.templates, top=body.top, min_score=body.min_score, mode=body.mode
    )
    return jobs.submit_tagging(checked)


@router.delete(
    "/labels/{name}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=IndexJob,
    responses={404: {"model": ErrorResponse}, 429: {"model": ErrorResponse}},
)
async def delete_label_set(name: str, store: StoreDep, jobs: JobsDep) -> IndexJob:
    """Forget a label set and start a job that takes its tags off every image."""
    await _find(store, name)
    return jobs.submit_tagging(None, remove=name)


async def _find(store, name: str) -> LabelSet:
    for label_set in await run_in_threadpool(stored_label_sets, store):
        if label_set.name == name:
            return label_set
    raise HTTPException(404, f"no label set named '{name[:64]}'")


def _info(label_set: LabelSet) -> LabelSetInfo:
    return LabelSetInfo(
        name=label_set.name,
        labels=len(label_set.labels),
        mode=label_set.mode,
        top=label_set.top,
        min_score=label_set.cut,
        templates=list(label_set.templates),
    )
