"""Sample request payloads and endpoint testing.

``sample`` reads the first records of the configured topics without joining the
consumer group and without committing, and shows the exact requests the settings would
send (secrets masked). ``test-send`` sends one of them, or a body the user edited.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from sink.avro import RegistryUnavailable, registry_for
from sink.batching import Batcher, grouping_function
from sink.config import Settings
from sink.consumer import consumer_config
from sink.decoding import RecordError, Shaper, json_default
from sink.endpoint import EndpointBuilder, PreparedRequest
from sink.http_client import HttpClient
from sink.mapping import SkipRecord
from sink.records import Batch, SinkRecord


def read_first(settings: Settings, limit: int, timeout_s: float = 10.0) -> list[SinkRecord]:
    """The first ``limit`` records of the topics, read by assignment: no group, no commit."""
    conf = consumer_config(settings, group=False)
    consumer = Consumer(conf)
    try:
        meta = consumer.list_topics(timeout=timeout_s)
        parts = [
            TopicPartition(t, p, OFFSET_BEGINNING)
            for t in settings.kafka_topics
            if t in meta.topics
            for p in sorted(meta.topics[t].partitions)
        ]
        if not parts:
            return []
        consumer.assign(parts)
        out: list[SinkRecord] = []
        deadline = time.monotonic() + timeout_s
        idle = 0
        while len(out) < limit and time.monotonic() < deadline and idle < 3:
            msgs = consumer.consume(limit - len(out), 1.0)
            idle = 0 if msgs else idle + 1
            for m in msgs:
                if m.error() is None:
                    out.append(SinkRecord.from_message(m))
        return out
    finally:
        consumer.close()


async def shaper_for(settings: Settings, records: list[SinkRecord]) -> Shaper:
    """The sink's shaper, with the writer schemas ``records`` need when values are Avro
    (raises RegistryUnavailable)."""
    registry = registry_for(settings)
    if registry is not None:
        await registry.fetch(registry.missing(r.value for r in records))
    return Shaper.for_settings(
        settings, registry.decode if registry is not None else None, contract=False
    )


MAPPED_SHOWN = 3  # records shown before and after mapping
SKIPPED = "skipped, "  # a rejection that is a skip (SINK_DELETES), not a dead letter


def mapped_examples(
    records: list[SinkRecord], shaper: Shaper, limit: int = MAPPED_SHOWN
) -> list[dict[str, Any]]:
    """The first records as decoded and as mapped (sink/mapping.py), or why they are not
    sent: what a user checks the mapping settings against."""
    shown: list[dict[str, Any]] = []
    for record in records[:limit]:
        copy = SinkRecord(record.topic, record.partition, record.offset, record.key,
                          record.value, record.headers, record.timestamp_ms)  # fmt: skip
        try:
            before = shaper.decode_value(copy)
        except (RecordError, ValueError) as exc:
            before = f"(cannot be decoded: {exc})"
        try:
            after: Any = shaper.shape(copy)
        except RecordError as exc:
            after = f"(not sent: {exc})"
        shown.append({"record": record.where, "before": before, "after": after})
    return shown


def _masked_json(value: Any, builder: EndpointBuilder) -> Any:
    """``value`` through the settings' masking, as JSON again (as text should a masked
    value have broken the JSON)."""
    text = builder.mask_text(orjson.dumps(value, default=json_default).decode())
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _json_text(value: Any, builder: EndpointBuilder) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=json_default).decode()
    return builder.mask_text(text)


def sample_requests(
    settings: Settings, records: list[SinkRecord], shaper: Shaper
) -> tuple[list[PreparedRequest], list[tuple[SinkRecord, str]]]:
    """Batch ``records`` as the sink would and build each batch's request."""
    batcher = Batcher(
        max_records=settings.effective_batch_size,
        max_bytes=settings.batch_max_bytes,
        linger_s=0,
        id_field=settings.clari_id_field,
        group_of=grouping_function(settings.batch_grouping, settings.batch_group_attribute),
    )
    builder = EndpointBuilder(settings)
    batches: list[Batch] = []
    rejected: list[tuple[SinkRecord, str]] = []
    for record in records:
        try:
            batches.extend(batcher.add(record, shaper.shape(record)))
        except SkipRecord as exc:
            rejected.append((record, f"{SKIPPED}{exc}"))
        except RecordError as exc:
            rejected.append((record, str(exc)))
    batches.extend(batcher.flush())
    # Under auto only the call that ends a load says true; a sample (or test-send: a real
    # call) must never end the user's initial load.
    is_last = settings.is_last_batch == "true"
    return [builder.build(b, is_last) for b in batches], rejected


