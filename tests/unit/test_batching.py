from __future__ import annotations

import orjson
import pytest
from confluent_kafka import Message

from sink.batching import Batcher, grouping_function
from sink.decoding import RecordError, Shaper, record_id
from sink.records import SinkRecord, message_offsets


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rec(offset: int, data: dict, key: str | None = None, partition: int = 0) -> SinkRecord:  # type: ignore[type-arg]
    r = SinkRecord(
        "t", partition, offset, key.encode() if key else None, orjson.dumps(data), None, 0
    )
    Shaper([]).shape(r)
    return r


def message_of(r: SinkRecord) -> Message:
    """The consumed message ``r`` came from."""
    return Message(topic=r.topic, partition=r.partition, offset=r.offset, key=r.key, value=r.value)


def add(b: Batcher, r: SinkRecord) -> list:  # type: ignore[type-arg]
    return list(b.add(r, r.data))


def batcher(clock: Clock | None = None, **kw) -> Batcher:  # type: ignore[no-untyped-def]
    args = {
        "max_records": 3,
        "max_bytes": 10_000,
        "linger_s": 1.0,
        "group_of": grouping_function("size", None),
        "clock": clock or Clock(),
    }
    args.update(kw)
    return Batcher(**args)


def test_closes_at_batch_size_in_arrival_order() -> None:
    b = batcher()
    closed = [batch for i in range(7) for batch in add(b, rec(i, {"id": i}))]
    assert [[r.offset for r in x.records] for x in closed] == [[0, 1, 2], [3, 4, 5]]
    assert closed[0].id == "t-0-0-n3"
    assert b.buffered_records == 1
    assert [r.offset for r in b.flush()[0].records] == [6]
    assert b.buffered_records == 0 and b.buffered_bytes == 0


def test_linger_sends_partial_batches() -> None:
    clock = Clock()
    b = batcher(clock)
    add(b, rec(0, {"id": 0}))
    clock.now = 0.5
    assert b.due() == []
    assert b.next_deadline() == 1.0
    clock.now = 1.0
    assert [r.offset for r in b.due()[0].records] == [0]
    assert b.next_deadline() is None


def test_byte_cap_cuts_before_passing_it() -> None:
    one = rec(0, {"id": 0, "pad": "x" * 100})
    b = batcher(max_records=100, max_bytes=one.nbytes * 2 + 1)
    closed = [x for i in range(5) for x in add(b, rec(i, {"id": i, "pad": "x" * 100}))]
    assert [len(x.records) for x in closed] == [2, 2]
    assert all(x.nbytes <= one.nbytes * 2 + 1 for x in closed)


def test_record_over_the_byte_cap_is_refused() -> None:
    b = batcher(max_bytes=1024)
    with pytest.raises(RecordError) as info:
        add(b, rec(0, {"id": 0, "pad": "x" * 2000}))
    assert info.value.reason == "record-too-large"


def test_repeated_id_starts_a_new_batch_keeping_order() -> None:
    b = batcher(max_records=10)
    closed = add(b, rec(0, {"id": "A"})) + add(b, rec(1, {"id": "B"})) + add(b, rec(2, {"id": "A"}))
    assert [[r.offset for r in x.records] for x in closed] == [[0, 1]]
    assert [r.offset for r in b.flush()[0].records] == [2]


def test_grouping_by_key_keeps_keys_together() -> None:
    b = batcher(max_records=2, group_of=grouping_function("key", None))
    closed = []
    for i, key in enumerate(["a", "b", "a", "c", "b"]):
        closed += add(b, rec(i, {"id": i}, key=key))
    assert [(x.group, [r.offset for r in x.records]) for x in closed] == [
        ("a", [0, 2]),
        ("b", [1, 4]),
    ]
    assert [(x.group, len(x.records)) for x in b.flush()] == [("c", 1)]


def test_grouping_by_attribute_and_missing_attribute() -> None:
    b = batcher(max_records=2, group_of=grouping_function("attribute", "meta.type"))
    closed = []
    for i, kind in enumerate(["account", "contact", "account"]):
        closed += add(b, rec(i, {"id": i, "meta": {"type": kind}}))
    assert [(x.group, [r.offset for r in x.records]) for x in closed] == [("account", [0, 2])]
    with pytest.raises(RecordError) as info:
        add(b, rec(9, {"id": 9}))
    assert info.value.reason == "missing-group-attribute"


def test_drop_forgets_revoked_partitions_only() -> None:
    b = batcher(max_records=10)
    for i in range(4):
        add(b, rec(i, {"id": i}, partition=i % 2))
    assert b.drop({("t", 1)}) == 2
    assert [r.offset for r in b.flush()[0].records] == [0, 2]


