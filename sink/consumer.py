"""The Kafka consumer, driven from asyncio through one dedicated thread.

librdkafka calls block, so every consumer call runs on a single worker thread: calls are
serialised, the event loop never blocks, and rebalance callbacks (served inside
``consume``) run on that thread too, where they may block while the loop finishes work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from sink import kafka_config
from sink.config import Settings
from sink.health import Health
from sink.offset_commits import COMMIT_WAIT_S, Commits

log = logging.getLogger(__name__)
TP = tuple[str, int]
# The errors that say a broker cannot be reached: the state goes to /readyz and to the
# log as one outage (sink/outage.py), each error only to DEBUG. librdkafka reports one
# per connection attempt of every client, some 40 a second while the broker is away.
UNREACHABLE = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE})
RebalanceHook = Callable[[list[TP]], None]
PROBE_EVERY_S = 2.0
PROBE_TIMEOUT_S = 1.0


def consumer_config(
    settings: Settings, error_cb: Callable[[KafkaError], None] | None = None, group: bool = True
) -> dict[str, Any]:
    # The properties are sink/kafka_config.py's; the callbacks are this module's.
    conf: dict[str, Any] = {
        **kafka_config.consumer(settings, group),
        "logger": logging.getLogger("librdkafka"),
    }
    if error_cb is not None:
        conf["error_cb"] = error_cb
    return conf


def kafka_error_handler(
    health: Health, on_fatal: Callable[[str], None]
) -> Callable[[KafkaError], None]:
    """The consumer's ``error_cb`` (called on the kafka thread)."""

    def on_error(err: KafkaError) -> None:
        if err.code() in UNREACHABLE:
            health.fail("kafka", err.str())
            log.debug("kafka: %s", err)
            return
        log.warning("kafka: %s", err)
        if err.fatal():
            on_fatal(f"fatal Kafka error: {err}")

    return on_error


def close_within(consumer: Consumer, timeout_s: float) -> bool:
    """``consumer.close()`` on a thread of its own, waited for ``timeout_s`` at most:
    close() waits for the broker (to commit, to leave the group) as long as it takes.
    False if it was given up: the thread is left blocked, and the process may exit
    without it (it is a daemon)."""
    closer = threading.Thread(target=consumer.close, name="kafka-close", daemon=True)
    closer.start()
    closer.join(timeout_s)
    return not closer.is_alive()


