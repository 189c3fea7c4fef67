"""The one place that decides which offset may be committed.

Each consumed offset is tracked until it is *resolved*: accepted by the API, written to
the dead-letter topic, or skipped by policy. The commit position of a partition is its
lowest unresolved offset, or one past the highest offset seen when all are resolved, so
a commit never passes a record that could still be lost.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

TP = tuple[str, int]


@dataclass
class _Partition:
    pending: deque[int] = field(default_factory=deque)  # tracked offsets, ascending
    done: set[int] = field(default_factory=set)  # resolved but not yet at the head
    high: int = -1  # one past the highest offset seen
    committed: int = -1  # last position handed to commit()

    def position(self) -> int:
        return self.pending[0] if self.pending else self.high


class OffsetTracker:
    def __init__(self) -> None:
        self._parts: dict[TP, _Partition] = {}

    def track(self, topic: str, partition: int, offset: int) -> None:
        part = self._parts.get((topic, partition))
        if part is None:
            part = self._parts[(topic, partition)] = _Partition()
        part.pending.append(offset)
        part.high = max(part.high, offset + 1)

    def track_many(self, tp: TP, offsets: list[int]) -> None:
        """Track ``offsets`` (ascending) of one partition: the hot path's form of track."""
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = _Partition()
        part.pending.extend(offsets)
        part.high = max(part.high, offsets[-1] + 1)

    def resolve(self, topic: str, partition: int, offset: int) -> None:
        self.resolve_many((topic, partition), (offset,))

    def resolve_many(self, tp: TP, offsets: Iterable[int]) -> None:
        part = self._parts.get(tp)
        if part is None:  # revoked meanwhile: its new owner decides
            return
        pending, done = part.pending, part.done
        for offset in offsets:
            if pending and pending[0] == offset:
                pending.popleft()
            else:
                done.add(offset)
        while pending and pending[0] in done:
            done.discard(pending.popleft())

    def unresolved(self, tp: TP | None = None) -> int:
        parts = (
            [self._parts[tp]]
            if tp is not None and tp in self._parts
            else (self._parts.values() if tp is None else [])
        )
        return sum(len(p.pending) - len(p.done) for p in parts)

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
