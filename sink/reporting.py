"""The response topic (one message per API call) and the dead-letter topic.

Writes here are retried until the broker takes them: a batch whose response or dead
letters are not acknowledged stays unresolved, so its offsets are never committed. What
the broker refuses as too large is written once more, cut to fit and flagged
(``clari-sink.truncated``); what the topic itself refuses (its name, its ACLs) is shown
on /readyz and logged as an error naming the topic, and tried again slowly.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from sink.endpoint import EndpointBuilder, PreparedRequest
from sink.health import Health
from sink.http_client import HttpResult
from sink.metrics import Metrics
from sink.producer import AsyncProducer, ProduceError
from sink.records import Batch, Headers, SinkRecord

log = logging.getLogger(__name__)
H = "clari-sink."  # prefix of the headers this sink adds

# An answer nested deeper than this is kept as text: orjson cannot encode 255 levels (the
# response message adds one), Python's str() of a list 1,000 deep raises RecursionError,
# and no API answer worth reading is this deep.
MAX_BODY_DEPTH = 64
# The most of an answer's body a response message carries: the rest is cut, and said so.
# Well under the producer's 1 MB, with room for the request, the keys and the sources.
RESPONSE_BODY_MAX = 256 * 1024
# Cut to fit: the most of a value kept when the broker refuses a message as too large
# (below the producer's and the broker's default 1 MB limits, with room for headers).
TRUNCATED_MAX_BYTES = 900_000
# Not a passing fault: an operator must change the topic. Wait this long between tries
# at the most, and at least PERMANENT_RETRY_MIN_S, so each try is one clear log line.
PERMANENT_RETRY_MIN_S = 5.0
RETRY_MAX_S = 30.0


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _keys_of(batch: Batch) -> dict[str, Any]:
    """The batch's distinct message keys as text (the first 100 in record order) and their
    count: what a reader correlates an API call with."""
    shown = batch.first_keys()
    return {"keys": [k.decode("utf-8", "replace") for k in shown], "keyCount": len(batch.keys)}


def parse_body(body: bytes) -> Any:
    """The answer's body as JSON where it is JSON, else as text (None when empty). JSON
    nested deeper than MAX_BODY_DEPTH is text too: whatever is done with the answer
    later (encoding it, str(), walking it) is then safe."""
    if not body:
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:  # not JSON, invalid UTF-8, deeper than orjson's 1,024
        return body.decode("utf-8", "replace")
    if _deeper_than(parsed, MAX_BODY_DEPTH):
        return body.decode("utf-8", "replace")
    return parsed


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether JSON ``value`` nests more than ``limit`` levels (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def json_text(value: Any) -> str:
    """``value`` as JSON text; text that says so if it cannot be encoded (never raises)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError: too deep, an integer over 64 bits, ...
        return f"<{type(value).__name__} that cannot be encoded as JSON>"


