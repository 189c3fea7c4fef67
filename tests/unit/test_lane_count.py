"""Each partition's lane count, chosen from its first records when SINK_KEY_LANES is not
set (Batcher._learn_lanes): few lanes where keys do not repeat, the default where they
do, and a key's lane never changes while its partition is owned."""

from __future__ import annotations

import asyncio
import random

from sink.batching import UNIQUE_KEY_LANES, Batcher
from sink.config import Settings
from sink.flow import ConcurrencyLimit, Dispatcher, Pace
from tests.unit.test_config import BASE
from tests.unit.test_dispatch import HeldDelivery, msgs, settle


def batcher(adaptive: bool = True, batch_size: int = 100, unique: int = 16) -> Batcher:
    return Batcher(
        max_records=batch_size, max_bytes=10_000_000, linger_s=60.0, group_of=None,
        lanes=128, adaptive_lanes=adaptive, unique_key_lanes=unique,
    )  # fmt: skip


def lanes_used(b: Batcher, partition: int, keys: list[str]) -> set[int]:
    return {b.lane_of("t", partition, k.encode(), 0)[2] for k in keys}


def test_unique_keys_get_few_lanes_and_repeating_keys_keep_the_default() -> None:
    b = batcher()
    unique = [f"opp-{i}" for i in range(200)]  # keyed by record
    accounts = [f"acct-{i % 30}" for i in range(200)]  # keyed by account: keys repeat
    first = msgs(list(enumerate(unique)), partition=0) + msgs(list(enumerate(accounts)), 1)
    b.add_messages(first, [str(i) for i in range(400)])
    assert max(lanes_used(b, 0, unique)) < UNIQUE_KEY_LANES
    assert max(lanes_used(b, 1, accounts)) >= UNIQUE_KEY_LANES  # spread over 128


def test_without_the_choice_every_partition_has_the_set_count() -> None:
    b = batcher(adaptive=False)
    unique = [f"opp-{i}" for i in range(200)]
    b.add_messages(msgs(list(enumerate(unique))), [str(i) for i in range(200)])
    assert max(lanes_used(b, 0, unique)) >= UNIQUE_KEY_LANES
    # SINK_KEY_LANES set by the user: the count is theirs, everywhere.
    assert not Batcher.for_settings(Settings(**BASE, SINK_KEY_LANES="64")).adaptive
    assert Batcher.for_settings(Settings(**BASE)).adaptive


def test_unique_keys_get_at_least_as_many_lanes_as_calls_in_flight() -> None:
    """A lane has one call in flight: with fewer lanes, a topic of one partition could
    not use HTTP_MAX_IN_FLIGHT."""
    assert Batcher.for_settings(Settings(**BASE)).unique_key_lanes == 32  # the default
    assert Batcher.for_settings(Settings(**BASE, HTTP_MAX_IN_FLIGHT="8")).unique_key_lanes == 16


async def test_one_partition_of_unique_keys_fills_every_call_slot() -> None:
    b = batcher(batch_size=2, unique=32)
    held = HeldDelivery()
    limit = ConcurrencyLimit(32)
    limit.current = 32
    flow = Dispatcher(b, limit, Pace(1e6), held.deliver, lambda x: None, lambda x, t: None)
    part = msgs([(i, f"opp-{i}") for i in range(400)])
    closed, _ = b.add_messages(part, [str(i) for i in range(400)])
    flow.add(closed)
    flow.pump()
    await settle()
    assert held.in_flight == 32


def test_too_few_first_records_to_tell_keep_the_default_for_good() -> None:
    b = batcher()
    few = [f"opp-{i}" for i in range(10)]
    b.add_messages(msgs(list(enumerate(few))), [str(i) for i in range(10)])
    later = [f"opp-{i}" for i in range(10, 400)]
    b.add_messages(msgs([(10 + i, k) for i, k in enumerate(later)]), [str(i) for i in range(390)])
    assert max(lanes_used(b, 0, few + later)) >= UNIQUE_KEY_LANES


def test_a_partition_placed_before_any_choice_keeps_its_lanes() -> None:
    b = batcher()
    before = b.lane_of("t", 0, b"opp-1", 0)  # placed on a path that does not choose
    unique = [f"opp-{i}" for i in range(200)]
    b.add_messages(msgs(list(enumerate(unique))), [str(i) for i in range(200)])
    assert b.lane_of("t", 0, b"opp-1", 0) == before
    assert max(lanes_used(b, 0, unique)) >= UNIQUE_KEY_LANES


def test_a_partition_given_up_is_chosen_for_again() -> None:
    b = batcher()
    unique = [f"opp-{i}" for i in range(200)]
    b.add_messages(msgs(list(enumerate(unique))), [str(i) for i in range(200)])
    assert max(lanes_used(b, 0, unique)) < UNIQUE_KEY_LANES
    b.drop({("t", 0)})
    accounts = [f"acct-{i % 30}" for i in range(200)]
    b.add_messages(msgs(list(enumerate(accounts))), [str(i) for i in range(200)])
    assert max(lanes_used(b, 0, accounts)) >= UNIQUE_KEY_LANES


async def test_keys_that_start_unique_and_then_repeat_still_arrive_in_order() -> None:
    """The choice is made once: a topic whose first records have unique keys keeps its 16
    lanes when keys start to repeat, and each key's records reach the API in offset order
    while calls overlap."""
    b = batcher(batch_size=10)
    held = HeldDelivery()
    limit = ConcurrencyLimit(8)
    limit.current = 8
    flow = Dispatcher(b, limit, Pace(1e6), held.deliver, lambda x: None, lambda x, t: None)
    rng = random.Random(7)
    spec = [(i, f"k{i}") for i in range(100)]  # unique at first: 16 lanes
    spec += [(i, f"k{rng.randrange(40)}") for i in range(100, 1_000)]  # then 40 keys repeat
    for start in range(0, len(spec), 100):
        part = msgs(spec[start : start + 100])
        closed, _ = b.add_messages(part, [m.offset() for m in part])
        flow.add(closed)
        flow.pump()
        await settle()
        for batch in list(held.started):  # answer some calls, out of order
            if rng.random() < 0.5 and batch.id not in held.gates:
                held.release(batch)
        await settle()
    b.linger_s = 0.0
    while len(held.seen) < len(spec):
        flow.pump()
        for batch in held.started:
            held.release(batch)
        await settle()
        await asyncio.sleep(0)
    assert held.most_in_flight > 1
    by_key: dict[bytes | None, list[int]] = {}
    for record in held.seen:
        by_key.setdefault(record.key, []).append(record.offset)
    assert all(offsets == sorted(offsets) for offsets in by_key.values())
    assert sorted(r.offset for r in held.seen) == list(range(1_000))
    assert max(lanes_used(b, 0, [f"k{i}" for i in range(40)])) < UNIQUE_KEY_LANES
