"""Per-key order among batches in flight: the dispatcher, without Kafka or HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sink.config import Settings
from sink.pipeline import Pipeline
from sink.records import Batch, SinkRecord


class HeldDelivery:
    """Stands in for the HTTP side: each batch waits until the test releases it."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}

    async def deliver(self, batch: Batch, on_sent: Callable[[], None] = lambda: None) -> None:
        self.started.append(batch.id)
        gate = self.gates.setdefault(batch.id, asyncio.Event())
        await gate.wait()
        on_sent()

    def release(self, batch_id: str) -> None:
        self.gates.setdefault(batch_id, asyncio.Event()).set()


def batch(name: str, *keys: str) -> Batch:
    records = [SinkRecord("t", 0, i, k.encode(), b"{}", None, 0) for i, k in enumerate(keys)]
    return Batch(id=name, group="", records=records)


def pipeline(max_in_flight: int = 8) -> tuple[Pipeline, HeldDelivery]:
    settings = Settings(
        CLARI_ENTITY_TYPE="Account",
        CLARI_API_TOKEN="t",
        CLARI_PARTNER_KEY="p",
        HTTP_MAX_IN_FLIGHT=max_in_flight,
        CLARI_IS_LAST_BATCH="true",
    )
    p = Pipeline(settings)
    held = HeldDelivery()
    p.delivery = held  # type: ignore[assignment]
    return p, held


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_key_is_never_in_two_batches_in_flight_and_never_overtaken() -> None:
    p, held = pipeline()
    p.waiting.extend(
        [
            batch("b1", "A"),
            batch("b2", "B"),
            batch("b3", "A", "C"),
            batch("b4", "C"),
            batch("b5", "D"),
        ]
    )
    p._pump()
    await settle()
    # b3 waits for A; b4 must not overtake b3, with which it shares C; other keys flow.
    assert held.started == ["b1", "b2", "b5"]
    held.release("b1")
    await settle()
    assert held.started == ["b1", "b2", "b5", "b3"]
    held.release("b3")
    await settle()
    assert held.started[-1] == "b4"
    for name in ("b2", "b4", "b5"):
        held.release(name)
    await settle()
    assert not p.in_flight and p.tracker.unresolved() == 0


async def test_capacity_follows_the_concurrency_limit() -> None:
    p, held = pipeline(max_in_flight=2)
    p.waiting.extend([batch(f"b{i}", f"k{i}") for i in range(5)])
    p._pump()
    await settle()
    assert held.started == ["b0", "b1"]
    p.limit.pushback()  # a 429: halve
    held.release("b0")
    await settle()
    assert held.started == ["b0", "b1"]  # one in flight is now the limit
    held.release("b1")
    await settle()
    assert held.started == ["b0", "b1", "b2"]
    for i in range(2, 5):
        held.release(f"b{i}")
        await settle()
    assert held.started == [f"b{i}" for i in range(5)]


async def test_deactivated_sends_nothing() -> None:
    p, held = pipeline()
    p.set_active(False)
    p.waiting.append(batch("b1", "A"))
    p._pump()
    await settle()
    assert held.started == []
    p.set_active(True)
    p._pump()
    await settle()
    assert held.started == ["b1"]
    held.release("b1")
    await settle()