def batches_of(closed: list, b: Batcher) -> dict:  # type: ignore[type-arg]
    """Each lane's batches in the order they closed, as a user sees them: id, records,
    size, keys and the offsets each answers for. (Lanes are independent: the order
    between two lanes' batches means nothing.)"""
    lanes: dict = {}  # type: ignore[type-arg]
    for x in [*closed, *b.flush()]:
        lanes.setdefault(x.lane, []).append(
            (x.id, [(r.offset, r.rid, r.body) for r in x.records], x.nbytes, sorted(x.keys),
             x.covered())
        )  # fmt: skip
    return lanes


@pytest.mark.parametrize("lanes", [1, 3])
@pytest.mark.parametrize("seed", range(30))
def test_a_whole_poll_batches_exactly_as_one_record_at_a_time(seed: int, lanes: int) -> None:
    """add_many (the hot path's form) against add: ids that repeat, are missing or are
    not plain, records of every size under the cap, across several polls, in one lane
    per partition or several."""
    import random

    rng = random.Random(seed)
    ids: list[object] = ["A", "B", "C", 1, 2, None, None, 3.5, True, {"x": 1}, "D", "E"]
    keys = [None, "k1", "k2", "k3", "k4"]
    records = [
        rec(
            i,
            {"id": rng.choice(ids), "pad": "x" * rng.randint(0, 300)},
            key=rng.choice(keys),
            partition=rng.randint(0, 2),
        )
        for i in range(400)
    ]
    kwargs = {
        "max_records": rng.randint(1, 40),
        "max_bytes": rng.randint(330, 3000),
        "lanes": lanes,
    }
    one, many, by_id = batcher(**kwargs), batcher(**kwargs), batcher(**kwargs)
    by_msg = batcher(**kwargs)
    expected = [x for r in records for x in add(one, r)]
    got: list = []  # type: ignore[type-arg]
    got_by_id: list = []  # type: ignore[type-arg]
    got_by_msg: list = []  # type: ignore[type-arg]
    start = 0
    while start < len(records):
        poll = records[start : start + rng.randint(1, 60)]
        closed, refused = many.add_many(poll, [r.data for r in poll])
        assert refused == []
        got += closed
        rids = [record_id(r.data, "id") for r in poll]
        closed, refused = by_id.add_many(poll, None, rids)
        assert refused == []
        got_by_id += closed
        # As the hot path calls it: the consumed messages and their ids, no records.
        msgs = list(map(message_of, poll))
        closed, refused = by_msg.add_messages(msgs, rids, message_offsets(msgs))
        assert refused == []
        got_by_msg += closed
        start += len(poll)
    want = batches_of(expected, one)
    assert len(want) == (3 * lanes if lanes == 1 else len(want))
    for lane, batches in want.items():
        for _id, held, *_ in batches:  # a lane's records: one partition, one slot per key
            for offset, *_ in held:
                r = records[offset]
                assert one.lane_of(r.topic, r.partition, r.key, r.offset) == lane
    assert batches_of(got, many) == want
    assert batches_of(got_by_id, by_id) == want
    assert batches_of(got_by_msg, by_msg) == want
    assert many.buffered_records == 0 and many.buffered_bytes == 0


def test_a_poll_with_a_record_over_the_cap_refuses_only_that_one() -> None:
    b = batcher(max_bytes=1024)
    poll = [rec(0, {"id": 0}), rec(1, {"id": 1, "pad": "x" * 2000}), rec(2, {"id": 2})]
    closed, refused = b.add_many(poll, [r.data for r in poll])
    assert closed == [] and [(r.offset, e.reason) for r, e in refused] == [(1, "record-too-large")]
    assert [r.offset for r in b.flush()[0].records] == [0, 2]
    closed, refused = b.add_many(poll, None, [0, 1, 2])
    assert [(r.offset, e.reason) for r, e in refused] == [(1, "record-too-large")]


def test_shaping_a_poll_names_each_bad_record_and_keeps_the_rest() -> None:
    poll = [
        SinkRecord("t", 0, 0, None, b'{"id": 1}', None, 0, b'{"id": 1}'),
        SinkRecord("t", 0, 1, None, b"{nope", None, 0, b"{nope"),
        SinkRecord("t", 0, 2, None, None, None, 0),
        SinkRecord("t", 0, 3, None, b"[1]", None, 0, b"[1]"),
        SinkRecord("t", 0, 4, None, b'{"id": 4}', None, 0, b'{"id": 4}'),
    ]
    shaped, datas, rejected = Shaper([]).shape_many(poll)
    assert [r.offset for r in shaped] == [0, 4] and datas == [{"id": 1}, {"id": 4}]
    assert [(r.offset, e.reason) for r, e in rejected] == [
        (1, "invalid-json"),
        (2, "null-value"),
        (3, "not-an-object"),
    ]
    good = poll[:1] + poll[4:]
    assert Shaper([]).shape_many(good) == (good, [{"id": 1}, {"id": 4}], [])


