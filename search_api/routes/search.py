from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, UploadFile, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from imgsearch_core.errors import ImageDecodeError
from imgsearch_core.images import decode_image
from search_api.deps import SearchServiceDep, SettingsDep
from search_api.schemas import MAX_LIMIT, ErrorResponse, SearchRequest, SearchResponse

router = APIRouter(tags=["search"])


@router.post("/search", response_model=SearchResponse,
             responses={404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})
async def search(request: SearchRequest, service: SearchServiceDep) -> SearchResponse:
    """Search by text, by an indexed image ("more like this"), or both; `negative_text` pulls away."""
    return await service.search(request)


@router.post("/search/image", response_model=SearchResponse,
             responses={413: {"model": ErrorResponse}, 415: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})
async def search_by_image(
    service: SearchServiceDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="an example image")],
    limit: Annotated[int, Form(ge=1, le=MAX_LIMIT)] = 20,
    text: Annotated[str | None, Form(max_length=10_000)] = None,
) -> SearchResponse:
    """Search by an uploaded example image, optionally combined with text."""
    data = await file.read()
    try:
        decoded = await run_in_threadpool(
            decode_image, data, file.filename or "upload", service.encoder.image_size, settings.max_image_pixels
        )
    except ImageDecodeError as exc:
        code = status.HTTP_415_UNSUPPORTED_MEDIA_TYPE if "not a recognised" in exc.reason else 422
        raise HTTPException(code, f"cannot use the upload as an image: {exc.reason}") from None
    try:  # the text part is checked like /search's, so blank text gets the same 422
        request = SearchRequest.model_validate({"text": text, "limit": limit}, context={"has_upload": True})
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    return await service.search(request, uploaded=decoded)
