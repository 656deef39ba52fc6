"""When a changed file may be indexed: pure logic over a fake clock and fake file facts."""

from __future__ import annotations

from imgsearch.watching.settle import Settler


class Disk:
    def __init__(self):
        self.facts: dict[str, tuple[int, int]] = {}

    def look(self, path):
        return self.facts.get(path)


def test_a_file_is_taken_only_once_its_size_and_time_stayed_the_same_for_the_settle_time():
    disk, settler = Disk(), Settler(settle_s=2.0)
    disk.facts["/r/a.jpg"] = (100, 1)
    settler.changed("/r/a.jpg", disk.look("/r/a.jpg"), now=0.0)
    assert not settler.due(1.0, disk.look)
    disk.facts["/r/a.jpg"] = (200, 2)  # still growing
    assert not settler.due(1.5, disk.look)
    assert not settler.due(3.0, disk.look)  # 1.5 s since it last grew
    assert settler.due(3.6, disk.look).files == ["/r/a.jpg"]
    assert len(settler) == 0 and not settler.due(10.0, disk.look)


def test_a_gone_path_waits_while_new_files_settle_so_a_rename_lands_in_one_run():
    disk, settler = Disk(), Settler(settle_s=1.0, hold_gone_s=30.0)
    settler.changed("/r/old.jpg", None, now=0.0)
    disk.facts["/r/new.jpg"] = (100, 1)
    settler.changed("/r/new.jpg", disk.look("/r/new.jpg"), now=0.0)
    disk.facts["/r/new.jpg"] = (150, 2)
    first = settler.due(1.2, disk.look)  # the new file changed: neither half goes yet
    assert not first
    both = settler.due(2.5, disk.look)
    assert both.files == ["/r/new.jpg"] and both.gone == ["/r/old.jpg"]


def test_a_gone_path_is_not_held_forever_by_files_that_keep_changing():
    disk, settler = Disk(), Settler(settle_s=1.0, hold_gone_s=5.0)
    settler.changed("/r/old.jpg", None, now=0.0)
    released = {}
    for second in range(1, 8):
        disk.facts["/r/growing.jpg"] = (second, second)
        settler.changed("/r/growing.jpg", disk.look("/r/growing.jpg"), now=float(second))
        released.update({path: second for path in settler.due(float(second), disk.look).gone})
    assert released == {"/r/old.jpg": 5}


def test_a_file_that_comes_back_is_not_gone_and_one_that_vanishes_while_settling_is():
    disk, settler = Disk(), Settler(settle_s=1.0)
    settler.changed("/r/a.jpg", None, now=0.0)
    disk.facts["/r/a.jpg"] = (1, 1)
    settler.changed("/r/a.jpg", disk.look("/r/a.jpg"), now=0.5)
    disk.facts["/r/b.jpg"] = (1, 1)
    settler.changed("/r/b.jpg", disk.look("/r/b.jpg"), now=0.5)
    del disk.facts["/r/b.jpg"]
    settled = settler.due(2.0, disk.look)
    assert settled.files == ["/r/a.jpg"] and settled.gone == []
    assert settler.due(3.1, disk.look).gone == ["/r/b.jpg"]


def test_a_file_to_look_at_later_waits_until_then_and_is_taken_if_unchanged():
    disk, settler = Disk(), Settler(settle_s=1.0)
    disk.facts["/r/a.jpg"] = (10, 1)
    settler.again_at("/r/a.jpg", 30.0)
    assert settler.next_look(0.0) == 30.0
    assert not settler.due(29.0, disk.look)
    assert settler.due(30.0, disk.look).files == ["/r/a.jpg"]


def test_an_event_on_a_file_waiting_for_later_makes_it_settle_as_usual():
    disk, settler = Disk(), Settler(settle_s=1.0)
    disk.facts["/r/a.jpg"] = (10, 1)
    settler.again_at("/r/a.jpg", 30.0)
    disk.facts["/r/a.jpg"] = (20, 2)
    settler.changed("/r/a.jpg", disk.look("/r/a.jpg"), now=1.0)
    assert settler.due(2.1, disk.look).files == ["/r/a.jpg"]
