"""Originals and thumbnails, by id. Every file is re-checked when served (see search_api/services/files.py)."""

from __future__ import annotations

import mimetypes
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from imgsearch.errors import ImageDecodeError
from imgsearch.media.safe_files import UnsafeFileError, iter_chunks
from imgsearch.search_api.deps import FilesDep, StoreDep, ThumbnailsDep
from imgsearch.search_api.schemas import ErrorResponse

router = APIRouter(prefix="/images", tags=["images"])

ImageId = Annotated[str, "id of an indexed image"]


async def _row(store, image_id: str) -> dict:
    rows = await run_in_threadpool(store.get, [image_id])  # ids that could never be ours are simply absent
    if image_id not in rows:
        raise HTTPException(404, f"no indexed image with id '{image_id[:64]}'")
    return rows[image_id]


def _not_served(image_id: str, exc: OSError | UnsafeFileError) -> HTTPException:
    """404 for a file that is gone or may not be served; the reason, never the contents of another file."""
    if isinstance(exc, FileNotFoundError):
        return HTTPException(404, f"image '{image_id}' is indexed but its file is gone")
    if isinstance(exc, UnsafeFileError):
        return HTTPException(404, f"image '{image_id}' is not served: {exc.reason}")
    return HTTPException(404, f"image '{image_id}' cannot be read: {exc.strerror or exc}")


@router.get(
    "/{image_id}", responses={200: {"content": {"image/*": {}}}, 404: {"model": ErrorResponse}}, response_class=Response
)
async def original(image_id: ImageId, store: StoreDep, files: FilesDep) -> StreamingResponse:
    """The original file, by id (never by a client-supplied path)."""
    row = await _row(store, image_id)
    try:
        handle, size = await run_in_threadpool(files.open, row["path"])
    except (OSError, UnsafeFileError) as exc:
        raise _not_served(image_id, exc) from None
    media_type = mimetypes.guess_type(row["path"])[0] or "application/octet-stream"
    # Streamed from the descriptor that was checked, so a link re-pointed meanwhile changes nothing.
    return StreamingResponse(
        iter_chunks(handle, size),
        media_type=media_type,
        headers={"Content-Length": str(size), "X-Content-Type-Options": "nosniff"},
    )


@router.get(
    "/{image_id}/thumbnail",
    responses={200: {"content": {"image/jpeg": {}}}, 404: {"model": ErrorResponse}},
    response_class=Response,
)
async def thumbnail(
    image_id: ImageId,
    store: StoreDep,
    thumbnails: ThumbnailsDep,
    files: FilesDep,
    size: Annotated[int, Query(ge=16, le=1024)] = 256,
) -> Response:
    """A JPEG whose longest side is `size` rounded up to 64, 128, 256, 512 or 1024; made once and cached."""
    row = await _row(store, image_id)
    try:
        data = await run_in_threadpool(
            thumbnails.get, image_id, row["content_hash"], size, lambda: files.read(row["path"])
        )
    except (OSError, UnsafeFileError) as exc:
        raise _not_served(image_id, exc) from None
    except ImageDecodeError as exc:
        raise HTTPException(422, f"cannot make a thumbnail of '{image_id}': {exc.reason}") from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})
