"""Which roots are polled: the file system type read from /proc/self/mountinfo."""

from __future__ import annotations

from imgsearch.watching.filesystems import filesystem_type, parse_mountinfo, polling_reason, untrusted_events

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /mnt/nas rw,relatime shared:20 - nfs4 nas:/photos rw,vers=4.2
41 22 0:36 / /mnt/win rw,relatime shared:21 - cifs //pc/photos rw
42 22 0:37 / /home/me/remote rw,nosuid shared:22 - fuse.sshfs me@host:/photos rw
43 40 8:2 / /mnt/nas/local rw shared:23 - xfs /dev/sdb1 rw
44 22 0:38 / /mnt/my\\040photos rw shared:24 - nfs server:/p rw
45 22 0:39 / /tmp rw shared:25 master:3 - tmpfs tmpfs rw
"""


def test_the_longest_mount_point_above_a_path_gives_its_type():
    mounts = parse_mountinfo(MOUNTINFO)
    assert filesystem_type("/home/me/Pictures", mounts) == "ext4"
    assert filesystem_type("/mnt/nas/2024/a.jpg", mounts) == "nfs4"
    assert filesystem_type("/mnt/nas/local/x", mounts) == "xfs"  # a local disk mounted inside the share
    assert filesystem_type("/mnt/nasty", mounts) == "ext4"  # a name that only starts like a mount point
    assert filesystem_type("/mnt/my photos/x", mounts) == "nfs"  # mountinfo's \\040 is a space
    assert filesystem_type("/tmp/x", mounts) == "tmpfs"  # optional fields before the separator are skipped


def test_network_and_fuse_file_systems_are_polled_and_local_ones_watched_for_events():
    mounts = parse_mountinfo(MOUNTINFO)
    for path in ("/mnt/nas/a", "/mnt/win/a", "/home/me/remote/a"):
        assert "file system" in polling_reason(path, mounts)
    for path in ("/home/me/Pictures", "/mnt/nas/local/a", "/tmp/a"):
        assert polling_reason(path, mounts) is None
    assert untrusted_events("fuseblk") and untrusted_events("smb3") and not untrusted_events("btrfs")
    assert not untrusted_events(None)


def test_without_mountinfo_every_root_is_watched_for_events():
    assert polling_reason("/anything", []) is None
