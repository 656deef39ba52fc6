"""Indexing jobs on the server's own folders, only below IMGSEARCH_ALLOWED_ROOTS."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from starlette.concurrency import run_in_threadpool

from imgsearch.search_api.deps import JobsDep
from imgsearch.search_api.schemas import ErrorResponse, IndexJob, IndexRequest
from imgsearch.search_api.services.jobs import allowed_paths

router = APIRouter(prefix="/index", tags=["indexing"])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=IndexJob,
    responses={
        403: {"model": ErrorResponse},
        404: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        429: {"model": ErrorResponse},
    },
)
async def start_index(request: IndexRequest, jobs: JobsDep) -> IndexJob:
    """Index absolute paths on the server. 403 outside the allowed roots (whether or not the path exists),
    404 for a missing one inside them, 429 when the job queue is full."""
    if not jobs.allowed_roots:
        raise HTTPException(
            403, "indexing through the API is off: set IMGSEARCH_ALLOWED_ROOTS to the folders it may read"
        )
    paths = await run_in_threadpool(allowed_paths, request.paths, jobs.allowed_roots)  # touches the disk
    return jobs.submit(paths)


@router.get("", response_model=list[IndexJob])
async def unfinished_jobs(jobs: JobsDep) -> list[IndexJob]:
    """The jobs queued or running (indexing and tagging), in the order they run: what the UI shows as progress."""
    return jobs.unfinished()


@router.get("/{job_id}", response_model=IndexJob, responses={404: {"model": ErrorResponse}})
async def job_status(job_id: str, jobs: JobsDep) -> IndexJob:
    job = jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no indexing job '{job_id[:64]}'")
    return job