def encodable(text: str) -> str:
    """``text`` as valid UTF-8: aiohttp decodes header bytes that are not UTF-8 into lone
    surrogates, which orjson and str.encode() refuse; they are written as \\udcxx."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def _scrubbed(value: Any) -> Any:
    """A response message with every string encodable (its body is text by then: the
    message is a few levels deep, built here)."""
    if isinstance(value, str):
        return encodable(value)
    if isinstance(value, dict):
        return {k: _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v) for v in value]
    return value


def _cut_text(data: bytes, limit: int) -> str:
    """The first ``limit`` bytes of ``data`` as text (a character cut in two is dropped)."""
    return data[:limit].decode("utf-8", "ignore" if len(data) > limit else "replace")


def _header_bytes(headers: Headers) -> int:
    # Each header costs its name, its value and a few bytes of lengths in the record.
    return sum(
        len(name) + len(value.encode() if isinstance(value, str) else value or b"") + 8
        for name, value in headers
    )


class Reporter:
    def __init__(
        self,
        producer: AsyncProducer,
        *,
        response_topic: str | None,
        dlq_topic: str,
        builder: EndpointBuilder,
        metrics: Metrics,
        health: Health,
    ) -> None:
        self._producer = producer
        self.response_topic = response_topic
        self.dlq_topic = dlq_topic
        self._mask = builder.mask_text
        self._routes = builder.routes
        self._metrics = metrics
        self._health = health

    async def api_call(
        self,
        batch: Batch,
        req: PreparedRequest,
        res: HttpResult,
        *,
        attempt: int,
        outcome: str,
        kind: str = "ingest",
        job_id: str | None = None,
        job_status: str | None = None,
    ) -> None:
        """Publish one API call and its answer (a no-op when the response webhook is off)."""
        if self.response_topic is None:
            return
        route = self._routes.for_batch(batch)
        message = {
            "batchId": batch.id,
            "entity": route.path or None,
            "sourceEntity": route.source_entity,
            "kind": kind,
            "attempt": attempt,
            "outcome": outcome,
            "request": {
                "method": req.method,
                "url": self._mask(req.url),
                "records": req.records,
                "bytes": req.nbytes,
            },
            "status": res.status,
            "error": res.error,
            **_answer_body(res.body, res.truncated, RESPONSE_BODY_MAX),
            "jobId": job_id,
            "jobStatus": job_status,
            "latencyMs": round(res.latency_s * 1000, 1),
            "recordCount": batch.size,
            "sources": [r.as_dict() for r in batch.ranges()],
            **_keys_of(batch),
            "group": batch.group or None,
            "timestamp": _now_iso(),
        }
        headers: Headers = [
            ("content-type", b"application/json"),
            (H + "kind", kind.encode()),
            (H + "status", str(res.status or 0).encode()),
            (H + "outcome", outcome.encode()),
        ]

        def shrink(limit: int) -> bytes:
            """The message in at most ``limit`` bytes, still JSON: the answer's body cut
            shorter until it fits, then the keys left out."""
            smaller = {**message, **_answer_body(b"", True, 0)}
            budget = limit - len(self._encode(smaller, b"", 0)) - 64
            while True:
                smaller.update(_answer_body(res.body, True, max(0, budget)))
                value = self._encode(smaller, res.body, max(0, budget))
                if len(value) <= limit:
                    return value
                if budget > 0:  # escaping made the text longer than its bytes
                    budget = min(budget // 2, budget - (len(value) - limit))
                elif smaller["keys"]:
                    smaller["keys"] = []
                    budget = limit - len(self._encode({**smaller, "body": None}, b"", 0)) - 64
                else:
                    return value  # cut blindly by _fit: a topic limit of a few hundred bytes

        value = self._encode(message, res.body, RESPONSE_BODY_MAX)
        await self._write(self.response_topic, value, batch.id.encode(), headers, shrink)

    def _encode(self, message: dict[str, Any], body: bytes, limit: int) -> bytes:
        """The message as masked JSON. Should its body not encode (parse_body keeps that
        from happening), the body goes as text: a response message never stops the sink."""
        try:
            text = orjson.dumps(message).decode()
        except TypeError:
            text = orjson.dumps(_scrubbed({**message, **_answer_body(body, True, limit)})).decode()
        return self._mask(text).encode()

    async def dead_letter(
        self,
        records: list[SinkRecord],
        *,
        reason: str,
        batch_id: str | None = None,
        status: int | None = None,
        error: Any = None,
        attempts: int = 0,
    ) -> None:
        """Write each record to the dead-letter topic with why, from where, and when."""
        if not records:
            return
        error_text = (
            error if isinstance(error, str) else (json_text(error) if error is not None else "")
        )
        error_text = self._mask(encodable(error_text[:65_536]))[:16_384]
        failed_at = _now_iso().encode()
        writes = []
        for r in records:
            headers: Headers = list(r.headers or [])
            headers += [
                (H + "source.topic", r.topic.encode()),
                (H + "source.partition", str(r.partition).encode()),
                (H + "source.offset", str(r.offset).encode()),
                (H + "source.timestamp", str(r.timestamp_ms).encode()),
                (H + "error.reason", reason.encode()),
                (H + "error.body", error_text.encode()),
                (H + "http.status", str(status or "").encode()),
                (H + "attempts", str(attempts).encode()),
                (H + "failed.at", failed_at),
            ]
            if batch_id:
                headers.append((H + "batch.id", batch_id.encode()))
            writes.append(self._write(self.dlq_topic, r.value, r.key, headers))
        await asyncio.gather(*writes)
        self._metrics.dead_lettered.labels(reason=reason).inc(len(records))
        for topic, count in Counter(r.topic for r in records).items():
            entity = self._routes.for_topic(topic).label
            self._metrics.entity_records.labels(entity=entity, outcome="dead-lettered").inc(count)
        log.warning(
            "dead-lettered %d record(s)",
            len(records),
            extra={
                "reason": reason,
                "status": status,
                "batch": batch_id,
                "first": records[0].where,
            },
        )

    async def _write(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Headers,
        shrink: Callable[[int], bytes] | None = None,
    ) -> None:
        """Write until the broker takes the message. Refused as too large, it is written
        once more cut to fit (``shrink(n)``: the value in at most n bytes; by default its
        first n bytes); refused for good, the topic is named on /readyz and in the log."""
        delay = 0.5
        while True:
            try:
                await self._producer.produce(topic, value, key, headers)
                self._health.clear("output-topics")
                return
            except ProduceError as exc:
                err = exc
            if err.too_large:
                fitted = await self._fit(topic, value, key, headers, shrink)
                if fitted is not None:
                    try:
                        await self._producer.produce(topic, *fitted)
                        self._health.clear("output-topics")
                        log.warning(
                            "a message of %d bytes is too large for topic '%s': written cut "
                            "to %d bytes, with header %struncated",
                            len(value or b""),
                            topic,
                            len(fitted[0] or b""),
                            H,
                        )
                        return
                    except ProduceError as exc:
                        err = exc
            self._metrics.produce_errors.labels(topic=topic).inc()
            if err.permanent:
                delay = max(delay, PERMANENT_RETRY_MIN_S)
                self._health.fail(
                    "output-topics",
                    f"topic '{topic}' refuses writes ({err.error}): fix the topic's name, "
                    "ACLs or max.message.bytes; offsets stay uncommitted until then",
                )
                log.error(
                    "cannot write to topic '%s': it refuses writes (%s), which is not a "
                    "passing fault: fix the topic's name, ACLs or max.message.bytes. The "
                    "affected offsets stay uncommitted; the write is tried again in %.0fs",
                    topic,
                    err.error,
                    delay,
                )
            else:
                self._health.fail("output-topics", str(err))
                # With the broker away, its outage is what the log tells (sink/outage.py).
                log.log(
                    logging.DEBUG if self._health.down("kafka") else logging.ERROR,
                    "cannot write to topic '%s'; the affected offsets stay uncommitted "
                    "and the write is retried in %.1fs: %s",
                    topic,
                    delay,
                    err.error,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def _fit(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Headers,
        shrink: Callable[[int], bytes] | None,
    ) -> tuple[bytes, bytes | None, Headers] | None:
        """The message cut to fit ``topic`` and flagged so, keeping the sink's headers
        (the source topic, partition and offset among them); None if even those cannot."""
        limit = await self._producer.message_limit(topic)
        # Room for the record's framing, and for lz4 growing what it cannot compress.
        room = min(TRUNCATED_MAX_BYTES, int(limit * 0.99) - 1_024)
        size = len(value or b"")
        flags: Headers = [(H + "truncated", b"true"), (H + "original.bytes", str(size).encode())]
        kept = [*headers, *flags]
        left = room - len(key or b"") - _header_bytes(kept)
        if left < 0:
            # The record's own headers take the room: keep the sink's, count the others.
            ours = [h for h in headers if h[0].startswith(H)]
            dropped = (H + "headers.dropped", str(len(headers) - len(ours)).encode())
            kept = [*ours, *flags, dropped]
            left = room - len(key or b"") - _header_bytes(kept)
        if left < 0:
            return None
        cut = (shrink or (lambda n: (value or b"")[:n]))(left)
        return cut[:left], key, kept


def _answer_body(body: bytes, truncated: bool, limit: int) -> dict[str, Any]:
    """The ``body`` field of a response message: the answer as JSON, or as text when it
    is not JSON, too deep, or longer than ``limit`` bytes (then cut, and flagged so)."""
    if not truncated and len(body) <= limit:
        return {"body": parse_body(body)}
    return {"body": _cut_text(body, limit), "bodyTruncated": True, "bodyBytes": len(body)}
