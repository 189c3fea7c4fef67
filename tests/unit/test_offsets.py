from __future__ import annotations

from sink.offsets import OffsetTracker


def test_commit_position_is_the_lowest_unresolved_offset() -> None:
    t = OffsetTracker()
    for o in range(5):
        t.track("t", 0, o)
    assert t.committable() == {("t", 0): 0}
    t.resolve("t", 0, 2)
    t.resolve("t", 0, 3)
    assert t.committable() == {("t", 0): 0}
    t.resolve("t", 0, 0)
    assert t.committable() == {("t", 0): 1}
    t.resolve("t", 0, 1)
    assert t.committable() == {("t", 0): 4}
    t.resolve("t", 0, 4)
    assert t.committable() == {("t", 0): 5}
    assert t.unresolved() == 0


def test_gaps_in_offsets_and_only_moves_are_handed_out() -> None:
    t = OffsetTracker()
    for o in (10, 12, 15):  # compacted topic: offsets are not contiguous
        t.track("t", 1, o)
    t.resolve("t", 1, 10)
    assert t.committable() == {("t", 1): 12}
    t.mark_committed({("t", 1): 12})
    assert t.committable() == {}
    t.resolve("t", 1, 15)
    t.resolve("t", 1, 12)
    assert t.committable() == {("t", 1): 16}


def test_partitions_are_independent_and_forgettable() -> None:
    t = OffsetTracker()
    t.track("a", 0, 0)
    t.track("a", 1, 0)
    t.resolve("a", 1, 0)
    assert t.committable() == {("a", 0): 0, ("a", 1): 1}
    assert t.unresolved(("a", 0)) == 1 and t.unresolved(("a", 1)) == 0
    t.forget([("a", 0)])
    t.resolve("a", 0, 0)  # a late answer for a revoked partition changes nothing
    assert t.partitions() == [("a", 1)]
