"""Deliver one batch: send, classify, retry, follow the bulk job, dead-letter what cannot succeed.

``Delivery.deliver`` returns only when every record of the batch is resolved: accepted
by the API or written to the dead-letter topic. Every API call it makes is published to
the response topic before it goes on.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sink.config import Settings
from sink.endpoint import EndpointBuilder
from sink.health import Health
from sink.http_client import HttpClient, HttpResult
from sink.metrics import Metrics
from sink.records import Batch
from sink.replay import Replayer
from sink.reporting import Reporter, parse_body
from sink.retry import PUSHBACK, Backoff, Verdict, classify, parse_retry_after

log = logging.getLogger(__name__)

PENDING_JOB_STATES = frozenset({"QUEUED", "IN_PROGRESS", "PENDING", "RUNNING"})
VALIDATION_STATES = frozenset({"VALIDATION_ERROR", "VALIDATION_FAILED"})


@dataclass(slots=True)
class JobResult:
    state: str  # SUCCESS, FAILED, VALIDATION_ERROR, TIMEOUT
    result: HttpResult
    errors: Any = None


def job_id_of(body: Any) -> str | None:
    if isinstance(body, dict):
        job = body.get("jobId") or body.get("job_id")
        if isinstance(job, str | int):
            return str(job)
    return None


def job_state_of(res: HttpResult) -> tuple[str | None, Any]:
    """The job's state and its error list from a Get Ingest Job Status answer."""
    body = parse_body(res.body)
    inner = body.get("message") if isinstance(body, dict) else None
    state = inner.get("status") if isinstance(inner, dict) else None
    if isinstance(state, str):
        state = state.upper()
        return ("VALIDATION_ERROR" if state in VALIDATION_STATES else state), inner
    # The spec's 400 and 500 bodies carry no status field: the HTTP status says it.
    if res.status == 400:
        return "VALIDATION_ERROR", inner if inner is not None else body
    if res.status == 500 and "fail" in str(body).lower():
        return "FAILED", body
    if res.status == 404:
        return "NOT_FOUND", body
    if res.status == 200:
        return "SUCCESS", body
    return None, body


def rejected_ids(body: Any, batch: Batch, id_field: str) -> set[str]:
    """Ids of the batch's records that the API's error body names (e.g. a duplicate id)."""
    text = str(body)
    found: set[str] = set()
    for r in batch.records:
        rid = r.rid
        if rid is not None and re.search(rf"(?<![\w-]){re.escape(str(rid))}(?![\w-])", text):
            found.add(str(rid))
    return found


