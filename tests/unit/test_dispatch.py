"""Order per key with parallelism: lanes, the concurrency limit and the pace, without
Kafka or HTTP (sink/flow.py)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from confluent_kafka import Message

from sink.batching import Batcher, grouping_function
from sink.flow import Backpressure, ConcurrencyLimit, Dispatcher, Pace
from sink.records import Batch, SinkRecord


class HeldDelivery:
    """Stands in for the API: each batch waits until the test releases it. ``seen`` is
    the order in which records reach the API (a batch's records at its start)."""

    def __init__(self) -> None:
        self.started: list[Batch] = []
        self.seen: list[SinkRecord] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.most_in_flight = 0
        self.in_flight = 0

    async def deliver(self, batch: Batch, on_sent: Callable[[], None]) -> None:
        self.started.append(batch)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        gate = self.gates.setdefault(batch.id, asyncio.Event())
        await gate.wait()
        self.seen.extend(batch.records)
        self.in_flight -= 1
        on_sent()

    def release(self, batch: Batch) -> None:
        self.gates.setdefault(batch.id, asyncio.Event()).set()

    def names(self) -> list[str]:
        return [b.id for b in self.started]


def msgs(spec: list[tuple[int, str | None]], partition: int = 0) -> list[Message]:
    """Messages at the given offsets with the given keys."""
    return [
        Message(topic="t", partition=partition, offset=o, key=k.encode() if k else None,
                value=b'{"id":%d}' % o)
        for o, k in spec
    ]  # fmt: skip


def dispatcher(
    max_in_flight: int = 8, lanes: int = 64, batch_size: int = 2, rate: float = 1e6
) -> tuple[Dispatcher, Batcher, HeldDelivery, list[Batch]]:
    batcher = Batcher(
        max_records=batch_size, max_bytes=1_000_000, linger_s=1000.0, group_of=None, lanes=lanes
    )
    held = HeldDelivery()
    finished: list[Batch] = []
    limit = ConcurrencyLimit(max_in_flight)
    limit.current = max_in_flight
    flow = Dispatcher(
        batcher, limit, Pace(rate), held.deliver, lambda b: None,
        lambda b, t: finished.append(b),
    )  # fmt: skip
    return flow, batcher, held, finished


def feed(flow: Dispatcher, batcher: Batcher, messages: list[Message]) -> None:
    closed, refused = batcher.add_messages(messages, [m.offset() for m in messages])
    assert refused == []
    flow.add(closed)
    flow.pump()


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_lane_sends_one_batch_at_a_time_in_order_and_other_lanes_flow() -> None:
    flow, batcher, held, _ = dispatcher(lanes=64)
    # Key A four times (two batches of its lane), keys B and C twice each.
    feed(flow, batcher, msgs([(0, "A"), (1, "B"), (2, "A"), (3, "C"), (4, "B"), (5, "C"),
                              (6, "A"), (7, "A")]))  # fmt: skip
    await settle()
    lane_of_a = batcher.lane_of("t", 0, b"A", 0)
    first = [b for b in held.started if b.lane == lane_of_a]
    assert len(first) == 1 and [r.offset for r in first[0].records] == [0, 2]
    assert len(held.started) == 3  # A's first batch, B's and C's: three calls at once
    held.release(first[0])
    await settle()
    second = [b for b in held.started if b.lane == lane_of_a]
    assert [[r.offset for r in b.records] for b in second] == [[0, 2], [6, 7]]


async def test_capacity_follows_the_concurrency_limit() -> None:
    flow, batcher, held, _ = dispatcher(max_in_flight=2, batch_size=1)
    feed(flow, batcher, msgs([(i, f"k{i}") for i in range(5)]))
    await settle()
    assert len(held.started) == 2
    flow.limit.pushback()  # a 503: halve
    held.release(held.started[0])
    await settle()
    assert len(held.started) == 2  # one in flight is now the limit
    held.release(held.started[1])
    await settle()
    assert len(held.started) == 3


def test_the_limit_grows_while_batches_wait_for_a_slot_and_never_past_its_bound() -> None:
    limit = ConcurrencyLimit(20)
    assert limit.current == 8
    for _ in range(100):
        limit.wanted = True
        limit.success()
    assert limit.current == 20
    limit.pushback()
    assert limit.current == 10
    limit.success()  # nothing waited for a slot: no growth
    assert limit.current == 10


async def test_the_pace_holds_batches_back_and_they_keep_filling() -> None:
    flow, batcher, held, _ = dispatcher(batch_size=3, rate=20.0)  # 51 ms apart
    batcher.linger_s = 0.0
    feed(flow, batcher, msgs([(0, "A")], partition=0) + msgs([(1, "B")], partition=1))
    await settle()
    assert len(held.started) == 1  # the second waits for the pace...
    feed(flow, batcher, msgs([(2, "B")], partition=1))  # ...and takes this record meanwhile
    await asyncio.sleep(0.08)
    await settle()
    assert [[r.offset for r in b.records] for b in held.started] == [[0], [1, 2]]


async def test_lingered_batches_of_one_partition_merge_into_full_calls() -> None:
    """Thin traffic over many keys: each lane holds a record or two when the linger
    passes; they leave as one call per partition, holding all their lanes meanwhile."""
    flow, batcher, held, _ = dispatcher(batch_size=100, lanes=64)
    batcher.linger_s = 0.0
    feed(flow, batcher, msgs([(i, f"key{i}") for i in range(150)]))
    await settle()
    first, second = held.started  # whole lanes, as many as fit in 100 records
    assert first.count >= 95 and first.count + second.count == 150
    assert not set(first.lanes) & set(second.lanes)
    assert len(first.lanes) + len(second.lanes) == len({batcher.lane_of("t", 0, b"key%d" % i, i)
                                                         for i in range(150)})  # fmt: skip
    offsets = [r.offset for r in first.records]
    assert offsets == sorted(offsets)  # a merged call reads in offset order
    assert first.covered() == {("t", 0): offsets}  # ascending, as the tracker needs
    feed(flow, batcher, msgs([(150, "key0")]))  # its lane waits for the first call's answer
    await settle()
    assert len(held.started) == 2
    held.release(first)
    held.release(second)
    await settle()
    batcher.linger_s = 0.0
    flow.pump()
    await settle()
    assert [r.offset for r in held.started[-1].records] == [150]


async def test_deactivated_sends_nothing() -> None:
    flow, batcher, held, _ = dispatcher(batch_size=1)
    flow.active = False
    feed(flow, batcher, msgs([(0, "A")]))
    await settle()
    assert held.started == []
    flow.active = True
    flow.pump()
    await settle()
    assert len(held.started) == 1


async def test_random_keys_answers_in_any_order_keep_every_key_in_offset_order() -> None:
    """200 keys, a hot one, answers in random order: the API sees each key's records in
    offset order, and many calls are in flight, not one."""
    rng = random.Random(7)
    flow, batcher, held, finished = dispatcher(max_in_flight=16, lanes=64, batch_size=10)
    keys = [f"k{i}" for i in range(200)]
    offset = {0: 0, 1: 0}
    total = 0
    for _ in range(30):
        for partition in (0, 1):
            spec = []
            for _ in range(rng.randint(1, 80)):
                key = "hot" if rng.random() < 0.2 else rng.choice(keys)
                spec.append((offset[partition], key))
                offset[partition] += 1
            total += len(spec)
            feed(flow, batcher, msgs(spec, partition))
        await settle()
        for batch in rng.sample(held.started, k=len(held.started) // 2):
            held.release(batch)
        await settle()
    flow.add(batcher.flush())
    while len(held.seen) < total:
        flow.pump()
        for batch in list(held.started):
            held.release(batch)
        await settle()
    assert len(held.seen) == total and len(finished) == len(held.started)
    last: dict[tuple[int, bytes | None], int] = {}
    for m in held.seen:
        key = (m.partition, m.key)
        assert last.get(key, -1) < m.offset, f"{key} went out of order"
        last[key] = m.offset
    assert held.most_in_flight == 16


def test_backpressure_pauses_only_the_partition_over_its_share() -> None:
    bp = Backpressure(max_records=1000, max_bytes=10_000_000)
    held = {("t", 0): 600, ("t", 1): 10}
    assert bp.update(held, 0) == {("t", 0)}  # its share is 500: the other flows on
    assert bp.update({("t", 0): 300, ("t", 1): 10}, 0) == {("t", 0)}  # not below half yet
    assert bp.update({("t", 0): 200, ("t", 1): 10}, 0) == set()
    assert bp.update({("t", 0): 1, ("t", 1): 1}, 20_000_000) == {("t", 0), ("t", 1)}


def test_a_partition_with_a_share_of_one_record_resumes_once_it_holds_none() -> None:
    # 100 records over 64 partitions: a share of 1, whose half is 0. It never resumed.
    bp = Backpressure(max_records=100, max_bytes=10_000_000)
    held = {("t", p): 0 for p in range(64)}
    assert bp.update(held | {("t", 0): 1}, 0) == {("t", 0)}
    assert bp.update(held, 0) == set()


def test_attribute_grouping_lanes_work_with_groups() -> None:
    b = Batcher(max_records=2, max_bytes=10_000, linger_s=1.0, lanes=4,
                group_of=grouping_function("key", None))  # fmt: skip
    assert b.needs_data


def test_a_merged_call_takes_the_head_of_a_lane_that_does_not_fit_whole() -> None:
    """Two lanes of 62 records each, batches of 100: one call of 100 (the second lane's
    head), then the rest of that lane, in order."""
    b = Batcher(max_records=100, max_bytes=1_000_000, linger_s=0.0, group_of=None, lanes=2)
    keys = [k for k in (b"k%d" % i for i in range(50)) if b.lane_of("t", 0, k, 0)[2] == 0][:1]
    keys += [k for k in (b"k%d" % i for i in range(50)) if b.lane_of("t", 0, k, 0)[2] == 1][:1]
    spec = [(i, keys[i % 2].decode()) for i in range(124)]
    closed, _ = b.add_messages(msgs(spec), list(range(124)))
    assert closed == []
    (call,) = b.due(limit=1)
    assert call.count == 100 and len(call.lanes) == 2
    assert [r.offset for r in call.records] == sorted(r.offset for r in call.records)
    (rest,) = b.due()
    assert rest.count == 24 and rest.lanes == (call.lanes[1],)
    first_of_rest = rest.records[0].offset
    assert all(r.offset < first_of_rest for r in call.records if r.key == rest.records[0].key)
    assert b.buffered_records == 0 and b.buffered_bytes == 0


def test_a_lane_split_for_a_merged_call_keeps_filling() -> None:
    b = Batcher(max_records=10, max_bytes=1_000_000, linger_s=0.0, group_of=None, lanes=2)
    keys = [k for k in (b"k%d" % i for i in range(50)) if b.lane_of("t", 0, k, 0)[2] == 0][:1]
    keys += [k for k in (b"k%d" % i for i in range(50)) if b.lane_of("t", 0, k, 0)[2] == 1][:1]
    b.add_messages(msgs([(i, keys[i % 2].decode()) for i in range(14)]), list(range(14)))
    (call,) = b.due(limit=1)  # 7 + the head (3) of the other lane
    assert call.count == 10
    closed, _ = b.add_messages(msgs([(i, keys[1].decode()) for i in range(14, 30)]),
                               list(range(14, 30)))  # fmt: skip
    later = [*closed, *b.flush()]
    offsets = [r.offset for x in later for r in x.records]
    assert offsets == sorted(offsets) and len(offsets) == 30 - 10
    assert all(x.covered() == {("t", 0): [r.offset for r in x.records]} for x in later)


def test_a_partition_holding_a_full_call_over_many_lanes_is_cut_before_its_linger() -> None:
    """Under load 200 keys spread over many lanes fill none of them: a partition whose
    lanes hold a call's worth goes now, full; a thinner one waits for the linger."""
    b = Batcher(max_records=100, max_bytes=1_000_000, linger_s=60.0, group_of=None, lanes=64)
    spec = [(i, f"key{i % 200}") for i in range(250)]
    closed, _ = b.add_messages(msgs(spec), list(range(250)))
    assert closed == []  # no lane is full
    calls = b.due(limit=4)
    assert [c.count for c in calls] == [100, 100]  # the 50 left wait: not a full call
    assert b.buffered_records == 50
    for call in calls:
        assert [r.offset for r in call.records] == sorted(r.offset for r in call.records)
    assert b.due(limit=4) == []
    # With the limit one call at a time; another partition's thin traffic waits.
    b.add_messages(msgs([(i, "other") for i in range(10)], partition=1), list(range(10)))
    assert b.due(limit=4) == []


def test_order_by_id_spreads_one_hot_key_over_lanes_and_keeps_each_id_in_one() -> None:
    """SINK_ORDER_BY=id: a key's records with different ids go to different lanes (a hot
    key is no longer one call at a time); one id, as number or text, keeps one lane."""
    b = Batcher(max_records=100, max_bytes=1_000_000, linger_s=60.0, group_of=None, lanes=16,
                order_by="id")  # fmt: skip
    spec = [(i, "hot") for i in range(64)]
    rids: list[object] = [f"ACC{i % 32}" for i in range(64)]
    b.add_messages(msgs(spec), rids)
    calls = b.flush()
    lanes_of_id: dict[object, set[object]] = {}
    for call in calls:
        for r in call.records:
            lanes_of_id.setdefault(r.rid, set()).add(call.lane)
    assert len({call.lane for call in calls}) > 8  # one key, many lanes
    assert all(len(lanes) == 1 for lanes in lanes_of_id.values())
    assert b.lane_of("t", 0, b._order_keys([7])[0], 0) == b.lane_of("t", 0, b"7", 0)
    by_key = Batcher(max_records=100, max_bytes=1_000_000, linger_s=60.0, group_of=None,
                     lanes=16)  # fmt: skip
    by_key.add_messages(msgs(spec), rids)
    assert len({call.lane for call in by_key.flush()}) == 1


def test_a_busy_lanes_records_do_not_make_small_calls_of_the_rest() -> None:
    """A hot key's lane is busy holding 90 records; the other lanes' 20 records are not a
    full call: they wait for their linger instead of going as a call of 20."""
    b = Batcher(max_records=100, max_bytes=1_000_000, linger_s=60.0, group_of=None, lanes=64)
    hot_lane = b.lane_of("t", 0, b"hot", 0)
    spec = [(i, "hot") for i in range(90)] + [(90 + i, f"key{i}") for i in range(20)]
    b.add_messages(msgs(spec), list(range(110)))
    assert b.due(lambda lane: lane != hot_lane, limit=4) == []
    (call,) = b.due(limit=4)  # the hot lane free again: one full call
    assert call.count == 100
