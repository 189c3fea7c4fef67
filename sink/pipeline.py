"""The orchestrator: poll → decode and shape → batch → dispatch → deliver → report → commit.

Each stage lives in its own module; this one wires them and handles rebalances and
shutdown. Order per key, concurrency, pace and backpressure are sink/flow.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

from sink import kafka_check, kafka_config
from sink.avro import registry_for
from sink.batching import Batcher
from sink.committer import Committer
from sink.config import Settings
from sink.consumer import KafkaSource, kafka_error_handler
from sink.decoding import Shaper
from sink.delivery import Delivery
from sink.endpoint import EndpointBuilder
from sink.flow import Backpressure, ConcurrencyLimit, Dispatcher, Pace
from sink.health import Health
from sink.http_client import HttpClient
from sink.intake import Intake
from sink.last_batch import LastBatch
from sink.metrics import Metrics
from sink.offsets import OffsetTracker
from sink.producer import AsyncProducer
from sink.rate_share import RateShare
from sink.rebalance import Rebalance, revoke_wait_s
from sink.records import Batch
from sink.rejects import Rejects
from sink.replay import Replayer, ReplayError
from sink.reporting import Reporter
from sink.schema_wait import CONSUME_BATCH, IDLE_POLL_S, with_schemas
from sink.stopping import EXIT_FATAL, EXIT_OK, EXIT_UNCLEAN, StopClock, run_until_stopped, shut_down

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(
        self, settings: Settings, metrics: Metrics | None = None, health: Health | None = None
    ) -> None:
        self.s = settings
        self.metrics = metrics or Metrics()
        self.health = health or Health.for_settings(settings)
        self.tracker = OffsetTracker()
        self.registry = registry_for(settings)  # None: values are JSON
        self.shaper = Shaper.for_settings(
            settings,
            self.registry.decode if self.registry is not None else None,
            contract=settings.clari_template != "manual",  # Clari's id, createdAt, updatedAt
        )
        self.builder = EndpointBuilder(settings)
        self.batcher = Batcher.for_settings(settings)
        self.limit = ConcurrencyLimit(settings.http_max_in_flight)
        self.pace = Pace(settings.http_rate_limit)
        self.flow = Dispatcher(
            self.batcher, self.limit, self.pace, self._deliver, self._prepare, self._finished
        )
        self.pressure = Backpressure(settings.max_buffered_records, settings.max_buffered_bytes)
        self.rejects = Rejects(settings.null_values, self.tracker, self.metrics, self._fail)
        self.rate = RateShare(settings.http_rate_limit, settings.http_rate_sharing, self._set_rate)
        self.intake = Intake(
            self.tracker, self.shaper, self.batcher, self.flow, self.rejects, self.metrics,
            self.health,
        )  # fmt: skip
        self.last_batch = LastBatch(
            settings.is_last_batch, settings.initial_load, self.batcher, self.flow,
            self.tracker, lambda topic: self.builder.routes.for_topic(topic).path,
        )  # fmt: skip
        self.flow.active = self.active = settings.active
        self._stop = asyncio.Event()
        self.stop_clock = StopClock(settings.shutdown_timeout_s)
        self.stopped_cleanly = False  # every step of the stop finished in time
        self._fatal: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.source: KafkaSource | None = None
        self.committer: Committer | None = None
        s = settings
        self.http = HttpClient(s.http_timeout_s, s.http_rate_limit, s.http_max_in_flight)
        self.delivery: Delivery | None = None
        self.metrics.active.set(1 if self.active else 0)

    @property
    def in_flight(self) -> dict[asyncio.Task[None], Batch]:
        return self.flow.in_flight

    @property
    def backpressure(self) -> bool:
        return bool(self.pressure.full) or self.pressure.bytes_full

    def check_kafka_config(self) -> list[str]:  # librdkafka's and the broker's word on them
        return kafka_check.check(self.s)  # raises SettingsError; returns warnings

    def request_stop(self) -> None:
        log.info("stop requested: draining in-flight batches")
        self.stop_clock.begin()
        self._stop.set()

    async def run(self, until_drained: bool = False) -> int:
        """Run until stopped (or, with ``until_drained``, until every record is committed)."""
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Not possible off the main thread (tests run the pipeline in one).
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.add_signal_handler(sig, self.request_stop)
        producer = AsyncProducer(
            {**kafka_config.producer(self.s), "logger": logging.getLogger("librdkafka")}
        )
        reporter = Reporter(
            producer,
            response_topic=self.s.response_topic if self.s.response_topic_enabled else None,
            dlq_topic=self.s.dlq_topic,
            builder=self.builder,
            metrics=self.metrics,
            health=self.health,
        )
        self.rejects.reporter = reporter
        on_error = kafka_error_handler(self.health, self._fail_soon)
        self.source = KafkaSource(self.s, on_error, self.health)
        self.committer = Committer(self.source, self.tracker, self.metrics, self.health)
        self.last_batch.source = self.source
        self.source.pause_new = not self.active
        s = self.s
        async with self.http as http:
            self.delivery = Delivery(
                s, http, self.builder, reporter, self.metrics, self.health,
                on_pushback=self.limit.pushback, on_success=self.limit.success,
                on_rate_limited=self.rate.pushback,
                replayer=Replayer(s, self.shaper), on_accepted=self.last_batch.accepted,
            )  # fmt: skip
            self.rebalance = Rebalance(
                self.source, self._loop, self.tracker, self.batcher, self.flow, self.rejects,
                self.rate, revoke_wait_s(s),
            )  # fmt: skip
            self.rebalance.subscribe()
            log.info(
                "sink started",
                extra={"topics": s.kafka_topics, "group": s.kafka_group_id,
                       "template": s.clari_template, "active": self.active},
            )  # fmt: skip
            try:
                await run_until_stopped(self._main_loop(until_drained), self._stop, self.stop_clock)
            finally:
                clean = self.stopped_cleanly = await shut_down(self, producer, self.stop_clock)
        if self._fatal is not None:
            log.error("sink stopped on a fatal error: %s", self._fatal)
            return EXIT_FATAL
        return EXIT_OK if clean else EXIT_UNCLEAN

    async def _main_loop(self, until_drained: bool) -> None:
        assert self.source is not None
        next_commit = time.monotonic() + self.s.commit_interval_ms / 1000
        next_drain_check = 0.0
        while not self._stop.is_set():
            self.health.beat()
            msgs = polled = await self.source.consume(CONSUME_BATCH, self._poll_timeout())
            if self.registry is not None and msgs:
                msgs = await with_schemas(self.registry, self.source, msgs, self.health, self._stop)
            if msgs:
                self.flow.flushing = False  # more came: batches fill again
            await self.rebalance.refresh_share()  # before a call of a new assignment
            self.rate.tick()
            self.intake.handle(msgs)
            if len(msgs) == len(polled):  # not cut short by a stop while schemas were awaited
                self.source.settle_positions()
                self.tracker.advance(self.source.positions)  # past transaction markers
            if self._fatal is not None:
                return
            self.flow.pump()
            await self._apply_backpressure()
            now = time.monotonic()
            if now >= next_commit:
                await self.commit(wait=False)
                next_commit = now + self.s.commit_interval_ms / 1000
            if until_drained and not msgs and now >= next_drain_check:
                next_drain_check = now + 0.5
                if await self.drained():
                    log.info("all assigned partitions are delivered and committed")
                    return
            self.update_gauges()

    def _poll_timeout(self) -> float:
        deadline = self.batcher.next_deadline()
        if deadline is None:
            return IDLE_POLL_S
        return min(IDLE_POLL_S, max(0.005, deadline - time.monotonic()))

    def _fail(self, exc: BaseException) -> None:
        self._fatal = exc
        self.stop_clock.fatal = True
        self._stop.set()

    def _fail_soon(self, text: str) -> None:
        """_fail from another thread (librdkafka's callbacks)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._fail, RuntimeError(text))

    def _deliver(self, batch: Batch, on_sent: Callable[[], None]) -> Coroutine[Any, Any, None]:
        assert self.delivery is not None
        return self.delivery.deliver(batch, on_sent=on_sent)

    def _prepare(self, batch: Batch) -> None:
        """What depends on the moment a batch is sent."""
        self.metrics.batch_records.observe(batch.count)
        batch.is_last = self.last_batch.now(batch)
        batch.covers = batch.covered()

    def _finished(self, batch: Batch, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, ReplayError):
            # A failed bulk job's records could not be read back: stop without committing
            # them; after a restart they are consumed again from the committed offset.
            log.error("batch %s: %s; stopping", batch.id, exc)
            return self._fail(exc)
        if exc is not None:
            # A bug, not an API answer: stop without committing past this batch.
            log.error("delivery of batch %s crashed", batch.id, exc_info=exc)
            return self._fail(exc)
        assert batch.covers is not None  # fixed by _prepare
        for tp, offsets in batch.covers.items():
            self.tracker.resolve_many(tp, offsets)

    async def commit(self, wait: bool = True) -> None:
        if self.committer is not None:
            await self.committer.commit(wait)

    async def drained(self) -> bool:
        """Every assigned partition is consumed to its end, resolved and committed."""
        assert self.committer is not None
        if self.flow.waiting_work() or self.in_flight or self.rejects.tasks:
            if self._read_all():  # caught up: what lingers goes now
                self.flow.flushing = True
                self.flow.pump()
            return False
        return await self.committer.all_committed()

    def _read_all(self) -> bool:
        """After an empty poll: every partition read to its end. A paused one only if its
        end offset says so: backpressure pausing every partition also empties a poll, and
        flushing then cut calls of 1-40 records while thousands waited (106 of 2,071
        calls in bench uniform200-200ms-limit100)."""
        source, tracker = self.source, self.tracker
        assert source is not None
        return all(
            source.read_to_end(tp, tracker.consumed_to(tp), strict=True)
            for tp in source.paused & source.assignment
        )

    def _set_rate(self, rate: float) -> None:
        self.pace.set_rate(rate)
        self.http.set_rate(rate)
        self.metrics.rate_share.set(rate)

    async def _apply_backpressure(self) -> None:
        assert self.source is not None
        parked = self.flow.parked()  # records of bulk jobs in progress: not in memory
        held = {t: self.tracker.unresolved(t) - parked.get(t, 0) for t in self.source.assignment}
        nbytes = self.batcher.buffered_bytes + self.flow.held_bytes()
        paused = await self.pressure.apply(self.source, held, nbytes, self.active)
        self.metrics.paused_partitions.set(len(paused) if self.active else 0)

    def set_active(self, active: bool) -> None:
        """Deactivated: consume nothing and send nothing, keep the group membership and
        the committed position; batches already in flight finish."""
        if active != self.active:
            log.info("sink %s", "activated" if active else "deactivated")
        self.flow.active = self.active = active
        self.metrics.active.set(1 if active else 0)
        if active and self._loop is not None:
            self.flow.pump()

    def update_gauges(self) -> None:
        m = self.metrics
        m.in_flight.set(len(self.in_flight))
        m.parked.set(sum(self.flow.parked().values()))
        m.buffered.set(self.tracker.unresolved())
        m.paused.set(1 if self.backpressure else 0)
        m.healthy.set(1 if self.health.ok else 0)
        m.concurrency.set(self.limit.current)
        m.rate_share.set(self.rate.current)
        m.lanes_busy.set(len(self.flow.busy))
        m.batches_waiting.set(self.flow.waiting)
        if self.source is not None:
            m.assigned.set(len(self.source.assignment))
