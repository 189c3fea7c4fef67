"""The response topic (one message per API call) and the dead-letter topic.

Writes here are retried until the broker takes them: a batch whose response or dead
letters are not acknowledged stays unresolved, so its offsets are never committed.
"""

from __future__ import annotations

import asyncio
import logging
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


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _keys_of(batch: Batch) -> dict[str, Any]:
    """The batch's distinct message keys as text (the first 100 in record order) and their
    count: what a reader correlates an API call with."""
    shown = batch.first_keys()
    return {"keys": [k.decode("utf-8", "replace") for k in shown], "keyCount": len(batch.keys)}


def parse_body(body: bytes) -> Any:
    """The answer's body as JSON where it is JSON, else as text (None when empty)."""
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")


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
        body = parse_body(res.body)
        message = {
            "batchId": batch.id,
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
            "body": body,
            "jobId": job_id,
            "jobStatus": job_status,
            "latencyMs": round(res.latency_s * 1000, 1),
            "recordCount": batch.size,
            "sources": [r.as_dict() for r in batch.ranges()],
            **_keys_of(batch),
            "group": batch.group or None,
            "timestamp": _now_iso(),
        }
        value = self._mask(orjson.dumps(message).decode()).encode()
        headers: Headers = [
            ("content-type", b"application/json"),
            (H + "kind", kind.encode()),
            (H + "status", str(res.status or 0).encode()),
            (H + "outcome", outcome.encode()),
        ]
        await self._write(self.response_topic, value, batch.id.encode(), headers)

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
            error
            if isinstance(error, str)
            else (orjson.dumps(error).decode() if error is not None else "")
        )
        error_text = self._mask(error_text)[:16_384]
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
    ) -> None:
        delay = 0.5
        while True:
            try:
                await self._producer.produce(topic, value, key, headers)
                self._health.clear("output-topics")
                return
            except ProduceError as exc:
                self._metrics.produce_errors.labels(topic=topic).inc()
                self._health.fail("output-topics", str(exc))
                log.error(
                    "cannot write to topic '%s'; the affected offsets stay uncommitted "
                    "and the write is retried in %.1fs: %s",
                    topic,
                    delay,
                    exc.error,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
