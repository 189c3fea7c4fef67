"""Review r1: a random simulation of Dispatcher with LastBatch (initial load, two
entities), a fake API answering in random order: every record is sent once, each key in
offset order, each entity's load closed exactly once, by a call alone and last."""

from __future__ import annotations

import asyncio
import random

import pytest
from confluent_kafka import Message

from sink.records import Batch
from tests.unit.test_review_held import Sink, msg, settle


@pytest.mark.parametrize("seed", range(60))
async def test_random_loads_of_two_entities_close_once_and_lose_nothing(seed: int) -> None:
    rng = random.Random(seed)
    sink = Sink({"a": 2, "b": 2}, lanes=rng.choice([1, 2, 4]), batch_size=rng.choice([1, 3, 5]))
    sink.flow.limit.current = rng.choice([1, 2, 8])
    checks: list[str] = []
    prepare = sink.prepare

    def checked_prepare(batch: Batch) -> None:
        prepare(batch)
        if batch.is_last:
            entity = batch.lanes[0][0]
            others = [
                b
                for b in sink.flow.in_flight.values()
                if b is not batch and b.lanes[0][0] == entity
            ]
            assert sink.last.source is not None
            tps = [tp for tp in sink.last.source.assignment if tp[0] == entity]
            unresolved = sum(map(sink.tracker.unresolved, tps))
            if others or unresolved != batch.count or sink.batcher.holds_any({entity}):
                checks.append(f"{batch.id} closed {entity} with other work of it open")

    sink.flow._prepare = checked_prepare
    offsets = {("a", 0): 0, ("a", 1): 0, ("b", 0): 0, ("b", 1): 0}
    fed: list[tuple[str, int, int]] = []
    keys = {}
    for _ in range(rng.randint(1, 12)):
        poll: list[Message] = []
        for _ in range(rng.randint(1, 8)):
            tp = rng.choice(list(offsets))
            key = rng.choice(["k0", "k1", "k2", "k3", "k4", "k5"])
            poll.append(msg(tp[0], tp[1], offsets[tp], key))
            fed.append((tp[0], tp[1], offsets[tp]))
            keys[(tp[0], tp[1], offsets[tp])] = key
            offsets[tp] += 1
        poll.sort(key=lambda m: (m.topic(), m.partition(), m.offset()))
        sink.feed(poll)
        sink.flow.pump()
        await settle()
        for _ in range(rng.randint(0, 3)):
            gates = sink.api.gates
            waiting = [
                b for b in sink.api.started if not gates.setdefault(id(b), asyncio.Event()).is_set()
            ]
            if waiting:
                gates[id(rng.choice(waiting))].set()
                await settle()
    for _ in range(100):
        if not (sink.tracker.unresolved() or sink.flow.waiting_work() or sink.flow.in_flight):
            break
        sink.flow.pump()
        await settle()
        sink.api.release_all()
        await settle()
    sent = [(r.topic, r.partition, r.offset) for b in sink.api.started for r in b.records]
    assert sorted(sent) == sorted(fed), "records lost or sent twice"
    last: dict[tuple[str, int, str], int] = {}
    for t, p, o in sent:
        k = (t, p, keys[(t, p, o)])
        assert last.get(k, -1) < o, f"{k} out of order"
        last[k] = o
    assert checks == []
    closed = sorted(b.lanes[0][0] for b in sink.closing)
    assert closed == sorted({t for t, _, _ in fed}), f"closes: {closed}"
    assert sink.tracker.unresolved() == 0
