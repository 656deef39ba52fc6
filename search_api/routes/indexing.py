from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, status

from indexer.scanner import under_roots
from search_api.deps import JobsDep, SettingsDep
from search_api.schemas import ErrorResponse, IndexJob, IndexRequest

router = APIRouter(prefix="/index", tags=["indexing"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=IndexJob,
             responses={403: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})
async def start_index(request: IndexRequest, settings: SettingsDep, jobs: JobsDep) -> IndexJob:
    """Index folders on the server; only below IMGSEARCH_ALLOWED_ROOTS."""
    roots = [str(Path(root).expanduser().resolve()) for root in settings.allowed_roots]
    if not roots:
        raise HTTPException(403, "indexing through the API is off: set IMGSEARCH_ALLOWED_ROOTS to the folders it may read")
    resolved = []
    for raw in request.paths:
        if "\x00" in raw or not raw.strip():
            raise HTTPException(422, f"not a usable path: {raw!r}")
        path = str(Path(raw).expanduser().resolve())  # resolves '..' and symlinks before the check
        if not under_roots(path, roots):
            raise HTTPException(403, f"{raw} is outside the allowed roots ({', '.join(roots)})")
        if not Path(path).exists():
            raise HTTPException(404, f"{raw}: no such file or directory")
        resolved.append(path)
    return jobs.submit(resolved)


@router.get("/{job_id}", response_model=IndexJob, responses={404: {"model": ErrorResponse}})
async def job_status(job_id: str, jobs: JobsDep) -> IndexJob:
    job = jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no indexing job '{job_id}'")
    return job
