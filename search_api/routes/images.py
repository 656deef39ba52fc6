from __future__ import annotations

import mimetypes
import os
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from imgsearch_core.errors import ImageDecodeError
from search_api.deps import StoreDep, ThumbnailsDep
from search_api.schemas import ErrorResponse

router = APIRouter(prefix="/images", tags=["images"])

ImageId = Annotated[str, "id of an indexed image"]


async def _row(store, image_id: str) -> dict:
    rows = await run_in_threadpool(store.get, [image_id])  # ids that could never be ours are simply absent
    if image_id not in rows:
        raise HTTPException(404, f"no indexed image with id '{image_id[:64]}'")
    return rows[image_id]


@router.get("/{image_id}", responses={200: {"content": {"image/*": {}}}, 404: {"model": ErrorResponse}},
            response_class=Response)
async def original(image_id: ImageId, store: StoreDep):
    """The original file, by id (never by a client-supplied path)."""
    row = await _row(store, image_id)
    if not os.path.isfile(row["path"]):
        raise HTTPException(404, f"image '{image_id}' is indexed but its file is gone: {row['path']}")
    media_type = mimetypes.guess_type(row["path"])[0] or "application/octet-stream"
    return FileResponse(row["path"], media_type=media_type)


@router.get("/{image_id}/thumbnail", responses={200: {"content": {"image/jpeg": {}}}, 404: {"model": ErrorResponse}},
            response_class=Response)
async def thumbnail(image_id: ImageId, store: StoreDep, thumbnails: ThumbnailsDep,
                    size: Annotated[int, Query(ge=16, le=1024)] = 256):
    """A JPEG whose longest side is `size`, made on first request and cached."""
    row = await _row(store, image_id)
    try:
        data = await run_in_threadpool(thumbnails.get, image_id, row["content_hash"], row["path"], size)
    except FileNotFoundError:
        raise HTTPException(404, f"image '{image_id}' is indexed but its file is gone: {row['path']}") from None
    except (OSError, ImageDecodeError) as exc:
        raise HTTPException(422, f"cannot make a thumbnail of '{image_id}': {exc}") from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})
