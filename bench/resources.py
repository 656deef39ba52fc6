"""What a benchmark's processes take: disk under a folder, and resident memory of a process and its children."""

from __future__ import annotations

from pathlib import Path


def folder_mb(path: Path) -> float:
    """What the files under ``path`` take on disk, in MB."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def rss_mb(pid: int) -> int:
    """Resident memory of a process and its children (Milvus Lite's server), in MB, from /proc."""
    total = 0
    for task in [pid, *children(pid)]:
        try:
            fields = Path(f"/proc/{task}/status").read_text().split("VmRSS:")[1].split()
            total += int(fields[0])
        except (OSError, IndexError, ValueError):
            pass
    return total // 1024


def children(pid: int) -> list[int]:
    """Every descendant of ``pid``."""
    try:
        direct = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return direct + [grandchild for child in direct for grandchild in children(child)]