class Delivery:
    def __init__(
        self,
        settings: Settings,
        http: HttpClient,
        builder: EndpointBuilder,
        reporter: Reporter,
        metrics: Metrics,
        health: Health,
        on_pushback: Callable[[], None] = lambda: None,
        on_success: Callable[[], None] = lambda: None,
        replayer: Replayer | None = None,
    ) -> None:
        self.s = settings
        self.http = http
        self.builder = builder
        self.reporter = reporter
        self.metrics = metrics
        self.health = health
        self.on_pushback = on_pushback
        self.on_success = on_success
        self.replayer = replayer
        self.backoff = Backoff(
            settings.retry_backoff_initial_ms / 1000, settings.retry_backoff_max_ms / 1000
        )
        self.follow_jobs = settings.clari_template != "upload-entity-data"
        self.kind = "bulk" if settings.clari_template == "ingest-bulk-entities" else "ingest"

    async def deliver(self, batch: Batch, on_sent: Callable[[], None] = lambda: None) -> None:
        """Deliver ``batch``. ``on_sent`` is called once the API has given its final answer
        (no further call will be made for this batch), before that answer is published:
        the caller may then let the next batch with the same keys go, and start another."""
        attempt = 0  # calls that count against RETRY_MAX_ATTEMPTS
        calls = 0
        await self._unpark(batch)  # handed back parked by a rebalance
        while batch.count:
            calls += 1
            req = self.builder.build(batch, batch.is_last)
            res = await self.http.call(req)
            req.release()  # sent: don't hold a 10 MB bulk file while its job runs
            self._observe(res)
            verdict = classify(res.status)
            body = parse_body(res.body)
            job_id = job_id_of(body) if verdict is Verdict.OK else None
            if verdict is not Verdict.AUTH:
                attempt += 1

            if verdict is Verdict.OK:
                self.health.clear("api")
                self.health.clear("auth")
                self.on_success()
                if job_id and self.follow_jobs:
                    if self.replayer is not None:
                        # Clari holds the file now: don't hold its records while the job
                        # runs. Kafka keeps them (uncommitted) should the job not succeed.
                        batch.park()
                    await self.reporter.api_call(
                        batch,
                        req,
                        res,
                        attempt=calls,
                        outcome="job-submitted",
                        kind=self.kind,
                        job_id=job_id,
                    )
                    job = await self._follow_job(batch, job_id)
                    if job.state == "SUCCESS":
                        on_sent()
                        await self._publish_job(batch, job, job_id, calls, "delivered")
                        return self._delivered(batch)
                    await self._unpark(batch)  # to dead-letter them, or submit them again
                    if job.state == "VALIDATION_ERROR":
                        on_sent()
                        await self._publish_job(batch, job, job_id, calls, "dead-lettered")
                        await self.reporter.dead_letter(
                            batch.records,
                            reason="job-validation-error",
                            batch_id=batch.id,
                            status=job.result.status,
                            error=job.errors,
                            attempts=calls,
                        )
                        return
                    # FAILED, lost or timed out: the whole file is submitted again.
                    outcome = "retrying" if not self._exhausted(attempt) else "dead-lettered"
                    if self._exhausted(attempt):
                        on_sent()
                    await self._publish_job(batch, job, job_id, calls, outcome)
                    if await self._gave_up(
                        batch, attempt, calls, f"job-{job.state.lower()}", job.result, job.errors
                    ):
                        return
                    continue
                on_sent()
                await self.reporter.api_call(
                    batch,
                    req,
                    res,
                    attempt=calls,
                    outcome="delivered",
                    kind=self.kind,
                    job_id=job_id,
                )
                return self._delivered(batch)

            if verdict is Verdict.REJECT:
                ids = rejected_ids(body, batch, self.s.clari_id_field)
                if ids and len(ids) < len(batch.records):
                    # The API named the culprits: dead-letter those, send the rest again.
                    bad = [r for r in batch.records if r.rid is not None and str(r.rid) in ids]
                    gone = {id(r) for r in bad}
                    await self.reporter.api_call(
                        batch, req, res, attempt=calls, outcome="partially-rejected", kind=self.kind
                    )
                    await self.reporter.dead_letter(
                        bad,
                        reason="rejected-by-api",
                        batch_id=batch.id,
                        status=res.status,
                        error=body,
                        attempts=calls,
                    )
                    batch.records = [r for r in batch.records if id(r) not in gone]
                    continue
                on_sent()
                await self.reporter.api_call(
                    batch, req, res, attempt=calls, outcome="dead-lettered", kind=self.kind
                )
                await self.reporter.dead_letter(
                    batch.records,
                    reason="rejected-by-api",
                    batch_id=batch.id,
                    status=res.status,
                    error=body,
                    attempts=calls,
                )
                return

            if verdict is Verdict.AUTH:
                self.health.fail("auth", f"credential rejected: HTTP {res.status} {body}")
            else:
                # aiohttp's error text can carry the URL: mask any secret a user put there.
                self.health.fail("api", self.builder.mask_text(f"HTTP {res.status or res.error}"))
            if res.status in PUSHBACK:
                self.on_pushback()
            exhausted = verdict is Verdict.RETRY and self._exhausted(attempt)
            if exhausted:
                on_sent()
            await self.reporter.api_call(
                batch,
                req,
                res,
                attempt=calls,
                kind=self.kind,
                outcome="dead-lettered" if exhausted else "retrying",
            )
            reason = "auth" if verdict is Verdict.AUTH else str(res.status or "no-answer")
            self.metrics.retries.labels(reason=reason).inc()
            if verdict is Verdict.RETRY and await self._gave_up(
                batch, attempt, calls, "retries-exhausted", res, body
            ):
                return
            retry_after = parse_retry_after(res.headers.get("Retry-After"))
            wait = self.backoff.delay(
                max(attempt, 1) if verdict is Verdict.RETRY else 30, retry_after
            )
            log.warning(
                "batch %s: %s, retrying in %.2fs (call %d)",
                batch.id,
                res.status or self.builder.mask_text(res.error or ""),
                wait,
                calls,
            )
            await asyncio.sleep(wait)

    # -- helpers -----------------------------------------------------------------------
    def _exhausted(self, attempt: int) -> bool:
        limit = self.s.retry_max_attempts
        return limit > 0 and attempt >= limit

    async def _gave_up(
        self, batch: Batch, attempt: int, calls: int, reason: str, res: HttpResult, error: Any
    ) -> bool:
        if not self._exhausted(attempt):
            return False
        await self.reporter.dead_letter(
            batch.records,
            reason=reason,
            batch_id=batch.id,
            status=res.status,
            error=error or res.error,
            attempts=calls,
        )
        return True

    def _delivered(self, batch: Batch) -> None:
        self.metrics.delivered.inc(batch.size)

    async def _unpark(self, batch: Batch) -> None:
        if batch.parked is not None:
            assert self.replayer is not None
            batch.unpark(await self.replayer.fetch(batch.parked))
            self.metrics.replayed.inc(len(batch.records))

    def _observe(self, res: HttpResult, kind: str | None = None) -> None:
        kind = kind or self.kind
        self.metrics.requests.labels(kind=kind, status=str(res.status or "none")).inc()
        self.metrics.request_seconds.labels(kind=kind).observe(res.latency_s)

    async def _publish_job(
        self, batch: Batch, job: JobResult, job_id: str, calls: int, outcome: str
    ) -> None:
        self.metrics.jobs.labels(state=job.state).inc()
        req = self.builder.job_request(job_id)
        await self.reporter.api_call(
            batch,
            req,
            job.result,
            attempt=calls,
            outcome=outcome,
            kind="job-status",
            job_id=job_id,
            job_status=job.state,
        )

    async def _follow_job(self, batch: Batch, job_id: str) -> JobResult:
        delay = self.s.job_poll_initial_ms / 1000
        deadline = time.monotonic() + self.s.job_timeout_s
        last = HttpResult(None, {}, b"", 0.0, "not polled")
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.s.job_poll_max_ms / 1000)
            last = await self.http.call(self.builder.job_request(job_id))
            self._observe(last, "job-status")
            state, errors = job_state_of(last)
            if state is None or state in PENDING_JOB_STATES:
                continue
            if state == "NOT_FOUND":
                return JobResult("FAILED", last, errors)
            return JobResult(state, last, errors)
        log.error("batch %s: job %s did not end within JOB_TIMEOUT_S", batch.id, job_id)
        return JobResult("TIMEOUT", last, {"error": "job did not end within JOB_TIMEOUT_S"})
