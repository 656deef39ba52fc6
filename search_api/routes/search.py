from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from imgsearch.errors import ImageDecodeError, UnknownImageFormatError
from imgsearch.media.images import DecodedImage, decode_image
from imgsearch.search.requests import MAX_LIMIT, SearchRequest, SearchResponse
from imgsearch.search.service import SearchService
from imgsearch.search_api.deps import SearchServiceDep, SettingsDep
from imgsearch.search_api.schemas import ErrorResponse
from imgsearch.settings import Settings

router = APIRouter(tags=["search"])
MAX_UPLOADS = 8


@router.post(
    "/search", response_model=SearchResponse, responses={404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}
)
async def search(request: SearchRequest, service: SearchServiceDep) -> SearchResponse:
    """Search by text, by an indexed image ("more like this"), or both; `negative_text` pulls away."""
    return await service.search(request)


@router.post(
    "/search/image",
    response_model=SearchResponse,
    responses={413: {"model": ErrorResponse}, 415: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
async def search_by_image(
    http_request: Request,
    service: SearchServiceDep,
    settings: SettingsDep,
    file: Annotated[
        list[UploadFile],
        File(description=(f"an example image; up to {MAX_UPLOADS} (repeat the field), which terms name by upload_ref")),
    ],
    query: Annotated[
        str | None,
        Form(
            max_length=50_000,
            description=(
                'any fields of a /search body as JSON, e.g. {"negative_text": "people", "min_score": 0.2, '
                '"filter": {"path_prefix": "/photos/2024"}}'
            ),
        ),
    ] = None,
    limit: Annotated[int | None, Form(ge=1, le=MAX_LIMIT)] = None,
    text: Annotated[str | None, Form(max_length=10_000)] = None,
) -> SearchResponse:
    """Search by an uploaded example image, with everything `/search` takes: text, negative text, weights,
    minimum score, paging and filters (in `query`; `text` and `limit` may also be given as form fields)."""
    request = _request_from_form(query, text, limit)
    if len(file) > MAX_UPLOADS:
        raise HTTPException(422, f"at most {MAX_UPLOADS} uploaded images per search")
    uploads = [
        await _decoded(http_request, service, settings, position, upload) for position, upload in enumerate(file)
    ]
    return await service.search(request, uploads=uploads)


def _request_from_form(query: str | None, text: str | None, limit: int | None) -> SearchRequest:
    """The /search request the form's fields make, checked like /search's body before the upload is decoded, so
    blank text gets the same 422."""
    try:
        fields = json.loads(query) if query else {}
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
        raise HTTPException(422, f"query: not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(fields, dict):
        raise HTTPException(422, "query: must be a JSON object of /search fields")
    fields.update({name: value for name, value in (("text", text), ("limit", limit)) if value is not None})
    try:
        return SearchRequest.model_validate(fields, context={"has_upload": True})
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


async def _decoded(
    http_request: Request, service: SearchService, settings: Settings, position: int, upload: UploadFile
) -> tuple[str, DecodedImage]:
    """An upload, named and decoded; a few decodes at once, so memory stays bounded."""
    name = upload.filename or f"upload {position}"
    data = await upload.read()
    async with http_request.app.state.upload_slots:
        try:
            decoded = await run_in_threadpool(
                decode_image,
                data,
                name,
                service.encoder.image_size,
                settings.max_image_pixels,
                settings.max_decoded_bytes,
            )
        except UnknownImageFormatError as exc:
            raise HTTPException(
                status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"cannot use the upload {name}: {exc.reason}"
            ) from None
        except ImageDecodeError as exc:
            raise HTTPException(422, f"cannot use the upload {name} as an image: {exc.reason}") from None
    return name, decoded
