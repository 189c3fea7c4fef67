"""Review r1: an initial load's held closing call (sink/flow.py with sink/last_batch.py)
when several entities (topics) close in one sink, without Kafka or HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from confluent_kafka import Message

from sink.batching import Batcher
from sink.flow import ConcurrencyLimit, Dispatcher, Pace
from sink.last_batch import LastBatch
from sink.offsets import OffsetTracker
from sink.records import Batch, message_offsets


class FakeSource:
    """What LastBatch reads of the consumer: every partition read to the end of what
    the tracker has seen."""

    def __init__(self, topics: dict[str, int], tracker: OffsetTracker) -> None:
        self.settings = SimpleNamespace(kafka_topics=list(topics))
        self.partition_counts = dict(topics)
        self.assignment = {(t, p) for t, n in topics.items() for p in range(n)}
        self.positions: dict[tuple[str, int], int] = {}
        self.tracker = tracker

    def cached_high_watermark(self, tp: tuple[str, int]) -> int | None:
        return max(0, self.tracker.consumed_to(tp))

    def read_to_end(self, tp: tuple[str, int], consumed_to: int, strict: bool = False) -> bool:
        return True


class Api:
    def __init__(self) -> None:
        self.started: list[Batch] = []
        self.gates: dict[int, asyncio.Event] = {}

    async def deliver(self, batch: Batch, on_sent: Callable[[], None]) -> None:
        self.started.append(batch)
        await self.gates.setdefault(id(batch), asyncio.Event()).wait()
        on_sent()

    def release_all(self) -> None:
        for batch in self.started:
            self.gates.setdefault(id(batch), asyncio.Event()).set()


class Sink:
    def __init__(self, topics: dict[str, int], lanes: int = 1, batch_size: int = 100) -> None:
        self.tracker = OffsetTracker()
        self.batcher = Batcher(
            max_records=batch_size, max_bytes=1_000_000, linger_s=0.0, group_of=None,
            lanes=lanes,
        )  # fmt: skip
        self.api = Api()
        limit = ConcurrencyLimit(16)
        limit.current = 16
        self.flow = Dispatcher(
            self.batcher, limit, Pace(1e6), self.api.deliver, self.prepare, self.finished
        )
        self.last = LastBatch("auto", True, self.batcher, self.flow, self.tracker, lambda t: t)
        self.last.source = FakeSource(topics, self.tracker)  # type: ignore[assignment]
        self.closing: list[Batch] = []

    def prepare(self, batch: Batch) -> None:
        batch.is_last = self.last.now(batch)
        batch.covers = batch.covered()

    def finished(self, batch: Batch, task: Any) -> None:
        assert batch.covers is not None
        for tp, offsets in batch.covers.items():
            self.tracker.resolve_many(tp, offsets)
        if batch.is_last:
            self.closing.append(batch)
        self.last.accepted(batch)

    def feed(self, messages: list[Message]) -> None:
        for tp, offs in message_offsets(messages).items():
            self.tracker.track_many(tp, offs)
        closed, _ = self.batcher.add_messages(messages, [m.offset() for m in messages])
        self.flow.add(closed)


def msg(topic: str, partition: int, offset: int, key: str) -> Message:
    return Message(
        topic=topic, partition=partition, offset=offset, key=key.encode(),
        value=b'{"id":"%s-%d-%d"}' % (topic.encode(), partition, offset),
    )  # fmt: skip


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def drive(sink: Sink, rounds: int = 20) -> None:
    for _ in range(rounds):
        sink.flow.pump()
        await settle()
        sink.api.release_all()
        await settle()


async def test_two_entities_closing_in_one_cut_lose_neither_closing_call() -> None:
    """Entities a and b, two partitions each, one record per partition, cut together:
    each entity's second batch is its closing call and waits for the first. The second
    held batch took the place of the first: a's closing call was never sent, its lane
    stayed busy for good and its offset was never resolved (nothing committed past it,
    and `run --until-drained` never ends)."""
    sink = Sink({"a": 2, "b": 2})
    sink.feed([msg("a", 0, 0, "k"), msg("a", 1, 0, "k"), msg("b", 0, 0, "k"), msg("b", 1, 0, "k")])
    await drive(sink)
    sent = sorted((b.lanes[0][:2]) for b in sink.api.started)
    assert sent == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert sink.tracker.unresolved() == 0
    assert sorted(b.lanes[0][0] for b in sink.closing) == ["a", "b"]  # each closed once


async def test_a_held_closing_call_does_not_crash_pump_with_a_merged_call_behind_it() -> None:
    """a's closing call is cut ahead of a merged call of b (two lanes of one partition):
    the hold broke out of pump and queued the merged call, which has two lanes: the
    `one lane to queue in` assertion crashed the sink."""
    sink = Sink({"a": 1, "b": 1}, lanes=2)
    lane = sink.batcher.lane_of
    ka = next(k for k in (f"k{i}" for i in range(50)) if lane("a", 0, k.encode(), 0)[2] == 0)
    kb = next(k for k in (f"k{i}" for i in range(50)) if lane("a", 0, k.encode(), 0)[2] == 1)
    sink.feed([msg("a", 0, 0, ka)])
    sink.flow.pump()  # a's first call, in flight
    await settle()
    assert len(sink.api.started) == 1
    # a's other lane (its last record: the closing call), then b's two lanes (merged).
    sink.feed([msg("a", 0, 1, kb), msg("b", 0, 0, ka), msg("b", 0, 1, kb)])
    sink.flow.pump()
    await settle()
    assert any(b.lanes[0][0] == "b" for b in sink.api.started)
    await drive(sink)
    assert sink.tracker.unresolved() == 0


async def test_a_held_closing_call_does_not_block_another_entitys_calls() -> None:
    """a's closing call waits for a's first call (a bulk job can take minutes): b's
    records, which have nothing to do with a's load, must not wait with it."""
    sink = Sink({"a": 2, "b": 1})
    sink.feed([msg("a", 0, 0, "k"), msg("a", 1, 0, "k")])
    sink.flow.pump()
    await settle()
    assert len(sink.api.started) == 1 and sink.flow.held  # a's close waits for a[0]
    sink.feed([msg("b", 0, 0, "k")])
    sink.flow.pump()
    await settle()
    assert [b.lanes[0][0] for b in sink.api.started] == ["a", "b"]
    await drive(sink)
    assert sink.tracker.unresolved() == 0


async def test_a_revoke_drops_only_the_held_closing_call_of_its_partitions() -> None:
    sink = Sink({"a": 2, "b": 2})
    sink.feed([msg("a", 0, 0, "k"), msg("a", 1, 0, "k"), msg("b", 0, 0, "k"), msg("b", 1, 0, "k")])
    sink.flow.pump()
    await settle()
    assert sorted(b.lanes[0][0] for b in sink.flow.held) == ["a", "b"]
    (held_a,) = [b for b in sink.flow.held if b.lanes[0][0] == "a"]
    sink.flow.drop({held_a.lanes[0][:2]})
    assert [b.lanes[0][0] for b in sink.flow.held] == ["b"]
    assert held_a.lanes[0] not in sink.flow.busy
    assert sink.flow.held_bytes() >= sink.flow.held[0].nbytes and sink.flow.waiting_work()
