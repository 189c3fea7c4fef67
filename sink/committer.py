"""Committing what the offset tracker allows, and telling when a load is all committed."""

from __future__ import annotations

import asyncio
import logging

from sink.consumer import TP, KafkaSource
from sink.health import Health
from sink.lag import LagMeter
from sink.metrics import Metrics
from sink.offsets import OffsetTracker

log = logging.getLogger(__name__)


class Committer:
    def __init__(
        self, source: KafkaSource, tracker: OffsetTracker, metrics: Metrics, health: Health
    ) -> None:
        self.source = source
        self.tracker = tracker
        self.metrics = metrics
        self.health = health
        self.lag = LagMeter(source, metrics, lambda tp: tracker.positions([tp]).get(tp))

    async def commit(self, wait: bool = True) -> None:
        """Commit what may be committed: waiting for the broker's answer, or (``wait``
        False, the main loop's periodic commit) asking for it and going on, so that
        reading never stops for a commit."""
        positions = self._committable()
        if positions:
            await (self._commit(positions) if wait else self._ask(positions))
        await self.lag.update()  # the commit cadence is the lag metrics' cadence too

    def _committable(self) -> dict[TP, int]:
        owned = self.source.assignment
        return {tp: pos for tp, pos in self.tracker.committable().items() if tp in owned}

    async def _commit(self, positions: dict[TP, int]) -> None:
        try:
            await self.source.commit(positions)
        except Exception as exc:  # KafkaException: retried at the next interval
            return self._failed(exc)
        self._done(positions)

    async def _ask(self, positions: dict[TP, int]) -> None:
        if self.source.commit_pending():
            return  # its answer comes with a poll; then the next interval asks again
        try:
            answered = await self.source.commit_async(positions)
        except Exception as exc:
            return self._failed(exc)

        def settled(f: asyncio.Future[None]) -> None:
            if (exc := f.exception()) is not None:
                self._failed(exc)
            else:
                self._done(positions)

        answered.add_done_callback(settled)

    def _failed(self, exc: BaseException) -> None:
        self.metrics.commits.labels(result="error").inc()
        # While the broker is away its outage is logged once (sink/outage.py).
        level = logging.DEBUG if self.health.down("kafka") else logging.WARNING
        log.log(level, "offset commit failed (will retry): %s", exc)

    def _done(self, positions: dict[TP, int]) -> None:
        self.tracker.mark_committed(positions)
        self.lag.record_commit(positions)
        self.metrics.commits.labels(result="ok").inc()
        self.health.clear("kafka")

    async def all_committed(self) -> bool:
        """Every assigned partition is consumed to its end, resolved and committed."""
        tps = sorted(self.source.assignment)
        if not tps or self.tracker.unresolved() or self.source.commit_pending():
            return False  # (a commit's answer comes with the main loop's next poll)
        await self.commit()
        ends = await self.source.end_offsets(tps)
        committed = await self.source.committed(tps)
        return all(committed.get(tp, -1) >= high or high == low for tp, (low, high) in ends.items())
