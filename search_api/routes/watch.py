"""What the API's watcher does: GET /watch."""

from __future__ import annotations

from fastapi import APIRouter

from imgsearch.search_api.deps import SettingsDep, WatchDep
from imgsearch.search_api.schemas import WatchStatus

router = APIRouter(prefix="/watch", tags=["indexing"])


@router.get("", response_model=WatchStatus)
async def watch_status(watch: WatchDep, settings: SettingsDep) -> WatchStatus:
    """The watched roots (`imgsearch serve --watch`, `imgsearch up`): each one's mode (events or polling), its last
    event and reconcile; the files waiting to settle, the run going on, and the last run's report. No roots when
    the API watches nothing."""
    if watch is None:
        return WatchStatus(roots=[], rescan_minutes=settings.rescan_minutes)
    return WatchStatus(**watch.status())
