"""The one place that decides which offset may be committed.

Each consumed offset is tracked until it is *resolved*: accepted by the API, written to
the dead-letter topic, or skipped by policy. The commit position of a partition is its
lowest unresolved offset, or one past the highest offset seen when all are resolved, so
a commit never passes a record that could still be lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

TP = tuple[str, int]

# The resolved head of a partition's list is cut off once it is this long (and at least
# half the list), so that cutting stays rare and the list stays bounded.
TRIM_AT = 4_096


@dataclass
class _Partition:
    # Tracked offsets, ascending; those before ``head`` are resolved. A list and an index
    # rather than a deque: a batch's offsets usually are the next ``n`` at the head, and
    # the index then moves past all of them at once (a deque pops them one by one).
    pending: list[int] = field(default_factory=list)
    head: int = 0
    done: set[int] = field(default_factory=set)  # resolved, but behind an unresolved one
    high: int = -1  # one past the highest offset seen, or the consumer's position (advance)
    committed: int = -1  # last position handed to commit()

    def position(self) -> int:
        return self.pending[self.head] if self.head < len(self.pending) else self.high

    def unresolved(self) -> int:
        return len(self.pending) - self.head - len(self.done)


class OffsetTracker:
    def __init__(self) -> None:
        self._parts: dict[TP, _Partition] = {}

    def track(self, topic: str, partition: int, offset: int) -> None:
        self.track_many((topic, partition), [offset])

    def track_many(self, tp: TP, offsets: list[int]) -> None:
        """Track ``offsets`` (ascending) of one partition: the hot path's form of track."""
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = _Partition()
        part.pending.extend(offsets)
        part.high = max(part.high, offsets[-1] + 1)

    def advance(self, positions: dict[TP, int]) -> None:
        """Move each partition's end to the consumer's position after a handled poll.

        A read_committed consumer never receives a transaction's commit marker, nor the
        records of an aborted one, yet they take offsets: on a topic written in
        transactions the last record is not the partition's end. Without this, a
        partition whose every record was resolved committed one short of its end for
        ever: --until-drained never ended, and the lag never reached 0."""
        parts = self._parts
        for tp, pos in positions.items():
            part = parts.get(tp)
            if part is None:
                part = parts[tp] = _Partition()  # only markers so far, or nothing at all
            if pos > part.high:
                part.high = pos

    def resolve(self, topic: str, partition: int, offset: int) -> None:
        self.resolve_many((topic, partition), (offset,))

    def resolve_many(self, tp: TP, offsets: Sequence[int]) -> None:
        """Resolve ``offsets`` (ascending, each tracked) of one partition."""
        part = self._parts.get(tp)
        if part is None or not offsets:  # revoked meanwhile: its new owner decides
            return
        pending, head, done = part.pending, part.head, part.done
        last = head + len(offsets) - 1
        if last < len(pending) and pending[head] == offsets[0] and pending[last] == offsets[-1]:
            # The next len(offsets) tracked offsets, first and last equal: the same offsets
            # (both ascending, all tracked), as when batches finish in order.
            head = last + 1
            if done:
                done.difference_update(offsets)
        else:
            done.update(offsets)
        end = len(pending)
        while head < end and pending[head] in done:
            done.discard(pending[head])
            head += 1
        if head >= TRIM_AT and head * 2 >= end:
            del pending[:head]
            head = 0
        part.head = head

    def unresolved(self, tp: TP | None = None) -> int:
        parts = (
            [self._parts[tp]]
            if tp is not None and tp in self._parts
            else (self._parts.values() if tp is None else [])
        )
        return sum(p.unresolved() for p in parts)

    def committable(self) -> dict[TP, int]:
        """Positions that moved since they were last handed out; marks them handed out."""
        out: dict[TP, int] = {}
        for tp, part in self._parts.items():
            pos = part.position()
            if pos > part.committed and pos >= 0:
                out[tp] = pos
        return out

    def mark_committed(self, positions: dict[TP, int]) -> None:
        for tp, pos in positions.items():
            part = self._parts.get(tp)
            if part is not None:
                part.committed = max(part.committed, pos)

    def positions(self, tps: Iterable[TP]) -> dict[TP, int]:
        """Current commit positions of ``tps`` (those with anything seen)."""
        return {
            tp: self._parts[tp].position()
            for tp in tps
            if tp in self._parts and self._parts[tp].position() >= 0
        }

    def consumed_to(self, tp: TP) -> int:
        """One past the highest offset consumed from ``tp`` (-1 if none)."""
        part = self._parts.get(tp)
        return part.high if part is not None else -1

    def forget(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._parts.pop(tp, None)

    def partitions(self) -> list[TP]:
        return list(self._parts)
