"""Rebalances: finish or drop the work of partitions that leave, commit, share the rate.

The callbacks run on the Kafka thread, inside consume(): they block while the event
loop finishes the partitions' work. A batch never spans partitions, so a revoked
partition's batches are dropped or awaited whole and nothing of the kept ones is touched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from sink.batching import Batcher
from sink.config import Settings
from sink.consumer import TP, KafkaSource
from sink.flow import Dispatcher
from sink.offsets import OffsetTracker
from sink.rate_share import RateShare
from sink.rejects import Rejects

log = logging.getLogger(__name__)
# A member whose topic metadata did not come (the broker busy or away) asks again this
# often: until it knows the topics' partitions, it keeps its last share, the whole
# HTTP_RATE_LIMIT on its first assignment. A retry waits less for the answer than the
# first ask: the main loop waits for it, and through a broker outage it would turn only
# once every 7 s.
SHARE_RETRY_S = 2.0
SHARE_RETRY_TIMEOUT_S = 1.0


class Rebalance:
    def __init__(
        self,
        source: KafkaSource,
        loop: asyncio.AbstractEventLoop,
        tracker: OffsetTracker,
        batcher: Batcher,
        flow: Dispatcher,
        rejects: Rejects,
        rate: RateShare,
        finish_timeout_s: float,
    ) -> None:
        self.source = source
        self.loop = loop
        self.tracker = tracker
        self.batcher = batcher
        self.flow = flow
        self.rejects = rejects
        self.rate = rate
        self.finish_timeout_s = finish_timeout_s
        self.share_stale = False
        self._share_retry_at = 0.0

    def subscribe(self) -> None:
        self.source.subscribe(self.on_assign, self.on_revoke, self.on_lost)

    def on_assign(self, tps: list[TP]) -> None:
        log.info("partitions assigned: %s", _fmt(tps))
        # The topics' partition count is asked for from the main loop (refresh_share):
        # a consumer call made inside a rebalance callback aborts the process
        # (confluent-kafka's CallState_get assertion, seen when a second member joined).
        self.share_stale = True
        self._share_retry_at = 0.0
        self.rate.update(len(self.source.assignment), None)

    async def refresh_share(self) -> None:
        """Recompute this member's rate share once the assignment changed; until the
        topics' metadata answers, ask again every SHARE_RETRY_S."""
        if self.share_stale and time.monotonic() >= self._share_retry_at:
            retry = self._share_retry_at > 0.0
            total = await self.source.partitions_of_topics(SHARE_RETRY_TIMEOUT_S if retry else 5.0)
            if total is None:
                self._share_retry_at = time.monotonic() + SHARE_RETRY_S
            else:
                self.share_stale = False
            self.rate.update(len(self.source.assignment), total)

    def on_revoke(self, tps: list[TP]) -> None:
        """Finish the revoked partitions' work, commit, let go."""
        log.info("partitions revoked: %s", _fmt(tps))
        self._release_blocking(tps, wait=True, timeout_s=self.finish_timeout_s + 5)
        # Lowered before another member can take these partitions up: none can while
        # this callback runs, so what is buffered for them goes at the whole share (at
        # half of it, a second member's join cost 4-5 s at half the token's rate, bench
        # uniform200-200ms-two-members).
        self.rate.update(len(self.source.assignment - set(tps)), None)
        positions = self.tracker.positions(tps)
        try:
            # Synchronous, here on the Kafka thread, even with the main loop's asynchronous
            # commit unanswered (its answer needs a poll, and this runs inside one). Should
            # that older commit be retried and land after this one, these partitions'
            # offsets go back: their next owner sends some records again, none is lost.
            self.source.commit_now(positions)
            self.tracker.mark_committed(positions)
        except Exception as exc:
            log.warning("commit on revoke failed: %s", exc)
        self.tracker.forget(tps)

    def on_lost(self, tps: list[TP]) -> None:
        log.warning("partitions lost (group membership expired): %s", _fmt(tps))
        self._release_blocking(tps, wait=False, timeout_s=30)
        self.tracker.forget(tps)

    def _release_blocking(self, tps: list[TP], wait: bool, timeout_s: float) -> None:
        future = asyncio.run_coroutine_threadsafe(self.release(set(tps), wait), self.loop)
        try:
            future.result(timeout=timeout_s)
        except Exception as exc:
            log.error("releasing partitions failed: %s", exc)

    async def release(self, tps: set[TP], wait: bool) -> None:
        """With ``wait``, send what is buffered for ``tps`` and let it finish, within the
        timeout: lanes finish out of offset order, so a delivered record can sit above
        an unsent one, and the commit (the lowest unresolved offset) would hand it to the
        next owner again. Then drop the rest and cancel what is still in flight."""
        if wait and self.flow.active:
            self.flow.add(self.batcher.flush(lambda b: b.lane is not None and b.lane[:2] in tps))
            self.flow.pump()
            until = time.monotonic() + self.finish_timeout_s
            # The offset tracker has no event to wait on; a rebalance is rare.
            while any(map(self.tracker.unresolved, tps)) and time.monotonic() < until:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        self.batcher.drop(tps)
        touching = self.flow.drop(tps)
        for task in touching:
            task.cancel()
        await asyncio.gather(*touching, return_exceptions=True)
        # Dead letters on their way: 5 s for all of them together (one after the other,
        # 5 s each, could outlast the rebalance's time).
        if writing := [t for t in self.rejects.tasks if not t.done()]:
            await asyncio.wait(writing, timeout=5)


def revoke_wait_s(s: Settings) -> float:
    """How long a revocation may send what it holds: SINK_SHUTDOWN_TIMEOUT_S, within half
    the poll interval. The callback runs inside a poll, keeping its whole rate share; a
    member that stays in it past KAFKA_MAX_POLL_INTERVAL_MS is put out of the group, and
    others would take its partitions while it still sends them."""
    return min(s.shutdown_timeout_s, s.kafka_max_poll_interval_ms / 2_000)


def _fmt(tps: Iterable[TP]) -> str:
    # Cooperative rebalancing has rounds that assign nothing: say so rather than print "".
    return ", ".join(f"{t}[{p}]" for t, p in sorted(tps)) or "(none)"
