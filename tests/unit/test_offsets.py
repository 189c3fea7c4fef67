from __future__ import annotations

import random

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


def test_batches_resolved_in_any_order_match_a_plain_model() -> None:
    """Whole batches finish in any order, over gaps and past the list's trimming: the
    position is always the lowest unresolved offset (a set-based model's answer)."""
    rng = random.Random(7)
    for _ in range(20):
        t = OffsetTracker()
        offsets = sorted(rng.sample(range(30_000), 12_000))  # gaps, as in a compacted topic
        batches: list[list[int]] = []
        i = 0
        while i < len(offsets):
            n = rng.randint(1, 900)
            batches.append(offsets[i : i + n])
            i += n
        for batch in batches:
            t.track_many(("t", 0), batch)
        unresolved = set(offsets)
        order = list(range(len(batches)))
        # Mostly in order, as deliveries finish, with some overtaking.
        for a in range(len(order) - 1):
            if rng.random() < 0.3:
                order[a], order[a + 1] = order[a + 1], order[a]
        for k in order:
            t.resolve_many(("t", 0), batches[k])
            unresolved.difference_update(batches[k])
            expected = min(unresolved) if unresolved else offsets[-1] + 1
            assert t.positions([("t", 0)]) == {("t", 0): expected}
            assert t.unresolved() == len(unresolved)


def test_advance_moves_only_a_resolved_partitions_commit_to_the_consumers_position() -> None:
    # A transaction's commit marker takes offset 5 after records 0-4 and is never polled:
    # the consumer's position is 6.
    t = OffsetTracker()
    t.track_many(("t", 0), [0, 1, 2, 3, 4])
    t.resolve_many(("t", 0), [0, 1])
    t.advance({("t", 0): 6, ("t", 1): 40})
    # Records 2-4 still wait: the commit stays at the first of them.
    assert t.positions([("t", 0)]) == {("t", 0): 2}
    t.resolve_many(("t", 0), [2, 3, 4])
    assert t.positions([("t", 0)]) == {("t", 0): 6}  # past the marker
    # A partition with nothing but markers (or nothing yet) commits where it stands.
    assert t.positions([("t", 1)]) == {("t", 1): 40}
    assert t.committable() == {("t", 0): 6, ("t", 1): 40}
    t.advance({("t", 0): 3})  # an older position never moves the end back
    assert t.consumed_to(("t", 0)) == 6 and t.unresolved() == 0
