"""Which file system a folder lies on, from /proc/self/mountinfo, and whether its events can be trusted.

inotify reports only what this machine's kernel does: on NFS, CIFS/SMB and FUSE file systems a change made by
another machine (or by the FUSE daemon itself) raises no event, so those roots are polled instead."""

from __future__ import annotations

import os

MOUNTINFO = "/proc/self/mountinfo"
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre", "gpfs", "davfs", "ncpfs"}
)


def _unescape(field: str) -> str:
    """mountinfo writes a space, tab, newline and backslash in a path as octal escapes (\\040 ...)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """(mount point, file system type) of each line of /proc/self/mountinfo."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields or len(fields) < 5:
            continue
        after = fields.index("-")
        if after + 1 < len(fields):
            mounts.append((_unescape(fields[4]), fields[after + 1]))
    return mounts


def filesystem_type(path: str, mounts: list[tuple[str, str]]) -> str | None:
    """The type of the file system ``path`` (absolute, links resolved) lies on: the longest mount point above it;
    the last mounted wins where two share a mount point."""
    best: tuple[int, str] | None = None
    for point, fstype in mounts:
        below = path == point or path.startswith(point.rstrip("/") + "/")
        if below and (best is None or len(point) >= best[0]):
            best = (len(point), fstype)
    return best[1] if best else None


def untrusted_events(fstype: str | None) -> bool:
    """True for file systems where inotify misses changes: network file systems and FUSE."""
    if fstype is None:
        return False
    return fstype in NETWORK_FILESYSTEMS or fstype == "fuse" or fstype.startswith(("fuse.", "fuseblk"))


def read_mounts() -> list[tuple[str, str]]:
    """This process's mounts; empty where there is no /proc (macOS, Windows): every root is then trusted."""
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as handle:
            return parse_mountinfo(handle.read())
    except OSError:
        return []


def polling_reason(root: str, mounts: list[tuple[str, str]] | None = None) -> str | None:
    """Why ``root`` must be polled rather than watched for events, or None if events can be trusted there."""
    fstype = filesystem_type(os.path.realpath(root), read_mounts() if mounts is None else mounts)
    if untrusted_events(fstype):
        return f"on a {fstype} file system, where events miss changes made elsewhere"
    return None
