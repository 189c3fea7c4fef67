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
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message

from sink.avro import registry_for
from sink.batching import Batcher, grouping_function
from sink.config import Settings
from sink.consumer import TP, KafkaSource, consumer_config
from sink.decoding import Shaper
from sink.delivery import Delivery
from sink.endpoint import EndpointBuilder
from sink.flow import Backpressure, ConcurrencyLimit, Dispatcher, Pace
from sink.health import Health
from sink.http_client import HttpClient
from sink.metrics import Metrics
from sink.offsets import OffsetTracker
from sink.producer import AsyncProducer
from sink.rate_share import RateShare
from sink.records import Batch, SinkRecord, message_offsets
from sink.rejects import Rejects
from sink.replay import Replayer, ReplayError
from sink.reporting import Reporter
from sink.schema_wait import CONSUME_BATCH, IDLE_POLL_S, with_schemas

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(
        self, settings: Settings, metrics: Metrics | None = None, health: Health | None = None
    ) -> None:
        self.s = settings
        self.metrics = metrics or Metrics()
        self.health = health or Health()
        self.tracker = OffsetTracker()
        self.registry = registry_for(settings)  # None: values are JSON
        self.shaper = Shaper(
            settings.clari_exclude_attributes,
            decode=self.registry.decode if self.registry is not None else None,
        )
        self.builder = EndpointBuilder(settings)
        self.batcher = Batcher(
            max_records=settings.effective_batch_size,
            max_bytes=settings.batch_max_bytes,
            linger_s=settings.batch_linger_ms / 1000,
            group_of=grouping_function(settings.batch_grouping, settings.batch_group_attribute),
            id_field=settings.clari_id_field,
            lanes=settings.lanes_per_partition,
            keys_span_groups=settings.batch_grouping == "attribute",
        )
        self.limit = ConcurrencyLimit(settings.http_max_in_flight)
        self.pace = Pace(settings.http_rate_limit)
        self.flow = Dispatcher(
            self.batcher, self.limit, self.pace, self._deliver, self._prepare, self._finished
        )
        self.backpressure = Backpressure(settings.max_buffered_records, settings.max_buffered_bytes)
        self.rejects = Rejects(settings.null_values, self.tracker, self.metrics, self._fail)
        self.rate = RateShare(settings.http_rate_limit, settings.http_rate_sharing, self._set_rate)
        self.flow.active = self.active = settings.active
        self.consumed = 0
        self._stop = asyncio.Event()
        self._fatal: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.source: KafkaSource | None = None
        self.http: HttpClient | None = None
        self.delivery: Delivery | None = None
        self.metrics.active.set(1 if self.active else 0)

    @property
    def in_flight(self) -> dict[asyncio.Task[None], Batch]:
        return self.flow.in_flight

    # ------------------------------------------------------------------ lifecycle
    def check_kafka_config(self) -> None:
        """Let librdkafka judge its settings before anything starts (raises KafkaException)."""
        Consumer(consumer_config(self.s)).close()

    def request_stop(self) -> None:
        log.info("stop requested: draining in-flight batches")
        self._stop.set()

    async def run(self, until_drained: bool = False) -> int:
        """Run until stopped (or, with ``until_drained``, until every record is committed)."""
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Not possible off the main thread (tests run the pipeline in one).
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.add_signal_handler(sig, self.request_stop)
        producer = AsyncProducer(
            {**self.s.kafka_common(), "logger": logging.getLogger("librdkafka")}
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
        self.source = KafkaSource(self.s, self._on_kafka_error)
        self.source.pause_new = not self.active
        s = self.s
        async with HttpClient(s.http_timeout_s, s.http_rate_limit, s.http_max_in_flight) as http:
            self.http = http
            self.delivery = Delivery(
                s, http, self.builder, reporter, self.metrics, self.health,
                on_pushback=self.limit.pushback, on_success=self.limit.success,
                replayer=Replayer(s, self.shaper),
            )  # fmt: skip
            self.source.subscribe(self._on_assign, self._on_revoke, self._on_lost)
            log.info(
                "sink started",
                extra={"topics": s.kafka_topics, "group": s.kafka_group_id,
                       "template": s.clari_template, "active": self.active},
            )  # fmt: skip
            try:
                await self._main_loop(until_drained)
            finally:
                await self._shutdown(producer)
        if self._fatal is not None:
            log.error("sink stopped on a fatal error: %s", self._fatal)
            return 1
        return 0

    async def _main_loop(self, until_drained: bool) -> None:
        assert self.source is not None
        next_commit = time.monotonic() + self.s.commit_interval_ms / 1000
        next_drain_check = 0.0
        while not self._stop.is_set():
            self.health.beat()
            msgs = await self.source.consume(CONSUME_BATCH, self._poll_timeout())
            if self.registry is not None and msgs:
                msgs = await with_schemas(self.registry, self.source, msgs, self.health, self._stop)
            self._handle(msgs)
            if self._fatal is not None:
                return
            self.flow.pump()
            await self._apply_backpressure()
            now = time.monotonic()
            if now >= next_commit:
                await self.commit()
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

    async def _shutdown(self, producer: AsyncProducer) -> None:
        assert self.source is not None
        deadline = time.monotonic() + self.s.shutdown_timeout_s
        if self._fatal is None and self.active:
            # Send what is buffered, then let in-flight deliveries finish within the deadline.
            self.flow.add(self.batcher.flush())
        while (self.in_flight or self.rejects.tasks or (self.flow.queues and self.active)) and (
            self._fatal is None and time.monotonic() < deadline
        ):
            self.flow.pump()
            pending = set(self.in_flight) | self.rejects.tasks
            if pending:
                await asyncio.wait(
                    pending,
                    timeout=max(0.0, deadline - time.monotonic()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            else:  # waiting for the pace only
                await asyncio.sleep(max(0.001, self.pace.wait_s(time.monotonic())))
        self.flow.stop_timer()
        abandoned = [*self.in_flight, *self.rejects.tasks]
        for task in abandoned:
            task.cancel()
        if abandoned:
            log.warning(
                "%d deliveries did not finish in time; their records stay "
                "uncommitted and will be consumed again",
                len(abandoned),
            )
            await asyncio.gather(*abandoned, return_exceptions=True)
        if self._fatal is None:
            await self.commit()
        self.update_gauges()
        if self.source.mid_rebalance:
            await self.source.settle_rebalance(timeout_s=10)
        await self.source.close()
        producer.close()
        log.info("sink stopped", extra={"consumed": self.consumed})

    def _fail(self, exc: BaseException) -> None:
        self._fatal = exc
        self._stop.set()

    # ------------------------------------------------------------------ per record
    def _handle(self, msgs: list[Message]) -> None:
        """The per-record hot path: track, shape, batch. Each step takes the whole poll,
        so that per-record work happens in C where it can (measured in bench/run.py)."""
        if not msgs:
            return
        if any(map(Message.error, msgs)):
            for msg in msgs:
                err = msg.error()
                if err is not None and err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", err)
            msgs = [m for m in msgs if m.error() is None]
        # Tracked per partition once per poll; nothing resolves before this (deliveries
        # start later, and rejections are handled below).
        offsets = message_offsets(msgs)
        per_topic: Counter[str] = Counter()
        for tp, offs in offsets.items():
            self.tracker.track_many(tp, offs)
            per_topic[tp[0]] += len(offs)
        # A JSON record sent as it is in arrival-order batches needs only checking and its
        # id, and travels as the consumed message itself; otherwise it is decoded (and
        # shaped, when attributes are dropped) into a SinkRecord.
        probed = None
        if not self.batcher.needs_data:
            probed = self.shaper.probe_messages(msgs, self.batcher.id_field)
        if probed is not None:
            passed, rids, rejected = probed
            # The poll's offsets are those of the messages that passed if none was refused.
            known = offsets if len(passed) == len(msgs) else None
            closed, refused = self.batcher.add_messages(passed, rids, known)
        else:
            consumed = list(map(SinkRecord.from_message, msgs))
            shaped, datas, rejected = self.shaper.shape_many(consumed)
            closed, refused = self.batcher.add_many(shaped, datas)
        self.flow.add(closed)
        for record, error in rejected + refused:
            self.rejects.reject(record, error)
        for topic, count in per_topic.items():
            self.consumed += count
            self.metrics.consumed.labels(topic=topic).inc(count)
        if per_topic:
            self.health.clear("kafka")

    # ------------------------------------------------------------------ dispatch
    def _deliver(self, batch: Batch, on_sent: Callable[[], None]) -> Coroutine[Any, Any, None]:
        assert self.delivery is not None
        return self.delivery.deliver(batch, on_sent=on_sent)

    def _prepare(self, batch: Batch) -> None:
        """What depends on the moment a batch is sent."""
        self.metrics.batch_records.observe(batch.count)
        batch.is_last = self._is_last_batch()
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

    def _is_last_batch(self) -> bool:
        setting = self.s.clari_is_last_batch
        if setting != "auto":
            return setting == "true"
        # Auto: true only for the call that catches up with the end of every assigned partition.
        if self.batcher.open_batches or self.flow.queues:
            return False
        assert self.source is not None
        for tp in self.source.assignment:
            high = self.source.cached_high_watermark(tp)
            if high is not None and high > 0 and self.tracker.consumed_to(tp) < high:
                return False
        return True

    # ------------------------------------------------------------------ offsets
    async def commit(self) -> None:
        assert self.source is not None
        owned = self.source.assignment
        positions = {tp: pos for tp, pos in self.tracker.committable().items() if tp in owned}
        if not positions:
            return
        try:
            await self.source.commit(positions)
        except Exception as exc:  # KafkaException: retried at the next interval
            self.metrics.commits.labels(result="error").inc()
            log.warning("offset commit failed (will retry): %s", exc)
            return
        self.tracker.mark_committed(positions)
        self.metrics.commits.labels(result="ok").inc()
        self.health.clear("kafka")

    async def drained(self) -> bool:
        """Every assigned partition is consumed to its end, resolved and committed."""
        assert self.source is not None
        if self.flow.queues or self.in_flight or self.rejects.tasks or self.batcher.open_batches:
            self.flow.add(self.batcher.flush())
            self.flow.pump()
            return False
        tps = sorted(self.source.assignment)
        if not tps or self.tracker.unresolved():
            return False
        await self.commit()
        ends = await self.source.end_offsets(tps)
        committed = await self.source.committed(tps)
        return all(committed.get(tp, -1) >= high or high == low for tp, (low, high) in ends.items())

    # ------------------------------------------------------------------ rebalance
    # The callbacks run on the Kafka thread, inside consume(): they may block while the
    # event loop finishes the partitions' work.
    def _on_assign(self, tps: list[TP]) -> None:
        log.info("partitions assigned: %s", _fmt(tps))
        assert self.source is not None
        self._share_rate(self.source.partition_total())

    def _on_revoke(self, tps: list[TP]) -> None:
        """Finish the revoked partitions' work, commit, let go."""
        log.info("partitions revoked: %s", _fmt(tps))
        assert self.source is not None
        self._share_rate(None, len(self.source.assignment) - len(set(tps)))
        self._release_blocking(tps, wait=True, timeout_s=self.s.shutdown_timeout_s + 5)
        positions = self.tracker.positions(tps)
        try:
            self.source.commit_now(positions)
            self.tracker.mark_committed(positions)
        except Exception as exc:
            log.warning("commit on revoke failed: %s", exc)
        self.tracker.forget(tps)

    def _on_lost(self, tps: list[TP]) -> None:
        log.warning("partitions lost (group membership expired): %s", _fmt(tps))
        self._release_blocking(tps, wait=False, timeout_s=30)
        self.tracker.forget(tps)

    def _release_blocking(self, tps: list[TP], wait: bool, timeout_s: float) -> None:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self._release(set(tps), wait), self._loop)
        try:
            future.result(timeout=timeout_s)
        except Exception as exc:
            log.error("releasing partitions failed: %s", exc)

    async def _release(self, tps: set[TP], wait: bool) -> None:
        """Drop what is buffered for ``tps``; let their in-flight batches finish (or cancel).
        A batch never spans partitions, so nothing of the kept partitions is touched."""
        self.batcher.drop(tps)
        touching = self.flow.drop(tps)
        if wait and touching:
            await asyncio.wait(touching, timeout=self.s.shutdown_timeout_s)
        for task in touching:
            task.cancel()
        await asyncio.gather(*touching, return_exceptions=True)
        for task in [t for t in self.rejects.tasks if not t.done()]:
            await asyncio.wait([task], timeout=5)

    def _share_rate(self, partitions_total: int | None, assigned: int | None = None) -> None:
        assert self.source is not None
        owned = len(self.source.assignment) if assigned is None else assigned
        self.rate.update(owned, partitions_total)

    def _set_rate(self, rate: float) -> None:
        self.pace.set_rate(rate)
        if self.http is not None:
            self.http.set_rate(rate)
        self.metrics.rate_share.set(rate)

    # ------------------------------------------------------------------ flow control
    async def _apply_backpressure(self) -> None:
        assert self.source is not None
        parked = self.flow.parked()  # records of bulk jobs in progress: not in memory
        held = {
            tp: self.tracker.unresolved(tp) - parked.get(tp, 0) for tp in self.source.assignment
        }
        nbytes = (
            self.batcher.buffered_bytes
            + self.flow.waiting_bytes()
            + sum(b.nbytes for b in self.in_flight.values())
        )
        paused = (
            self.source.assignment if not self.active else self.backpressure.update(held, nbytes)
        )
        self.source.pause_new = not self.active or self.backpressure.bytes_full
        self.metrics.paused_partitions.set(len(paused) if self.active else 0)
        await self.source.pause(paused)
        if resume := self.source.paused - set(paused):
            await self.source.resume(list(resume))

    # ------------------------------------------------------------------ activation
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
        m.paused.set(1 if self.backpressure.full or self.backpressure.bytes_full else 0)
        m.healthy.set(1 if self.health.ok else 0)
        m.concurrency.set(self.limit.current)
        m.rate_share.set(self.rate.current)
        m.lanes_busy.set(len(self.flow.busy))
        m.batches_waiting.set(self.flow.waiting)
        if self.source is not None:
            m.assigned.set(len(self.source.assignment))

    def _on_kafka_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self.health.fail("kafka", str(err))
        log.warning("kafka: %s", err)
        if err.fatal() and self._loop is not None:
            self._fatal = RuntimeError(f"fatal Kafka error: {err}")
            self._loop.call_soon_threadsafe(self._stop.set)


def _fmt(tps: Iterable[TP]) -> str:
    # Cooperative rebalancing has rounds that assign nothing: say so rather than print "".
    return ", ".join(f"{t}[{p}]" for t, p in sorted(tps)) or "(none)"
