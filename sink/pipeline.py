"""The orchestrator: poll → decode and shape → batch → deliver → report → commit.

Each stage lives in its own module; this one wires them, keeps per-key order among
batches in flight, applies backpressure, and handles rebalances and shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, Message

from sink.avro import registry_for
from sink.batching import Batcher, grouping_function
from sink.config import Settings
from sink.consumer import TP, KafkaSource, consumer_config
from sink.decoding import RecordError, Shaper
from sink.delivery import Delivery
from sink.endpoint import EndpointBuilder
from sink.health import Health
from sink.http_client import HttpClient
from sink.metrics import Metrics
from sink.offsets import OffsetTracker
from sink.producer import AsyncProducer
from sink.records import Batch, Offsets, SinkRecord, message_offsets
from sink.replay import Replayer, ReplayError
from sink.reporting import Reporter

log = logging.getLogger(__name__)

CONSUME_BATCH = 1_000
IDLE_POLL_S = 0.2


@dataclass(slots=True)
class _InFlight:
    batch: Batch
    keys: set[bytes]
    sending: bool = True  # False once the API gave its final answer (publishing remains)

    @property
    def covers(self) -> Offsets:
        """The offsets as dispatched: delivery may shrink or park batch.records."""
        assert self.batch.covers is not None  # fixed by Pipeline._start
        return self.batch.covers


class FatalError(Exception):
    """Something the sink must not paper over (a null value under SINK_NULL_VALUES=fail)."""


class ConcurrencyLimit:
    """In-flight requests allowed now: halved when the API pushes back, regrown on success."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.current = maximum
        self._successes = 0
        self._last_cut = 0.0

    def pushback(self) -> None:
        now = time.monotonic()
        if now - self._last_cut > 1.0:  # one cut per burst of 429s, not one per request
            self.current = max(1, self.current // 2)
            self._last_cut = now
            self._successes = 0

    def success(self) -> None:
        self._successes += 1
        if self.current < self.maximum and self._successes >= 10:
            self.current += 1
            self._successes = 0


class Pipeline:
    def __init__(
        self, settings: Settings, metrics: Metrics | None = None, health: Health | None = None
    ) -> None:
        self.s = settings
        self.metrics = metrics or Metrics()
        self.health = health or Health.for_settings(settings)
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
        )
        self.limit = ConcurrencyLimit(settings.http_max_in_flight)
        self.waiting: deque[Batch] = deque()
        self.in_flight: dict[asyncio.Task[None], _InFlight] = {}
        # Keys of the batches in flight: a set, since no two of them ever share a key.
        self.keys_in_flight: set[bytes] = set()
        self.sending = 0  # batches in flight still waiting for the API's final answer
        self.side_tasks: set[asyncio.Task[None]] = set()  # dead letters of single records
        self.active = settings.active
        self.backpressure = False
        self.consumed = 0
        self._stop = asyncio.Event()
        self._fatal: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.source: KafkaSource | None = None
        self.delivery: Delivery | None = None
        self.reporter: Reporter | None = None
        self.metrics.active.set(1 if self.active else 0)

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
        response_topic = self.s.response_topic if self.s.response_topic_enabled else None
        self.reporter = Reporter(
            producer,
            response_topic=response_topic,
            dlq_topic=self.s.dlq_topic,
            builder=self.builder,
            metrics=self.metrics,
            health=self.health,
        )
        self.source = KafkaSource(self.s, self._on_kafka_error)
        self.source.pause_new = not self.active
        async with HttpClient(
            self.s.http_timeout_s, self.s.http_rate_limit, self.s.http_max_in_flight
        ) as http:
            self.delivery = Delivery(
                self.s,
                http,
                self.builder,
                self.reporter,
                self.metrics,
                self.health,
                on_pushback=self.limit.pushback,
                on_success=self.limit.success,
                replayer=Replayer(self.s, self.shaper),
            )
            self.source.subscribe(self._on_assign, self._on_revoke, self._on_lost)
            log.info(
                "sink started",
                extra={
                    "topics": self.s.kafka_topics,
                    "group": self.s.kafka_group_id,
                    "template": self.s.clari_template,
                    "active": self.active,
                },
            )
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
                msgs = await self._with_schemas(msgs)
            self._handle(msgs)
            if self._fatal is not None:
                return
            self.waiting.extend(self.batcher.due())
            self._pump()
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
            self.waiting.extend(self.batcher.flush())
        while (self.in_flight or self.side_tasks or (self.waiting and self.active)) and (
            self._fatal is None and time.monotonic() < deadline
        ):
            self._pump()
            pending = set(self.in_flight) | self.side_tasks
            if pending:
                await asyncio.wait(
                    pending,
                    timeout=max(0.0, deadline - time.monotonic()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
        abandoned = [*self.in_flight, *self.side_tasks]
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

    async def _with_schemas(self, msgs: list[Message]) -> list[Message]:
        """Fetch the writer schemas ``msgs`` need before they are handled (the per-record
        path never waits on the network). While the registry is unavailable the
        partitions stay paused but polled, so the group membership holds; messages of
        partitions revoked meanwhile are left to their new owner."""
        assert self.registry is not None and self.source is not None
        source = self.source

        async def wait(seconds: float) -> bool:
            source.pause_new = True
            await source.pause(source.assignment)
            until = time.monotonic() + seconds
            while not self._stop.is_set() and (left := until - time.monotonic()) > 0:
                self.health.beat()
                msgs.extend(await source.consume(CONSUME_BATCH, min(IDLE_POLL_S, left)))
            return self._stop.is_set()

        def unavailable(text: str) -> None:
            self.health.fail("schema-registry", text)
            log.warning("schema registry unavailable, records wait (retrying): %s", text)

        fetched = False
        while missing := self.registry.missing(m.value() for m in msgs if m.error() is None):
            if not await self.registry.fetch_until_done(missing, wait, unavailable):
                return []  # stopping: nothing of these was tracked, they are consumed again
            fetched = True
        if not fetched:
            return msgs
        self.health.clear("schema-registry")
        owned = source.assignment
        return [m for m in msgs if (m.topic(), m.partition()) in owned or m.error() is not None]

    # ------------------------------------------------------------------ per record
    def _handle(self, msgs: list[Message]) -> None:
        """The per-record hot path: track, shape, batch. Each step takes the whole poll,
        so that per-record work happens in C where it can (measured in bench/run.py)."""
        if not msgs:
            return
        if any(map(Message.error, msgs)):
            for msg in msgs:
                if msg.error() is not None:
                    self._consumer_error(msg)
            msgs = [m for m in msgs if m.error() is None]
        # Tracked per partition once per poll; nothing resolves before this (deliveries
        # start later, and rejections are handled below).
        offsets = message_offsets(msgs)
        per_topic: Counter[str] = Counter()
        for tp, offs in offsets.items():
            self.tracker.track_many(tp, offs)
            per_topic[tp[0]] += len(offs)
        # Batched in arrival order, a JSON record sent as it is needs only checking and
        # its id, and travels as the consumed message itself; otherwise it is decoded
        # (and shaped, when attributes are dropped) into a SinkRecord.
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
        self.waiting.extend(closed)
        for record, error in rejected + refused:
            self._reject(record, error)
        for topic, count in per_topic.items():
            self.consumed += count
            self.metrics.consumed.labels(topic=topic).inc(count)
        if per_topic:
            self.health.clear("kafka")

    def _consumer_error(self, msg: Message) -> None:
        err = msg.error()
        if err is not None and err.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer error: %s", err)

    def _reject(self, record: SinkRecord, exc: RecordError) -> None:
        if exc.reason == "null-value":
            policy = self.s.null_values
            if policy == "skip":
                self.metrics.skipped.labels(reason="null-value").inc()
                self.tracker.resolve(record.topic, record.partition, record.offset)
                return
            if policy == "fail":
                self._fatal = FatalError(f"null value at {record.where} and SINK_NULL_VALUES=fail")
                self._stop.set()
                return
        assert self.reporter is not None
        task = asyncio.create_task(
            self.reporter.dead_letter([record], reason=exc.reason, error=exc.detail or exc.reason)
        )

        def done(t: asyncio.Task[None]) -> None:
            self.side_tasks.discard(t)
            if not t.cancelled() and t.exception() is None:
                self.tracker.resolve(record.topic, record.partition, record.offset)

        self.side_tasks.add(task)
        task.add_done_callback(done)

    # ------------------------------------------------------------------ dispatch
    def _pump(self) -> None:
        """Start waiting batches while capacity allows, never two with a shared key at once,
        and never a batch ahead of an earlier waiting one that shares a key with it."""
        if not self.active:
            return
        blocked: set[bytes] = set()
        held: deque[Batch] = deque()
        while self.waiting:
            if self.sending >= self.limit.current:
                held.extend(self.waiting)
                self.waiting.clear()
                break
            batch = self.waiting.popleft()
            keys = batch.keys
            if not (keys.isdisjoint(blocked) and keys.isdisjoint(self.keys_in_flight)):
                blocked |= keys
                held.append(batch)
                continue
            self._start(batch, keys, more_waiting=bool(self.waiting or held))
        self.waiting = held

    def _start(self, batch: Batch, keys: set[bytes], more_waiting: bool) -> None:
        assert self.delivery is not None
        self.metrics.batch_records.observe(batch.count)
        batch.is_last = self._is_last_batch(more_waiting)
        batch.covers = batch.covered()
        flight = _InFlight(batch, keys)
        task = asyncio.create_task(
            self.delivery.deliver(batch, on_sent=lambda: self._sent(flight)),
            name=f"deliver {batch.id}",
        )
        self.in_flight[task] = flight
        self.keys_in_flight |= keys
        self.sending += 1
        task.add_done_callback(self._finished)

    def _sent(self, flight: _InFlight) -> None:
        """The API's final answer is in: free the slot and the keys for the next batches,
        while the answer is published and the offsets wait for that."""
        if not flight.sending:
            return
        flight.sending = False
        self.sending -= 1
        self.keys_in_flight -= flight.keys
        self._pump()

    def _finished(self, task: asyncio.Task[None]) -> None:
        flight = self.in_flight.pop(task, None)
        if flight is None:
            return
        self._sent(flight)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, ReplayError):
            # A failed bulk job's records could not be read back: stop without committing
            # them; after a restart they are consumed again from the committed offset.
            log.error("batch %s: %s; stopping", flight.batch.id, exc)
            self._fatal = exc
            self._stop.set()
            return
        if exc is not None:
            # A bug, not an API answer: stop without committing past this batch.
            log.error("delivery of batch %s crashed", flight.batch.id, exc_info=exc)
            self._fatal = exc
            self._stop.set()
            return
        for tp, offsets in flight.covers.items():
            self.tracker.resolve_many(tp, offsets)
        self._pump()

    def _is_last_batch(self, more_waiting: bool) -> bool:
        setting = self.s.clari_is_last_batch
        if setting != "auto":
            return setting == "true"
        # Auto: true only for the call that catches up with the end of every assigned partition.
        if self.batcher.open_batches or more_waiting:
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
        positions = {
            tp: pos
            for tp, pos in self.tracker.committable().items()
            if tp in self.source.assignment
        }
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
        if self.waiting or self.in_flight or self.side_tasks or self.batcher.open_batches:
            self.waiting.extend(self.batcher.flush())
            self._pump()
            return False
        tps = sorted(self.source.assignment)
        if not tps or self.tracker.unresolved():
            return False
        await self.commit()
        ends = await self.source.end_offsets(tps)
        committed = await self.source.committed(tps)
        return all(committed.get(tp, -1) >= high or high == low for tp, (low, high) in ends.items())

    # ------------------------------------------------------------------ rebalance
    def _on_assign(self, tps: list[TP]) -> None:
        log.info("partitions assigned: %s", _fmt(tps))

    def _on_revoke(self, tps: list[TP]) -> None:
        """Runs on the kafka thread: finish the revoked partitions' work, commit, let go."""
        log.info("partitions revoked: %s", _fmt(tps))
        assert self._loop is not None and self.source is not None
        future = asyncio.run_coroutine_threadsafe(self._release(set(tps), wait=True), self._loop)
        try:
            future.result(timeout=self.s.shutdown_timeout_s + 5)
        except Exception as exc:
            log.error("releasing revoked partitions failed: %s", exc)
        positions = {tp: pos for tp, pos in self.tracker.positions(tps).items()}
        try:
            self.source.commit_now(positions)
            self.tracker.mark_committed(positions)
        except Exception as exc:
            log.warning("commit on revoke failed: %s", exc)
        self.tracker.forget(tps)

    def _on_lost(self, tps: list[TP]) -> None:
        log.warning("partitions lost (group membership expired): %s", _fmt(tps))
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self._release(set(tps), wait=False), self._loop)
        try:
            future.result(timeout=30)
        except Exception as exc:
            log.error("releasing lost partitions failed: %s", exc)
        self.tracker.forget(tps)

    async def _release(self, tps: set[TP], wait: bool) -> None:
        """Drop what is buffered for ``tps``; let their in-flight batches finish (or cancel)."""
        self.batcher.drop(tps)
        kept: deque[Batch] = deque()
        for batch in self.waiting:
            if tps.isdisjoint(batch.covered()):
                kept.append(batch)
            elif (rest := _without(batch, tps)) is not None:
                kept.append(rest)  # a batch sent back by an earlier rebalance may be parked
        self.waiting = kept
        touching = [t for t, f in self.in_flight.items() if not tps.isdisjoint(f.covers)]
        if wait and touching:
            await asyncio.wait(touching, timeout=self.s.shutdown_timeout_s)
        for task in touching:
            if not task.done():
                flight = self.in_flight[task]
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                # Records of partitions we keep go out again; the revoked ones are re-consumed.
                retry = _without(flight.batch, tps)
                if retry is not None:
                    self.waiting.appendleft(retry)
        for task in [t for t in self.side_tasks if not t.done()]:
            await asyncio.wait([task], timeout=5)

    # ------------------------------------------------------------------ flow control
    def _buffered_bytes(self) -> int:
        return (
            self.batcher.buffered_bytes
            + sum(b.nbytes for b in self.waiting)
            + sum(f.batch.nbytes for f in self.in_flight.values())
        )

    async def _apply_backpressure(self) -> None:
        assert self.source is not None
        records = self.tracker.unresolved() - self._parked()  # parked: not in memory
        nbytes = self._buffered_bytes()
        full = records >= self.s.max_buffered_records or nbytes >= self.s.max_buffered_bytes
        low = records < self.s.max_buffered_records // 2 and nbytes < self.s.max_buffered_bytes // 2
        if full and not self.backpressure:
            self.backpressure = True
            log.info(
                "backpressure: pausing partitions (%d records, %d bytes buffered)", records, nbytes
            )
        elif self.backpressure and low:
            self.backpressure = False
            log.info("backpressure released: resuming partitions")
        should_pause = self.backpressure or not self.active
        self.source.pause_new = should_pause
        if should_pause:
            await self.source.pause(self.source.assignment)
        elif self.source.paused:
            await self.source.resume(list(self.source.paused))

    # ------------------------------------------------------------------ activation
    def set_active(self, active: bool) -> None:
        """Deactivated: consume nothing and send nothing, keep the group membership and
        the committed position; batches already in flight finish."""
        if active != self.active:
            log.info("sink %s", "activated" if active else "deactivated")
        self.active = active
        self.metrics.active.set(1 if active else 0)

    def _parked(self) -> int:
        """Records of bulk jobs in progress, dropped from memory (see sink/replay.py)."""
        return sum(f.batch.size for f in self.in_flight.values() if f.batch.parked is not None)

    def update_gauges(self) -> None:
        self.metrics.in_flight.set(len(self.in_flight))
        self.metrics.parked.set(self._parked())
        self.metrics.buffered.set(self.tracker.unresolved())
        self.metrics.paused.set(1 if self.backpressure else 0)
        self.metrics.healthy.set(1 if self.health.ok else 0)
        if self.source is not None:
            self.metrics.assigned.set(len(self.source.assignment))

    def _on_kafka_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self.health.fail("kafka", str(err))
        log.warning("kafka: %s", err)
        if err.fatal() and self._loop is not None:
            self._fatal = RuntimeError(f"fatal Kafka error: {err}")
            self._loop.call_soon_threadsafe(self._stop.set)


def _without(batch: Batch, tps: set[TP]) -> Batch | None:
    """What of a waiting or cancelled batch must still go out once ``tps`` are revoked
    (None if nothing): the kept partitions' records, or their offsets if the records are
    parked, and every kept offset it answers for."""
    kept = {tp: offs for tp, offs in batch.covered().items() if tp not in tps}
    if not kept:
        return None
    retry = Batch(id=batch.id + "-r", group=batch.group, covers=kept)
    if batch.parked is not None:
        retry.parked = {tp: offs for tp, offs in batch.parked.items() if tp not in tps}
        retry.key_set, retry.shown_keys = batch.key_set, batch.shown_keys
    else:
        retry.records = [r for r in batch.records if (r.topic, r.partition) not in tps]
        retry.nbytes = sum(r.nbytes for r in retry.records)
    return retry


def _fmt(tps: Iterable[TP]) -> str:
    # Cooperative rebalancing has rounds that assign nothing: say so rather than print "".
    return ", ".join(f"{t}[{p}]" for t, p in sorted(tps)) or "(none)"
