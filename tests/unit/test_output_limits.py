"""What the broker will not take whole (issue 13): records and response messages over
the topic's size limit are written cut to fit and flagged; a topic that refuses every
write is named on /readyz and in the log, and the write waits for it instead of
spinning. (tests/integration/test_output_limits.py does the same against a broker.)"""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest
from aiohttp import web
from confluent_kafka import KafkaError

from sink import reporting
from sink.records import SinkRecord
from tests.hostile import DLQ, RESPONSES, FakeProducer, batch, record, serve, sink


def big_record(size: int, headers: list[tuple[str, bytes]] | None = None) -> SinkRecord:
    r = record(5)
    r.value = r.body = orjson.dumps({"id": "ACC00005", "blob": "x" * size})
    r.headers = list(headers or [])
    return r


@pytest.mark.parametrize(
    ("size", "limit"), [(2_000_000, None), (20_000_000, None), (2_000_000, 100_000)]
)
async def test_a_record_too_large_for_the_dead_letter_topic_is_written_cut_and_flagged(
    size: int, limit: int | None
) -> None:
    producer = FakeProducer(**({"limit": limit} if limit else {}))
    r = big_record(size, headers=[("trace", b"abc")])
    async with sink("http://127.0.0.1:9", producer) as s:
        await asyncio.wait_for(
            s.reporter.dead_letter([r], reason="rejected-by-api", error="too big"), 10
        )

    (dead,) = s.dead()
    assert 0 < len(dead.value) <= min(900_000, limit or 900_000)
    assert r.value is not None and r.value.startswith(dead.value)
    h = dead.headers
    assert h["clari-sink.truncated"] == b"true"
    assert h["clari-sink.original.bytes"] == str(len(r.value)).encode()
    assert (h["clari-sink.source.topic"], h["clari-sink.source.offset"]) == (b"crm", b"5")
    assert h["clari-sink.error.reason"] == b"rejected-by-api" and h["trace"] == b"abc"
    assert dead.key == r.key


async def test_a_record_whose_own_headers_are_too_large_keeps_the_sinks() -> None:
    r = big_record(10, headers=[(f"h{i}", b"y" * 100_000) for i in range(15)])
    async with sink("http://127.0.0.1:9") as s:
        await asyncio.wait_for(s.reporter.dead_letter([r], reason="rejected-by-api"), 10)

    (dead,) = s.dead()
    assert dead.value == r.value  # the value fits once the record's headers are left out
    assert dead.headers["clari-sink.headers.dropped"] == b"15"
    assert dead.headers["clari-sink.source.offset"] == b"5"
    assert not any(name.startswith("h") for name in dead.headers)


async def test_a_large_answer_makes_a_response_message_that_is_still_json() -> None:
    answer = orjson.dumps([{"errorCode": "X", "errorSummary": "y" * 2_000_000}])

    async def api(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=422, body=answer, content_type="application/json")

    producer = FakeProducer(limit=50_000)  # a topic whose max.message.bytes is 50 kB
    async with serve(api) as url, sink(url, producer) as s:
        await asyncio.wait_for(s.delivery.deliver(batch([record(1)])), 20)

    (message,) = producer.on(RESPONSES)
    assert len(message.value) <= 50_000
    assert message.headers["clari-sink.truncated"] == b"true"
    response = message.json()
    assert response["bodyTruncated"] is True and response["outcome"] == "dead-lettered"
    assert response["body"].startswith('[{"errorCode":"X","errorSummary":"yyy')
    assert response["sources"] == [
        {"topic": "crm", "partition": 0, "firstOffset": 1, "lastOffset": 1, "count": 1}
    ]
    assert len(producer.on(DLQ)) == 1


async def test_a_topic_that_refuses_writes_is_named_and_waited_for(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reporting, "PERMANENT_RETRY_MIN_S", 1.0, raising=False)
    producer = FakeProducer(refuse={DLQ: KafkaError.TOPIC_AUTHORIZATION_FAILED})
    async with sink("http://127.0.0.1:9", producer) as s:
        with caplog.at_level(logging.ERROR, logger="sink.reporting"):
            task = asyncio.create_task(s.reporter.dead_letter([record(1)], reason="x"))
            await asyncio.sleep(0.8)
            assert producer.tries == [DLQ]  # not tried again at once: nothing has changed
            problem = s.health.problems()["output-topics"]["message"]
            assert f"topic '{DLQ}' refuses writes" in problem
            assert "TOPIC_AUTHORIZATION_FAILED" in problem
            assert any(
                f"topic '{DLQ}'" in r.getMessage() and "not a passing fault" in r.getMessage()
                for r in caplog.records
            )
            assert not task.done()  # the record is not lost: its offset stays uncommitted
            producer.refuse.clear()  # an operator grants the ACL
            await asyncio.wait_for(task, 5)

    assert len(s.dead()) == 1 and "output-topics" not in s.health.problems()
