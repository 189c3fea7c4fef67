"""Hold a poll's records until the Schema Registry has given the writer schemas they need.

The per-record path never waits on the network: schemas are fetched before a poll is
handled. While the registry is unavailable the partitions stay paused but polled, so
the group membership holds.
"""

from __future__ import annotations

import asyncio
import logging
import time

from confluent_kafka import Message

from sink.avro import SchemaRegistry
from sink.consumer import KafkaSource
from sink.health import Health

log = logging.getLogger(__name__)

CONSUME_BATCH = 1_000
IDLE_POLL_S = 0.2


async def with_schemas(
    registry: SchemaRegistry,
    source: KafkaSource,
    msgs: list[Message],
    health: Health,
    stop: asyncio.Event,
) -> list[Message]:
    """``msgs`` once every writer schema they name is known; messages of partitions
    revoked meanwhile are left to their new owner. [] if the sink stops meanwhile:
    nothing of these was tracked, they are consumed again."""

    async def wait(seconds: float) -> bool:
        source.pause_new = True
        await source.pause(source.assignment)
        until = time.monotonic() + seconds
        while not stop.is_set() and (left := until - time.monotonic()) > 0:
            health.beat()
            msgs.extend(await source.consume(CONSUME_BATCH, min(IDLE_POLL_S, left)))
        return stop.is_set()

    def unavailable(text: str) -> None:
        health.fail("schema-registry", text)  # logged once per outage (sink/outage.py)
        log.debug("schema registry unavailable, records wait (retrying): %s", text)

    fetched = False
    while missing := registry.missing(m.value() for m in msgs if m.error() is None):
        if not await registry.fetch_until_done(missing, wait, unavailable):
            return []
        fetched = True
    if not fetched:
        return msgs
    health.clear("schema-registry")
    owned = source.assignment
    return [m for m in msgs if (m.topic(), m.partition()) in owned or m.error() is not None]
