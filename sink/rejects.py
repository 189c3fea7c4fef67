"""Records refused before batching (bad values, null values): skipped, failed on, or
dead-lettered one by one, each resolved once its dead letter is acknowledged."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sink.decoding import RecordError
from sink.mapping import SkipRecord
from sink.metrics import Metrics
from sink.offsets import OffsetTracker
from sink.records import SinkRecord
from sink.reporting import Reporter


class FatalError(Exception):
    """Something the sink must not paper over (a null value under SINK_NULL_VALUES=fail)."""


class Rejects:
    def __init__(
        self,
        null_policy: str,
        tracker: OffsetTracker,
        metrics: Metrics,
        fail: Callable[[BaseException], None],
    ) -> None:
        self.null_policy = null_policy
        self.tracker = tracker
        self.metrics = metrics
        self.fail = fail
        self.reporter: Reporter | None = None  # set once the producer runs
        self.tasks: set[asyncio.Task[None]] = set()  # dead letters being written

    def reject(self, record: SinkRecord, exc: RecordError) -> None:
        if isinstance(exc, SkipRecord):  # a delete, by SINK_DELETES (sink/mapping.py)
            self.metrics.skipped.labels(reason=exc.reason).inc()
            self.tracker.resolve(record.topic, record.partition, record.offset)
            return
        if exc.reason == "null-value":
            if self.null_policy == "skip":
                self.metrics.skipped.labels(reason="null-value").inc()
                self.tracker.resolve(record.topic, record.partition, record.offset)
                return
            if self.null_policy == "fail":
                self.fail(FatalError(f"null value at {record.where} and SINK_NULL_VALUES=fail"))
                return
        assert self.reporter is not None
        task = asyncio.create_task(
            self.reporter.dead_letter([record], reason=exc.reason, error=exc.detail or exc.reason)
        )

        def done(t: asyncio.Task[None]) -> None:
            self.tasks.discard(t)
            if not t.cancelled() and t.exception() is None:
                self.tracker.resolve(record.topic, record.partition, record.offset)

        self.tasks.add(task)
        task.add_done_callback(done)
