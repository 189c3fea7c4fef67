"""An outage is told once, reminded once a minute, and its end told once (sink/outage.py),
for the broker, the API and the registry alike."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web

from sink.config import Settings
from sink.health import Health
from sink.logs import ConnectionFailuresAtDebug
from sink.outage import Outage, Wording
from tests.hostile import TOKEN, batch, record, serve, sink

BROKER = Wording("Kafka broker", "unreachable", "reachable again")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def loud(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.levelname} {r.getMessage()}" for r in caplog.records if r.levelno >= logging.INFO]


def outage(clock: Clock) -> Outage:
    return Outage(BROKER, "127.0.0.1:9092", logging.getLogger("test.outage"), clock=clock)


def test_a_long_outage_is_three_lines_and_a_reminder_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    o = outage(clock)
    caplog.set_level(logging.DEBUG, logger="test.outage")
    for _ in range(150 * 40):  # 150 s at librdkafka's 40 errors a second
        o.failed("Connect to ipv4#127.0.0.1:9092 failed: Connection refused")
        clock.now += 1 / 40
    o.recovered()
    o.recovered()  # every success clears: told once
    lines = loud(caplog)
    assert lines == [
        "WARNING Kafka broker unreachable (127.0.0.1:9092): Connect to ipv4#127.0.0.1:9092 "
        "failed: Connection refused",
        "WARNING Kafka broker still unreachable (127.0.0.1:9092) after 60 s: 2400 failure(s) "
        "since the last report, last: Connect to ipv4#127.0.0.1:9092 failed: Connection refused",
        "WARNING Kafka broker still unreachable (127.0.0.1:9092) after 2.0 min: 2400 failure(s) "
        "since the last report, last: Connect to ipv4#127.0.0.1:9092 failed: Connection refused",
        "INFO Kafka broker reachable again (127.0.0.1:9092) after 2.5 min, 6000 failure(s)",
    ]
    # The detail is all there, at DEBUG.
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 6000 - 3
    assert not o.down


def test_a_flapping_dependency_is_told_at_most_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    o = outage(clock)
    caplog.set_level(logging.INFO, logger="test.outage")
    for _ in range(36):  # 3 minutes: one failed call every 5 s, the next one fine
        o.failed("HTTP 503")
        clock.now += 0.2
        o.recovered()
        clock.now += 4.8
    lines = loud(caplog)
    assert len(lines) == 6, lines  # gone and back, once a minute
    assert lines[2].endswith("(11 failure(s) since the last report)")


def test_an_outage_right_after_a_blip_is_told_within_ten_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    o = outage(clock)
    caplog.set_level(logging.INFO, logger="test.outage")
    o.failed("blip")
    clock.now += 1
    o.recovered()
    clock.now += 5
    o.failed("gone")  # within the minute of the blip's line: not told yet
    assert len(loud(caplog)) == 2
    clock.now += 10
    o.failed("gone")
    assert loud(caplog)[-1] == (
        "WARNING Kafka broker unreachable (127.0.0.1:9092): gone (1 failure(s) since the "
        "last report)"
    )


def test_health_names_where_each_dependency_is_without_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = Settings(
        KAFKA_BOOTSTRAP_SERVERS="b1:9092,b2:9092",
        CLARI_ENTITY_TYPE="Account",
        CLARI_API_TOKEN=TOKEN,
        CLARI_PARTNER_KEY="pk-SECRET-5678",
        CLARI_BASE_URL=f"https://clari.example.com:8443/v2?key={TOKEN}",
        KAFKA_VALUE_FORMAT="avro",
        SCHEMA_REGISTRY_URL="https://registry.example.com/base",
    )
    health = Health.for_settings(s)
    caplog.set_level(logging.INFO, logger="sink.outage")
    health.fail("api", f"HTTP 401 echoing {TOKEN}")
    health.fail("kafka", "Connection refused")
    health.fail("schema-registry", "HTTP 503")
    health.clear("schema-registry")
    health.clear("output-topics")  # not down, not an outage: nothing to tell
    text = "\n".join(loud(caplog))
    assert TOKEN not in text
    assert "Clari API failing (https://clari.example.com:8443): HTTP 401 echoing ***" in text
    assert "Kafka broker unreachable (b1:9092,b2:9092): Connection refused" in text
    assert "schema registry unavailable (https://registry.example.com): HTTP 503" in text
    assert "schema registry available again (https://registry.example.com) after" in text
    assert len(caplog.records) == 4
    assert health.down("kafka") and not health.down("schema-registry")
    assert set(health.problems()) == {"api", "kafka"}
    assert health.problems()["kafka"]["failures"] == 1


def test_librdkafka_connection_failures_go_to_debug(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("librdkafka")
    only = ConnectionFailuresAtDebug()
    logger.addFilter(only)
    try:
        caplog.set_level(logging.INFO, logger="librdkafka")
        fail = ("FAIL", "clari-sink#consumer-1", "Connect to ipv4#127.0.0.1:9092 failed")
        logger.log(logging.ERROR, "%s [%s] %s", *fail)
        logger.log(logging.WARNING, "%s [%s] %s", "METADATAUPDATE", "c", "leader-1 not found")
        logger.log(logging.WARNING, "%s [%s] %s", "SESSTMOUT", "c", "session timed out")
        assert [r.getMessage() for r in caplog.records] == ["SESSTMOUT [c] session timed out"]
        caplog.clear()
        caplog.set_level(logging.DEBUG, logger="librdkafka")
        logger.log(logging.ERROR, "%s [%s] %s", *fail)
        assert [r.levelname for r in caplog.records] == ["DEBUG"]
    finally:
        logger.removeFilter(only)


async def test_the_api_down_for_many_calls_is_two_lines(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def clari(request: web.Request) -> web.Response:
        nonlocal calls
        await request.read()
        calls += 1
        return web.Response(status=503 if calls <= 60 else 200)

    caplog.set_level(logging.INFO)
    async with serve(clari) as url, sink(url, RETRY_BACKOFF_MAX_MS=5) as s:
        batches = [batch([record(i)], name=f"b{i}") for i in range(4)]
        await asyncio.wait_for(asyncio.gather(*(s.delivery.deliver(b) for b in batches)), 30)
    lines = loud(caplog)
    assert calls >= 64
    assert len(lines) == 2, lines
    assert lines[0].startswith("WARNING Clari API failing (http://127.0.0.1:")
    assert lines[0].endswith("): HTTP 503")
    assert lines[1].startswith("INFO Clari API answering again (")
    assert "failure(s)" in lines[1]
    assert not s.health.problems()