class KafkaSource:
    def __init__(
        self,
        settings: Settings,
        error_cb: Callable[[KafkaError], None],
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.health = health  # its "kafka" state: commits wait while the broker is away
        self._next_probe = 0.0
        self.cooperative = settings.kafka_assignment_strategy == "cooperative-sticky"
        conf = consumer_config(settings, error_cb)
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kafka")
        self.commits = Commits(self._call, health)
        self._consumer = Consumer({**conf, "on_commit": self.commits.on_commit})
        self.commits.consumer = self._consumer
        self._polled_at = time.monotonic()  # when the last poll returned
        self.assignment: set[TP] = set()
        self.paused: set[TP] = set()
        self.pause_new = False  # pause partitions as soon as they are assigned (inactive)
        self.mid_rebalance = False
        self.partition_counts: dict[str, int] = {}  # as of the last partitions_of_topics()
        # Each assigned partition's next offset to read after the last poll whose messages
        # the sink has handled (settle_positions): past transaction markers, which no poll
        # returns (sink/offsets.py advance, sink/last_batch.py).
        self.positions: dict[TP, int] = {}
        self._polled: dict[TP, int] = {}
        # Each partition's end offset as of the last poll, read on the Kafka thread: a
        # cached get_watermark_offsets() is no broker round trip, but it waits for the
        # client's lock, and a synchronous commit to a broker that is gone held that for
        # over 5 s (py-spy, tests/integration/test_broker_outage.py): read on the event
        # loop, it froze /readyz and every call in flight.
        self._highs: dict[TP, int] = {}

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: fn(*args, **kwargs))

    def subscribe(
        self, on_assign: RebalanceHook, on_revoke: RebalanceHook, on_lost: RebalanceHook
    ) -> None:
        def assigned(consumer: Consumer, parts: list[TopicPartition]) -> None:
            tps = [(p.topic, p.partition) for p in parts]
            if self.cooperative:
                consumer.incremental_assign(parts)
            else:
                consumer.assign(parts)
            self.assignment.update(tps)
            # An empty round of a cooperative rebalance: a second round follows.
            self.mid_rebalance = self.cooperative and not parts
            if self.pause_new and parts:
                consumer.pause(parts)
                self.paused.update(tps)
            on_assign(tps)

        def revoked(consumer: Consumer, parts: list[TopicPartition]) -> None:
            tps = [(p.topic, p.partition) for p in parts]
            on_revoke(tps)
            self._drop(consumer, parts, tps)

        def lost(consumer: Consumer, parts: list[TopicPartition]) -> None:
            tps = [(p.topic, p.partition) for p in parts]
            on_lost(tps)
            self._drop(consumer, parts, tps)

        self._consumer.subscribe(
            self.settings.kafka_topics, on_assign=assigned, on_revoke=revoked, on_lost=lost
        )

    def _drop(self, consumer: Consumer, parts: list[TopicPartition], tps: list[TP]) -> None:
        if self.cooperative:
            consumer.incremental_unassign(parts)
        else:
            consumer.unassign()
        self.assignment.difference_update(tps)
        self.paused.difference_update(tps)

    async def consume(self, max_messages: int, timeout_s: float) -> list[Message]:
        def poll() -> list[Message]:
            msgs: list[Message] = self._consumer.consume(max_messages, timeout_s)
            if self.assignment:
                self._highs = self._read_highs()
            # Those of the partitions assigned now (a revoke runs inside consume()): a
            # position of a partition given away must never be committed.
            tps = [TopicPartition(*tp) for tp in self.assignment]
            got = self._consumer.position(tps) if tps else []
            self._polled = {(p.topic, p.partition): p.offset for p in got if p.offset >= 0}
            return msgs

        gap = time.monotonic() - self._polled_at
        polled: list[Message] = await self._call(poll)
        self._polled_at = time.monotonic()
        self.commits.polled(gap)  # a commit's answer comes with a poll
        if self.health is not None and self.health.down("kafka"):
            await self._probe()
        return polled

    def commit_pending(self) -> bool:
        """An asynchronous commit still waits for its answer."""
        return self.commits.pending()

    def settle_positions(self) -> None:
        """The positions as of the last poll count from now: its messages are handled.
        (librdkafka's position moves as soon as a poll takes messages, before the sink
        has them: read then, it let an initial load close with records still unread.)"""
        self.positions = self._polled

    async def _probe(self) -> None:
        """While the broker is unreachable, ask it for metadata every PROBE_EVERY_S: the
        outage ends when it answers, even with no record to consume and none to commit
        (those end it too, in sink/intake.py and sink/committer.py)."""
        now = time.monotonic()
        if now < self._next_probe or self.health is None:
            return
        self._next_probe = now + PROBE_EVERY_S
        try:
            await self._call(self._consumer.list_topics, timeout=PROBE_TIMEOUT_S)
        except KafkaException as exc:
            log.debug("kafka still unreachable: %s", exc)
            return
        self.health.clear("kafka")

    def commit_now(self, positions: dict[TP, int]) -> None:
        """Synchronous commit, for the kafka thread itself (rebalance callbacks)."""
        self.commits.now(positions)

    async def commit(self, positions: dict[TP, int]) -> None:
        """Commit ``positions``, waiting COMMIT_WAIT_S at most (sink/offset_commits.py)."""
        await self.commits.commit(positions)

    async def commit_async(self, positions: dict[TP, int]) -> asyncio.Future[None]:
        """Ask for a commit of ``positions``; the future settles with the broker's answer,
        which consume() serves (sink/offset_commits.py)."""
        return await self.commits.ask(positions)

    async def answer_pending(self, timeout_s: float) -> None:
        """At a stop, once the main loop has ended: poll, every partition paused, until the
        pending asynchronous commit has its answer. Whatever such a poll returns is
        dropped, never tracked, so no commit passes it (read again by the next owner);
        the main loop must not poll after this."""

        def waiting() -> bool:  # (no answer is coming soon from a broker that is away)
            return self.commit_pending() and not (self.health and self.health.down("kafka"))

        if waiting():
            await self._poll_paused(waiting, min(timeout_s, COMMIT_WAIT_S))

    async def pause(self, tps: Iterable[TP]) -> None:
        todo = [tp for tp in tps if tp in self.assignment and tp not in self.paused]
        if todo:
            await self._call(self._consumer.pause, [TopicPartition(t, p) for t, p in todo])
            self.paused.update(todo)

    async def resume(self, tps: Iterable[TP]) -> None:
        todo = [tp for tp in tps if tp in self.paused]
        if todo:
            await self._call(self._consumer.resume, [TopicPartition(t, p) for t, p in todo])
            self.paused.difference_update(todo)

    async def partitions_of_topics(self, timeout_s: float = 5.0) -> int | None:
        """How many partitions the subscribed topics have (what the whole group shares),
        from the broker's metadata; None if it cannot say within ``timeout_s``. Never
        from a rebalance callback: a consumer call made inside one aborts the process."""

        def query() -> int | None:
            try:
                topics = self._consumer.list_topics(timeout=timeout_s).topics
            except KafkaException as exc:
                away = self.health is not None and self.health.down("kafka")
                log.log(
                    logging.DEBUG if away else logging.WARNING, "reading topic metadata: %s", exc
                )
                return None
            wanted = self.settings.kafka_topics
            counts = {t: len(topics[t].partitions) for t in wanted if t in topics}
            self.partition_counts = counts  # per topic, for sink/last_batch.py
            return sum(counts.values()) or None

        total: int | None = await self._call(query)
        return total

    def _read_highs(self) -> dict[TP, int]:
        """The assigned partitions' end offsets as of their last fetch (Kafka thread)."""
        highs: dict[TP, int] = {}
        for tp in self.assignment:
            try:
                _low, high = self._consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)
            except KafkaException:
                continue
            if high >= 0:
                highs[tp] = int(high)
        return highs

    def cached_high_watermark(self, tp: TP) -> int | None:
        """The partition's end offset as of the last poll (no call into the client)."""
        return self._highs.get(tp)

    def read_to_end(self, tp: TP, consumed_to: int, strict: bool = False) -> bool:
        """Whether ``tp`` is read to its end as of the last poll: ``consumed_to`` (one
        past the highest offset handled) or its position reaches its end offset. An end
        not fetched yet counts as reached, unless ``strict``."""
        high = self._highs.get(tp)
        if high is None:
            return not strict
        return high <= 0 or max(consumed_to, self.positions.get(tp, -1)) >= high

    async def end_offsets(self, tps: list[TP]) -> dict[TP, tuple[int, int]]:
        def query() -> dict[TP, tuple[int, int]]:
            out: dict[TP, tuple[int, int]] = {}
            for tp in tps:
                low, high = self._consumer.get_watermark_offsets(TopicPartition(*tp), timeout=5)
                out[tp] = (int(low), int(high))
            return out

        result: dict[TP, tuple[int, int]] = await self._call(query)
        return result

    async def committed(self, tps: list[TP]) -> dict[TP, int]:
        def query() -> dict[TP, int]:
            parts = self._consumer.committed([TopicPartition(*tp) for tp in tps], timeout=10)
            return {
                (p.topic, p.partition): (p.offset if p.offset != OFFSET_INVALID else -1)
                for p in parts
            }

        result: dict[TP, int] = await self._call(query)
        return result

    async def settle_rebalance(self, timeout_s: float) -> None:
        """Before leaving the group, let a pending cooperative round finish.

        A member that closes between the two rounds of a cooperative rebalance leaves the
        partitions being handed over without an owner until the session times out (45 s
        by default; reproduced with a bare confluent-kafka consumer). Polling with every
        partition paused lets the round complete; nothing is consumed meanwhile.
        """
        await self._poll_paused(lambda: self.mid_rebalance, timeout_s)

    async def _poll_paused(self, waiting: Callable[[], bool], timeout_s: float) -> None:
        """Poll with every partition paused (it serves callbacks and returns no records)
        while ``waiting()`` says so, ``timeout_s`` at most."""
        self.pause_new = True
        await self.pause(self.assignment)
        deadline = time.monotonic() + timeout_s
        while waiting() and time.monotonic() < deadline:
            await self.consume(100, 0.1)

    async def close(self, timeout_s: float = 10) -> bool:
        """Leave the group and close the consumer within ``timeout_s``. False if that
        could not be done in time (the broker away): the consumer and its thread are
        then left as they are, for the process to exit without them; the group sees the
        member go when its session times out."""
        deadline = time.monotonic() + timeout_s
        try:
            await asyncio.wait_for(self._call(self._leave, min(10.0, timeout_s)), timeout_s)
            # close() itself is not bounded: give up waiting for it, not the wait.
            left = max(0.0, deadline - time.monotonic())
            await asyncio.wait_for(self._call(self._consumer.close), left)
        except TimeoutError:
            log.error(
                "the Kafka consumer did not close within %.1f s (broker unreachable?): "
                "given up; the group will reassign its partitions after the session timeout",
                timeout_s,
            )
            self._thread.shutdown(wait=False)
            return False
        self._thread.shutdown(wait=True)
        return True

    def _leave(self, timeout_s: float) -> None:
        """Leave the group before closing: close() can hang for good when a rebalance
        reaches the consumer while it closes (the unassign made from the callback that
        close() serves waits for a reply that never comes: librdkafka #4884, open; seen
        here when a second member left as this one stopped). The known workaround:
        unsubscribe, and poll until the assignment is gone, so that close() has nothing
        left to rebalance. Records polled meanwhile are dropped: never tracked, never
        committed, their partitions' next owner reads them."""
        consumer = self._consumer
        try:
            if self.assignment:
                consumer.pause([TopicPartition(t, p) for t, p in self.assignment])
            consumer.unsubscribe()
            deadline = time.monotonic() + timeout_s
            while self.assignment and time.monotonic() < deadline:
                consumer.consume(100, 0.1)  # serves the revocation
        except KafkaException as exc:
            log.warning("leaving the consumer group before closing: %s", exc)


__all__ = ["KafkaSource", "Message", "consumer_config"]