def describe(req: PreparedRequest, builder: EndpointBuilder) -> dict[str, Any]:
    """A request as shown: every part through the settings' masking."""
    body: Any = builder.mask_text(req.body.decode("utf-8", "replace"))
    if req.headers.get("Content-Type", "").startswith("application/json"):
        # Should a masked value have broken the JSON, the text is shown.
        with contextlib.suppress(orjson.JSONDecodeError):
            body = orjson.loads(body)
    return {
        "method": req.method,
        "url": builder.mask_text(req.url),
        "headers": builder.mask_headers(req.headers),
        "records": req.records,
        "body": body,
    }


def print_samples(settings: Settings, limit: int, as_json: bool) -> int:
    records = read_first(settings, limit)
    if not records:
        print(
            f"no records found in {', '.join(settings.kafka_topics) or '(no KAFKA_TOPICS)'}",
            file=sys.stderr,
        )
        return 1
    builder = EndpointBuilder(settings)
    try:
        shaper = asyncio.run(shaper_for(settings, records))
    except RegistryUnavailable as exc:
        print(f"clari-sink: the schema registry is unavailable: {exc}", file=sys.stderr)
        return 1
    mapped = mapped_examples(records, shaper) if shaper.maps else []
    requests, rejected = sample_requests(settings, records, shaper)
    shown = [describe(r, builder) for r in requests]
    if as_json:
        print(
            orjson.dumps(
                {
                    "mapped": _masked_json(mapped, builder),
                    "requests": shown,
                    "rejected": [
                        {"record": r.where, "reason": builder.mask_text(why)} for r, why in rejected
                    ],
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
        return 0
    for example in mapped:
        print(f"--- {example['record']} before mapping")
        print(_json_text(example["before"], builder))
        print("--- after mapping (what Clari is sent)")
        print(_json_text(example["after"], builder))
    for i, req in enumerate(shown, 1):
        print(f"--- sample request {i} of {len(shown)} ({req['records']} records)")
        print(f"{req['method']} {req['url']}")
        for name, value in req["headers"].items():
            print(f"{name}: {value}")
        print()
        body = req["body"]
        print(
            body
            if isinstance(body, str)
            else orjson.dumps(body, option=orjson.OPT_INDENT_2).decode()
        )
    for record, why in rejected:
        fate = (
            "would be skipped" if why.startswith(SKIPPED) else "would go to the dead-letter topic"
        )
        print(f"--- {record.where} {fate}: {builder.mask_text(why.removeprefix(SKIPPED))}")
    return 0


async def test_send(settings: Settings, body: bytes | None, limit: int) -> int:
    builder = EndpointBuilder(settings)
    records = read_first(settings, limit) if settings.kafka_topics else []
    try:
        shaper = await shaper_for(settings, records)
    except RegistryUnavailable as exc:
        print(f"clari-sink: the schema registry is unavailable: {exc}", file=sys.stderr)
        return 1
    requests, _ = sample_requests(settings, records, shaper)
    if requests:
        req = requests[0]
    else:
        req = builder.build(Batch(id="test", group=""), settings.is_last_batch == "true")
    if body is not None:
        req.body = body
    async with HttpClient(settings.http_timeout_s, settings.http_rate_limit, 1) as http:
        res = await http.call(req)
    print(f"{req.method} {builder.mask_text(req.url)}  ({len(req.body)} bytes)")
    if res.status is None:
        print(f"no answer: {res.error}")
        return 1
    print(f"HTTP {res.status}  ({res.latency_s * 1000:.0f} ms)")
    for name, value in res.headers.items():  # an API may echo a credential in a header
        print(f"{name}: {builder.mask_text(value)}")
    print()
    print(builder.mask_text(res.body.decode("utf-8", "replace")))
    return 0 if 200 <= res.status < 300 else 1
