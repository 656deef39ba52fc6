"""Where a watcher's changes come from: one thread per root, watching its folders (watchfiles: inotify on Linux,
one watch per folder, never one per file) or polling them, and handing each debounced set of changes on.

A root that runs out of inotify watches (ENOSPC) falls back to polling, and says so once. A root that vanishes is
waited for; a root that comes back, or is mounted over (another device or inode), is watched afresh and reported,
so the watcher can reconcile it."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Literal

log = logging.getLogger(__name__)

DEBOUNCE_MS = 400  # changes that arrive together are handed on together, within this
STEP_MS = 100  # how often the watching thread wakes while changes arrive
IDLE_WAKE_MS = 5000  # how often an idle root checks that it is still the same folder
MISSING_WAIT_S = 5.0  # how often a missing root is looked for
INOTIFY_SETTING = "fs.inotify.max_user_watches"

Mode = Literal["events", "polling"]
Change = tuple[str, str]  # ("added" | "modified" | "deleted", path)
ChangeSink = Callable[[str, list[Change]], None]  # (root, changes)
EventSink = Callable[[str, str, str], None]  # (root, what happened: "remounted" | "polling", why)

_said_out_of_watches = threading.Event()


def out_of_watches(exc: BaseException) -> bool:
    """True for the errors inotify's limit gives: ENOSPC, as notify and the kernel word it."""
    text = str(exc).lower()
    return getattr(exc, "errno", None) == 28 or any(
        needle in text for needle in ("watch limit", "no space left on device", "os error 28")
    )


def out_of_watches_message(root: str) -> str:
    return (
        f"{root}: the inotify watch limit is reached, so this root is polled instead of watched for events; "
        f"raise it with `sysctl {INOTIFY_SETTING}=524288` (and in /etc/sysctl.d to keep it)"
    )


class RootSource:
    """A thread that hands ``root``'s changes to ``sink`` until ``stop`` is set."""

    def __init__(
        self,
        root: str,
        mode: Mode,
        poll_s: float,
        sink: ChangeSink,
        on_event: EventSink,
        stop: threading.Event,
        watch: Callable[..., object] | None = None,
    ):
        self.root = root
        self.mode: Mode = mode
        self.poll_s = poll_s
        self._sink = sink
        self._on_event = on_event
        self._stop = stop
        self._watch = watch  # watchfiles.watch, or a stand-in in tests
        self._thread = threading.Thread(target=self._run, name=f"watch:{os.path.basename(root)}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        identity = None
        while not self._stop.is_set():
            current = _identity(self.root)
            if current is None:
                self._stop.wait(MISSING_WAIT_S)
                continue
            if identity is not None and current != identity:
                self._on_event(self.root, "remounted", "the root came back or was mounted over")
            identity = current
            try:
                self._follow(identity)
            except Exception as exc:  # the watcher must outlive any error of the layer below
                if self.mode == "events" and out_of_watches(exc):
                    self.mode = "polling"
                    message = out_of_watches_message(self.root)
                    if not _said_out_of_watches.is_set():
                        _said_out_of_watches.set()
                        log.warning("imgsearch watch: %s", message)
                    self._on_event(self.root, "polling", message)
                    continue
                log.warning("imgsearch watch: %s: %s; watching again in %.0f s", self.root, exc, MISSING_WAIT_S)
                self._stop.wait(MISSING_WAIT_S)

    def _follow(self, identity: tuple[int, int]) -> None:
        """Hand on changes until the root is no longer the folder it was (gone, remounted) or ``stop`` is set."""
        watch = self._watch
        if watch is None:
            from watchfiles import watch
        polling = self.mode == "polling"
        for changes in watch(
            self.root,
            watch_filter=None,
            debounce=DEBOUNCE_MS,
            step=STEP_MS,
            stop_event=self._stop,
            rust_timeout=IDLE_WAKE_MS,
            yield_on_timeout=True,
            raise_interrupt=False,
            force_polling=polling,
            poll_delay_ms=int(self.poll_s * 1000),
            ignore_permission_denied=True,
        ):
            if changes:
                self._sink(self.root, [(change.name, path) for change, path in changes])
            if _identity(self.root) != identity:
                return


def _identity(root: str) -> tuple[int, int] | None:
    """(device, inode) of the root folder, or None when it is missing."""
    try:
        info = os.stat(root)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if os.path.isdir(root) else None
