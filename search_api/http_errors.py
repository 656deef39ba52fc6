"""The API's edge: which HTTP status each failure becomes, and the message a client reads.

Routes raise domain errors (``ImageNotFoundError``, ``ModelMismatchError`` ...); this module alone turns them
into responses, by class and never by message text.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgsearch.errors import (
    CollectionNotFoundError,
    ModelMismatchError,
    SchemaOutdatedError,
    SchemaTooNewError,
    StoreUnavailableError,
    validation_message,
)
from imgsearch.search.batching import QueryQueueFullError
from imgsearch.search.service import ImageNotFoundError, UploadNotFoundError
from imgsearch.search_api.services.jobs import (
    JobQueueFullError,
    PathNotAllowedError,
    PathNotFoundError,
    UnusablePathError,
)

# Domain errors and the HTTP status each becomes: the one place that decides.
ERROR_STATUS: dict[type[Exception], int] = {
    ImageNotFoundError: 404,
    UploadNotFoundError: 422,
    PathNotAllowedError: 403,
    PathNotFoundError: 404,
    UnusablePathError: 422,
    JobQueueFullError: 429,
    ModelMismatchError: 409,
    SchemaOutdatedError: 409,  # the collection was swapped for an older one under a running API
    SchemaTooNewError: 409,
    ValueError: 422,  # e.g. query parts that cancel out
    CollectionNotFoundError: 503,
    StoreUnavailableError: 503,
    QueryQueueFullError: 503,  # Milvus down: try again later; the API reconnects by itself
}


def status_for(exc: Exception) -> int:
    """The status of the most specific class in ERROR_STATUS that ``exc`` is an instance of."""
    for cls in type(exc).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    raise LookupError(f"no status for {type(exc).__name__}")


async def domain_error(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=status_for(exc))


async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one readable line ("k: Input should be less than or equal to 1000") and pydantic's list."""
    errors = jsonable_encoder(
        exc.errors(), custom_encoder={Exception: str, bytes: lambda b: b.decode("utf-8", "replace")}
    )
    return JSONResponse({"detail": validation_message(errors, where="body"), "errors": errors}, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    for error_class in ERROR_STATUS:
        app.add_exception_handler(error_class, domain_error)


class BodySizeLimit:
    """Refuse request bodies over ``limit`` bytes with 413, counted while streaming (no Content-Length needed)."""

    def __init__(self, app: ASGIApp, limit: int, slack: int = 0):
        self.app = app
        self.limit = limit + slack  # multipart framing adds a little to the file itself
        self.configured = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(send)
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, counting_receive, send)

    def _message(self) -> str:
        return f"upload is over the limit of {self.configured:,} bytes (IMGSEARCH_MAX_UPLOAD_BYTES)"

    async def _too_large(self, send: Send) -> None:
        await JSONResponse({"detail": self._message()}, status_code=413)({"type": "http"}, None, send)