def test_a_batch_of_messages_makes_records_only_when_asked() -> None:
    """The hot path's batch holds the consumed messages: its body, keys, offsets and
    parking read them; records appear, with their ids, only when something needs them."""
    b = batcher(max_records=10)
    msgs = [
        Message(topic="t", partition=0, offset=10 + i, key=f"k{i % 3}".encode(), value=v)
        for i, v in enumerate([b'{"id":"a"}', b'{"id":"b"}', b'{"id":"c"}', b'{"id":"d"}'])
    ]
    closed, refused = b.add_messages(msgs, ["a", "b", "c", "d"])
    assert closed == [] and refused == []
    (batch,) = b.flush()
    assert batch.id == "t-0-10-n4" and batch.count == batch.size == 4
    assert batch.lane == ("t", 0, 0)
    assert batch.bodies() == [m.value() for m in msgs] and batch.nbytes == 40
    assert batch.keys == {b"k0", b"k1", b"k2"} and batch.first_keys() == [b"k0", b"k1", b"k2"]
    assert batch.covered() == {("t", 0): [10, 11, 12, 13]}
    batch.covers = batch.covered()
    batch.park()
    assert batch.count == 0 and batch.size == 4 and batch.parked == batch.covers
    assert repr(batch) == "Batch(id='t-0-10-n4', group='', records=4 parked, nbytes=0)"
    assert [(r.partition, r.first, r.last) for r in batch.ranges()] == [(0, 10, 13)]
    fresh = batcher(max_records=10)
    fresh.add_messages(msgs, ["a", "b", "c", "d"])
    (other,) = fresh.flush()
    assert [(r.offset, r.rid, r.body, r.key) for r in other.records] == [
        (10, "a", b'{"id":"a"}', b"k0"),
        (11, "b", b'{"id":"b"}', b"k1"),
        (12, "c", b'{"id":"c"}', b"k2"),
        (13, "d", b'{"id":"d"}', b"k0"),
    ]
    assert other.count == 4 and other.bodies() == [m.value() for m in msgs]


def test_a_batch_never_spans_partitions_or_lanes() -> None:
    """Records of two partitions, or of keys in two lanes, never share a batch: a batch
    that did would tie their keys' order together (issue 12)."""
    b = batcher(max_records=100, lanes=4)
    msgs = [
        Message(topic="t", partition=i % 2, offset=i, key=f"k{i % 7}".encode(), value=b"{}")
        for i in range(200)
    ]
    closed, _ = b.add_messages(msgs, list(range(200)))
    batches = [*closed, *b.flush()]
    assert sum(x.count for x in batches) == 200
    for x in batches:
        assert len(x.covered()) == 1  # one partition
        lanes = {b.lane_of(r.topic, r.partition, r.key, r.offset) for r in x.records}
        assert lanes == {x.lane}
        offsets = [r.offset for r in x.records]
        assert offsets == sorted(offsets)
    # Each key lands in one lane, and 7 keys over 2 partitions use several of them.
    assert len({x.lane for x in batches}) > 2


def test_unkeyed_records_fill_lanes_by_runs() -> None:
    """Records without a key need no order: runs of a batch's size go to one lane each,
    so an unkeyed topic sends full batches in parallel rather than trickles."""
    b = batcher(max_records=10, lanes=4)
    msgs = [Message(topic="t", partition=0, offset=i, key=None, value=b"{}") for i in range(40)]
    closed, _ = b.add_messages(msgs, list(range(40)))
    assert [x.count for x in closed] == [10, 10, 10, 10]
    assert len({x.lane for x in closed}) == 4


def test_linger_waits_for_a_busy_lane_and_the_batch_keeps_filling() -> None:
    clock = Clock()
    b = batcher(clock, max_records=5, lanes=1)
    for i in range(2):
        add(b, rec(i, {"id": i}))
    clock.now = 2.0
    assert b.due(lambda lane: False) == []  # its lane is busy: it stays open
    assert b.next_deadline() is None  # nothing left for a timer: the lane's answer is
    add(b, rec(2, {"id": 2}))
    (batch,) = b.due(lambda lane: True)
    assert batch.count == 3


def test_attribute_groups_of_one_lane_close_in_age_order() -> None:
    """With attribute grouping a key's records may sit in two groups of one lane: the
    older group's batch closes first, so its earlier records are sent first."""
    b = batcher(max_records=2, group_of=grouping_function("attribute", "kind"),
                keys_span_groups=True)  # fmt: skip
    out = add(b, rec(0, {"id": 0, "kind": "a"}, key="k"))
    out += add(b, rec(1, {"id": 1, "kind": "b"}, key="k"))
    out += add(b, rec(2, {"id": 2, "kind": "b"}, key="k"))  # b is full: a goes first
    assert [[r.offset for r in x.records] for x in out] == [[0], [1, 2]]
