"""When a changed file may be indexed: once its size and modification time have stayed the same for a while.

Pure logic over a clock and a ``look`` function (a path's (size, mtime_ns), or None when it is gone), so that a
copy over a slow link, or a file written in pieces, is taken once and whole. A gone path waits as long, and while
any new file is still settling it waits longer (up to ``hold_gone_s``), so the two halves of a rename land in one
run and the moved file keeps its vector.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

Look = Callable[[str], "tuple[int, int] | None"]


@dataclass
class Settled:
    """What may be indexed now: files that settled, and paths that are gone."""

    files: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.files or self.gone)

    def __len__(self) -> int:
        return len(self.files) + len(self.gone)


class Settler:
    """Changed paths waiting to settle. Not thread-safe: one watcher thread owns it."""

    def __init__(self, settle_s: float, hold_gone_s: float = 60.0):
        self.settle_s = settle_s
        self.hold_gone_s = hold_gone_s
        self._files: dict[str, tuple[tuple[int, int], float]] = {}  # path -> (size, mtime_ns), since when
        self._gone: dict[str, float] = {}  # path -> since when it is gone
        self._later: dict[str, float] = {}  # path -> not before (a file to look at again later)

    def __len__(self) -> int:
        return len(self._files) + len(self._gone) + len(self._later)

    def paths(self) -> list[str]:
        return [*self._files, *self._gone, *self._later]

    def changed(self, path: str, facts: tuple[int, int] | None, now: float) -> None:
        """An event (or a look) says ``path`` changed; ``facts`` is its (size, mtime_ns) now, None if gone."""
        self._later.pop(path, None)
        if facts is None:
            self._files.pop(path, None)
            self._gone.setdefault(path, now)
            return
        self._gone.pop(path, None)
        known = self._files.get(path)
        if known is None or known[0] != facts:
            self._files[path] = (facts, now)

    def again_at(self, path: str, when: float) -> None:
        """Look at ``path`` again at ``when`` (a file that failed to decode while it may still have been growing)."""
        self._files.pop(path, None)
        self._later[path] = when

    def due(self, now: float, look: Look) -> Settled:
        """Take what has settled by ``now``, looking at each waiting file again."""
        for path, when in list(self._later.items()):
            if when <= now:
                del self._later[path]
                facts = look(path)
                if facts is None:
                    self._gone.setdefault(path, now)
                else:
                    self._files[path] = (facts, now - self.settle_s)  # unchanged since: due now if still so
        settled = Settled()
        unsettled = False
        for path, (facts, since) in list(self._files.items()):
            current = look(path)
            if current is None:
                del self._files[path]
                self._gone.setdefault(path, now)
            elif current != facts:
                self._files[path] = (current, now)
                unsettled = True
            elif now - since >= self.settle_s:
                del self._files[path]
                settled.files.append(path)
            else:
                unsettled = True
        for path, since in list(self._gone.items()):
            waited = now - since
            if waited >= self.hold_gone_s or (waited >= self.settle_s and not unsettled):
                del self._gone[path]
                settled.gone.append(path)
        settled.files.sort()
        settled.gone.sort()
        return settled

    def next_look(self, now: float) -> float | None:
        """Seconds until something may be due, or None when nothing waits."""
        if self._files or self._gone:  # each look stats every waiting file: a burst is looked at less often
            return max(min(0.25, self.settle_s / 4), len(self._files) / 20_000)
        if self._later:
            return max(0.0, min(self._later.values()) - now)
        return None
