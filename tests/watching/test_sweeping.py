"""Whether a gone path may sweep its rows: the rules of `imgsearch index`, on real folders."""

from __future__ import annotations

from imgsearch.watching.sweeping import may_sweep, root_problem


def test_an_ordinary_deletion_sweeps(tmp_path):
    (tmp_path / "root" / "album").mkdir(parents=True)
    (tmp_path / "root" / "album" / "kept.jpg").write_bytes(b"x")
    root = str(tmp_path / "root")
    assert may_sweep(f"{root}/album/gone.jpg", root)
    assert may_sweep(f"{root}/deleted-album", root)  # a folder deleted as a whole
    assert may_sweep(f"{root}/deleted-album/deeper/gone.jpg", root)


def test_a_missing_or_empty_root_or_an_emptied_folder_sweeps_nothing(tmp_path):
    root = str(tmp_path / "root")
    assert not may_sweep(f"{root}/gone.jpg", root) and "missing" in root_problem(root)
    (tmp_path / "root").mkdir()
    assert not may_sweep(f"{root}/gone.jpg", root) and "empty" in root_problem(root)
    (tmp_path / "root" / "share").mkdir()  # a mount point whose share went away
    assert not may_sweep(f"{root}/share/gone.jpg", root)
    assert root_problem(root) is None


def test_nothing_outside_the_root_or_the_root_itself_is_swept(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "a.jpg").write_bytes(b"x")
    root = str(tmp_path / "root")
    assert not may_sweep(root, root)
    assert not may_sweep(str(tmp_path / "elsewhere.jpg"), root)
    assert not may_sweep(f"{root}-other/a.jpg", root)
