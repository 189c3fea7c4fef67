"""Hostile API answers (issue 13): redirects, huge and deep bodies, bad headers, bad job
ids and statuses. Each test looks at what lands on the response and dead-letter topics,
and at delivery returning at all (a crash or an endless loop fails it)."""

from __future__ import annotations

import asyncio
import gzip
import time
from typing import Any

import orjson
import pytest
from aiohttp import web

from sink.http_client import MAX_BODY_BYTES
from sink.reporting import RESPONSE_BODY_MAX
from tests.hostile import TOKEN, batch, record, serve, serve_raw, sink

JOB_ID = "64eef062b1a00d40e5f0bac5"


def delivered(s: Any) -> float:
    value = s.metrics.registry.get_sample_value("clari_sink_records_delivered_total")
    return float(value or 0)


# -- redirects --------------------------------------------------------------------------
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_not_followed_and_the_batch_is_dead_lettered_naming_it(
    status: int,
) -> None:
    stolen: list[tuple[str, dict[str, str]]] = []

    async def elsewhere(request: web.Request) -> web.Response:
        stolen.append((request.method, dict(request.headers)))
        return web.Response(status=200)  # a 200 here once counted the records delivered

    async with serve(elsewhere) as other:
        # The Location carries the token: it must not be published as it is.
        location = f"{other}/collect?apikey={TOKEN}"

        async def clari(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(status=status, headers={"Location": location})

        records = [record(i) for i in range(3)]
        sent: list[int] = []
        async with serve(clari) as url, sink(url) as s:
            await asyncio.wait_for(
                s.delivery.deliver(batch(records), on_sent=lambda: sent.append(1)), 20
            )

    assert stolen == []  # neither the credentials nor the records went there
    dead = s.dead()
    assert [d.value for d in dead] == [r.value for r in records]
    for d in dead:
        assert d.headers["clari-sink.error.reason"] == b"redirected"
        assert d.headers["clari-sink.http.status"] == str(status).encode()
        assert f"{other}/collect?apikey=****".encode() in d.headers["clari-sink.error.body"]
    (response,) = s.responses()
    assert response["outcome"] == "dead-lettered" and response["status"] == status
    assert f"{other}/collect?apikey=****" in response["error"]
    assert TOKEN.encode() not in s.outputs()
    assert delivered(s) == 0 and sent == [1]
    assert "redirect" in s.health.problems()["api"]["message"]


async def test_a_redirect_to_a_location_that_is_not_utf8_is_named_all_the_same() -> None:
    def answer(n: int) -> bytes:
        return b"HTTP/1.1 302 Found\r\nLocation: http://x.invalid/\xff\xfe\r\n\r\n"

    async with serve_raw(answer) as url, sink(url) as s:
        await asyncio.wait_for(s.delivery.deliver(batch([record(1)])), 20)

    (dead,) = s.dead()
    assert dead.headers["clari-sink.error.reason"] == b"redirected"
    assert b"http://x.invalid/\\udcff\\udcfe" in dead.headers["clari-sink.error.body"]
    assert "http://x.invalid/\\udcff\\udcfe" in s.responses()[0]["error"]


async def test_a_job_status_redirect_is_not_followed() -> None:
    stolen: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        stolen.append(request.method)
        return web.Response(status=200)  # read as the job's SUCCESS, once

    async with serve(elsewhere) as other:

        async def clari(request: web.Request) -> web.Response:
            if request.method == "POST":
                await request.read()
                return web.json_response({"jobId": JOB_ID}, status=202)
            return web.Response(status=302, headers={"Location": f"{other}/job"})

        records = [record(i) for i in range(3)]
        async with serve(clari) as url, sink(url, CLARI_TEMPLATE="ingest-bulk-entities") as s:
            await asyncio.wait_for(s.delivery.deliver(batch(records)), 20)

    assert stolen == []
    assert [d.headers["clari-sink.error.reason"] for d in s.dead()] == [b"redirected"] * 3
    assert [r["outcome"] for r in s.responses()] == ["job-submitted", "dead-lettered"]
    assert f"{other}/job" in s.responses()[1]["error"]
    assert delivered(s) == 0


# -- huge answers -------------------------------------------------------------------------
async def test_a_huge_answer_is_read_only_up_to_the_cap() -> None:
    async def clari(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=200)
        await resp.prepare(request)
        chunk = b"x" * 65_536
        try:
            for _ in range(2_048):  # 128 MiB, if anyone read it all
                await resp.write(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client stopped reading: as it should
        return resp

    async with serve(clari) as url, sink(url) as s:
        await asyncio.wait_for(s.delivery.deliver(batch([record(1)])), 30)

    (response,) = s.responses()
    assert response["outcome"] == "delivered"
    assert response["bodyTruncated"] is True and response["bodyBytes"] == MAX_BODY_BYTES
    assert len(response["body"]) == RESPONSE_BODY_MAX
    assert len(s.producer.written[0].value) < RESPONSE_BODY_MAX + 10_000


async def test_a_compressed_answer_is_capped_once_decompressed() -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=1)

    async def clari(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(
            status=422,
            body=bomb,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    async with serve(clari) as url, sink(url) as s:
        await asyncio.wait_for(s.delivery.deliver(batch([record(1)])), 30)

    (response,) = s.responses()
    assert response["bodyTruncated"] is True and response["bodyBytes"] == MAX_BODY_BYTES
    (dead,) = s.dead()
    assert dead.headers["clari-sink.error.reason"] == b"rejected-by-api"
    assert len(dead.headers["clari-sink.error.body"]) <= 16_384


# -- deep answers -------------------------------------------------------------------------
def nested(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("depth", [255, 1_000, 5_000])
@pytest.mark.parametrize("kind", ["array", "object"])
@pytest.mark.parametrize("status", [200, 400])
async def test_a_deeply_nested_answer_is_published_as_text(
    depth: int, kind: str, status: int
) -> None:
    body = nested(depth, kind)

    async def clari(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=status, body=body, content_type="application/json")

    records = [record(1)]
    async with serve(clari) as url, sink(url) as s:
        await asyncio.wait_for(s.delivery.deliver(batch(records)), 20)

    (response,) = s.responses()
    assert response["body"] == body.decode()  # as text, whole: under the cap
    if status == 200:
        assert response["outcome"] == "delivered" and delivered(s) == 1
    else:
        (dead,) = s.dead()
        assert dead.value == records[0].value
        assert dead.headers["clari-sink.error.body"] == body[:16_384]


async def test_an_answer_that_is_not_utf8_is_published_as_text() -> None:
    async def clari(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=400, body=b'{"errorSummary": "caf\xe9 \xff"}')

    async with serve(clari) as url, sink(url) as s:
        await asyncio.wait_for(s.delivery.deliver(batch([record(1)])), 20)

    (response,) = s.responses()
    assert response["body"] == '{"errorSummary": "caf\ufffd \ufffd"}'
    assert len(s.dead()) == 1


# -- headers, job ids and statuses --------------------------------------------------------
@pytest.mark.parametrize("retry_after", ["\u00b2", "-5", "1e9", "soon", "Wed, 31 Feb 99999"])
async def test_a_garbage_retry_after_is_ignored(retry_after: str) -> None:
    calls: list[float] = []

    async def clari(request: web.Request) -> web.Response:
        await request.read()
        calls.append(time.monotonic())
        if len(calls) == 1:
            return web.Response(status=503, headers={"Retry-After": retry_after})
        return web.Response(status=200)

    async with serve(clari) as url, sink(url) as s:
        await asyncio.wait_for(s.delivery.deliver(batch([record(1)])), 20)

    assert [r["outcome"] for r in s.responses()] == ["retrying", "delivered"]
    assert delivered(s) == 1


@pytest.mark.parametrize("status", [b"042", b"999", b"600"])
async def test_a_status_http_does_not_define_is_retried_not_blamed_on_the_records(
    status: bytes,
) -> None:
    def answer(n: int) -> bytes:
        if n == 0:
            return b"HTTP/1.1 " + status + b" Odd\r\ncontent-length: 0\r\n\r\n"
        return b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"

    async with serve_raw(answer) as url, sink(url) as s:
        await asyncio.wait_for(s.delivery.deliver(batch([record(1), record(2)])), 20)

    assert s.dead() == []
    assert [r["outcome"] for r in s.responses()] == ["retrying", "delivered"]
    assert delivered(s) == 2


@pytest.mark.parametrize(
    "job_id", ["x" * 100_000, "../../admin", 10**30, 1.5, [JOB_ID], {"id": JOB_ID}, True]
)
async def test_a_job_id_that_is_not_one_is_not_followed(job_id: Any) -> None:
    polls: list[str] = []

    async def clari(request: web.Request) -> web.Response:
        if request.method == "POST":
            await request.read()
            return web.Response(
                status=202,
                body=b'{"jobId": ' + str(job_id).encode() + b"}"
                if job_id == 10**30
                else orjson.dumps({"jobId": job_id}),
                content_type="application/json",
            )
        polls.append(request.path)
        return web.json_response({"message": {"status": "SUCCESS"}})

    records = [record(i) for i in range(3)]
    async with (
        serve(clari) as url,
        sink(url, CLARI_TEMPLATE="ingest-bulk-entities", JOB_TIMEOUT_S=2) as s,
    ):
        await asyncio.wait_for(s.delivery.deliver(batch(records)), 20)

    assert polls == []
    assert [d.headers["clari-sink.error.reason"] for d in s.dead()] == [b"invalid-job-id"] * 3
    (response,) = s.responses()
    assert response["outcome"] == "dead-lettered" and response["jobId"] is None
    assert len(orjson.dumps(response)) < 200_000
    assert delivered(s) == 0


async def test_a_job_state_the_api_makes_up_is_not_a_metric_label() -> None:
    made_up = [f"STATE-{i}" for i in range(3)]

    async def clari(request: web.Request) -> web.Response:
        if request.method == "POST":
            await request.read()
            return web.json_response({"jobId": JOB_ID}, status=202)
        return web.json_response({"message": {"status": made_up.pop()}})

    async with (
        serve(clari) as url,
        sink(url, CLARI_TEMPLATE="ingest-bulk-entities", RETRY_MAX_ATTEMPTS=3) as s,
    ):
        await asyncio.wait_for(s.delivery.deliver(batch([record(1)])), 20)

    states = {
        sample.labels["state"]
        for metric in s.metrics.registry.collect()
        for sample in metric.samples
        if metric.name == "clari_sink_jobs"
    }
    assert states == {"OTHER"}
    assert len(s.dead()) == 1


async def test_a_credential_echoed_in_a_401_is_not_shown_on_readyz() -> None:
    calls: list[int] = []
    problems: list[str] = []

    async def clari(request: web.Request) -> web.Response:
        await request.read()
        calls.append(1)
        if len(calls) == 1:
            echo = {"error": f"bad key {request.headers['apikey']}", "pad": "z" * 100_000}
            return web.json_response(echo, status=401)
        problems.append(s.health.problems()["auth"]["message"])
        return web.Response(status=200)

    async with serve(clari) as url, sink(url) as s:
        await asyncio.wait_for(s.delivery.deliver(batch([record(1)])), 20)

    (shown,) = problems
    assert "bad key ****" in shown and TOKEN not in shown
    assert len(shown) < 1_000
    assert TOKEN.encode() not in s.outputs()
