"""Consumer lag per partition and the age of its committed offset, for the metrics.

Updated on the commit cadence (never per record): the end of each partition comes from
the consumer's cached high watermark (no broker round trip), the committed offset from
this member's own commits, or, for a partition it has not committed yet, from the
broker once (a member stuck from its start must still show its lag).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from sink.metrics import Metrics

TP = tuple[str, int]
# A broker that does not answer holds the main loop for the query's timeout: after a
# failed or incomplete answer, ask again no sooner than this.
LEARN_EVERY_S = 5.0


class LagSource(Protocol):
    """What the meter needs of the consumer (sink.consumer.KafkaSource)."""

    assignment: set[TP]

    def cached_high_watermark(self, tp: TP) -> int | None: ...

    async def committed(self, tps: list[TP]) -> dict[TP, int]: ...


class LagMeter:
    def __init__(
        self,
        source: LagSource,
        metrics: Metrics,
        position: Callable[[TP], int | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.metrics = metrics
        self.position = position  # where consumption would resume (first unresolved)
        self.clock = clock
        self.committed: dict[TP, int] = {}
        self.advanced_at: dict[TP, float] = {}  # when the committed offset last moved
        self._next_learn = 0.0

    def record_commit(self, positions: dict[TP, int]) -> None:
        now = self.clock()
        for tp, pos in positions.items():
            if pos > self.committed.get(tp, -1):
                self.committed[tp] = pos
                self.advanced_at[tp] = now

    async def update(self) -> None:
        owned = set(self.source.assignment)
        self._forget(set(self.committed) - owned)
        unknown = sorted(tp for tp in owned if tp not in self.committed)
        if unknown and self.clock() >= self._next_learn:
            await self._learn(unknown)
            if any(tp not in self.committed for tp in unknown):
                self._next_learn = self.clock() + LEARN_EVERY_S
        now = self.clock()
        for tp in owned:
            high = self.source.cached_high_watermark(tp)
            base = self.committed.get(tp, -1)
            if high is None or base < 0:
                continue  # not fetched yet, or no position known: no number beats a wrong one
            lag = max(0, high - base)
            topic, part = tp[0], str(tp[1])
            self.metrics.lag.labels(topic, part).set(lag)
            # An idle, fully committed partition is not "old": its age counts only while
            # records wait behind the committed offset.
            age = now - self.advanced_at[tp] if lag > 0 else 0.0
            self.metrics.commit_age.labels(topic, part).set(age)

    async def _learn(self, tps: list[TP]) -> None:
        try:
            broker = await self.source.committed(tps)
        except Exception:  # KafkaException: asked again at the next update
            broker = {}
        now = self.clock()
        for tp in tps:
            pos = broker.get(tp, -1)
            if pos < 0:  # nothing committed by the group yet: where this member starts
                pos = self.position(tp) or -1
            if pos >= 0:
                self.committed[tp] = pos
                self.advanced_at[tp] = now

    def _forget(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self.committed.pop(tp, None)
            self.advanced_at.pop(tp, None)
            for gauge in (self.metrics.lag, self.metrics.commit_age):
                with contextlib.suppress(KeyError):  # never set: no position was known
                    gauge.remove(tp[0], str(tp[1]))
