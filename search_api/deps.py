"""Dependencies handed to routes: the services made once at start-up, and the API-key check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from imgsearch.search.service import SearchService
from imgsearch.search_api.services.files import ServedFiles
from imgsearch.search_api.services.jobs import JobManager
from imgsearch.search_api.services.thumbnails import ThumbnailCache
from imgsearch.search_api.services.watch import WatchService
from imgsearch.settings import Settings
from imgsearch.store import MilvusStore


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_search_service(request: Request) -> SearchService:
    return request.app.state.search_service


def get_store(request: Request) -> MilvusStore:
    return request.app.state.store


def get_thumbnails(request: Request) -> ThumbnailCache:
    return request.app.state.thumbnails


def get_files(request: Request) -> ServedFiles:
    return request.app.state.files


def get_jobs(request: Request) -> JobManager:
    return request.app.state.jobs


def get_watch(request: Request) -> WatchService | None:
    return getattr(request.app.state, "watch", None)


SettingsDep = Annotated[Settings, Depends(get_settings)]
SearchServiceDep = Annotated[SearchService, Depends(get_search_service)]
StoreDep = Annotated[MilvusStore, Depends(get_store)]
ThumbnailsDep = Annotated[ThumbnailCache, Depends(get_thumbnails)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
FilesDep = Annotated[ServedFiles, Depends(get_files)]
WatchDep = Annotated[WatchService | None, Depends(get_watch)]


def has_api_key(request: Request, settings: Settings) -> bool:
    """True when no key is configured, or the request carries it (Bearer token or X-API-Key header)."""
    expected = settings.api_key
    if not expected:
        return True
    supplied = request.headers.get("x-api-key", "")
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        supplied = authorization[7:].strip()
    return hmac.compare_digest(supplied.encode(), expected.encode())


def require_api_key(request: Request, settings: SettingsDep) -> None:
    """With IMGSEARCH_API_KEY set, demand it."""
    if not has_api_key(request, settings):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"}
        )
