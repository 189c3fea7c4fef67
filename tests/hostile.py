"""Test support for hostile API answers: a throwaway aiohttp server in the test's own
event loop, a stand-in for the Kafka producer that records what would land on the
response and dead-letter topics (and refuses what a broker would), and a Delivery wired
to both the way the pipeline wires it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from confluent_kafka import KafkaError

from sink.config import Settings
from sink.delivery import Delivery
from sink.endpoint import EndpointBuilder
from sink.health import Health
from sink.http_client import HttpClient
from sink.metrics import Metrics
from sink.producer import ProduceError
from sink.records import Batch, Headers, SinkRecord
from sink.reporting import Reporter

TOKEN = "tok-SECRET-1234"
PARTNER = "pk-SECRET-5678"
RESPONSES = "responses"
DLQ = "dlq"
BROKER_LIMIT = 1_048_588  # a broker's default message.max.bytes

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[str]:
    """``handler`` answering every path on a loopback port; yields the base URL."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serve_raw(answer: Callable[[int], bytes]) -> AsyncIterator[str]:
    """A server writing ``answer(n)`` as is for the n-th request (from 0): for what an
    aiohttp server will not send (a status of 042, header names in lowercase)."""
    count = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        n, count = count, count + 1
        writer.write(answer(n))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


@dataclass
class Written:
    topic: str
    value: bytes
    key: bytes | None
    headers: dict[str, bytes]

    def json(self) -> Any:
        return orjson.loads(self.value)


@dataclass
class FakeProducer:
    """Takes what a broker with ``limit`` takes; ``refuse`` maps a topic to the error
    code every write to it gets."""

    limit: int = BROKER_LIMIT
    refuse: dict[str, int] = field(default_factory=dict)
    written: list[Written] = field(default_factory=list)
    tries: list[str] = field(default_factory=list)

    async def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> None:
        self.tries.append(topic)
        if topic in self.refuse:
            raise ProduceError(topic, KafkaError(self.refuse[topic]))
        hs = {k: (v.encode() if isinstance(v, str) else v or b"") for k, v in (headers or [])}
        size = len(value or b"") + len(key or b"") + sum(len(k) + len(v) for k, v in hs.items())
        if size > self.limit:
            raise ProduceError(topic, KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.written.append(Written(topic, value or b"", key, hs))

    async def message_limit(self, topic: str) -> int:
        return min(self.limit, 1_000_000)

    def on(self, topic: str) -> list[Written]:
        return [w for w in self.written if w.topic == topic]


def settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "CLARI_ENTITY_TYPE": "Account",
        "CLARI_API_TOKEN": TOKEN,
        "CLARI_PARTNER_KEY": PARTNER,
        "CLARI_BASE_URL": f"{url}/v2",
        "RETRY_BACKOFF_INITIAL_MS": 1,
        "RETRY_BACKOFF_MAX_MS": 20,
        "JOB_POLL_INITIAL_MS": 10,
        "JOB_POLL_MAX_MS": 20,
        "HTTP_TIMEOUT_S": 20,
    }
    values.update(overrides)
    return Settings(**values)


def http_client(s: Settings) -> HttpClient:
    # The one place tests build an HttpClient (its constructor is being reshaped).
    return HttpClient(s.http_timeout_s, s.http_rate_limit, s.http_max_in_flight)


@dataclass
class Sink:
    """A Delivery with its Reporter, as the pipeline wires them."""

    delivery: Delivery
    reporter: Reporter
    producer: FakeProducer
    health: Health
    metrics: Metrics

    def responses(self) -> list[dict[str, Any]]:
        return [w.json() for w in self.producer.on(RESPONSES)]

    def dead(self) -> list[Written]:
        return self.producer.on(DLQ)

    def outputs(self) -> bytes:
        """Everything written anywhere, headers included: to look for secrets in."""
        parts = []
        for w in self.producer.written:
            parts += [w.value, w.key or b"", *w.headers.values()]
        return b"\n".join(parts)


@contextlib.asynccontextmanager
async def sink(
    url: str, producer: FakeProducer | None = None, **overrides: Any
) -> AsyncIterator[Sink]:
    s = settings(url, **overrides)
    producer = producer or FakeProducer()
    builder = EndpointBuilder(s)
    metrics, health = Metrics(), Health.for_settings(s)
    reporter = Reporter(
        producer,  # type: ignore[arg-type]
        response_topic=RESPONSES,
        dlq_topic=DLQ,
        builder=builder,
        metrics=metrics,
        health=health,
    )
    async with http_client(s) as http:
        delivery = Delivery(s, http, builder, reporter, metrics, health)
        yield Sink(delivery, reporter, producer, health, metrics)


def record(i: int, topic: str = "crm", **fields: Any) -> SinkRecord:
    data: dict[str, Any] = {"id": f"ACC{i:05d}", "createdAt": 1_700_000_000_000 + i}
    data["updatedAt"] = data["createdAt"]
    data.update(fields)
    data = {k: v for k, v in data.items() if v is not None}
    value = orjson.dumps(data)
    key = str(data.get("id", f"no-id-{i}")).encode()
    return SinkRecord(topic, 0, i, key, value, None, 0, body=value, rid=data.get("id"))


def batch(records: list[SinkRecord], name: str = "b1") -> Batch:
    return Batch(id=name, group="", records=records)
