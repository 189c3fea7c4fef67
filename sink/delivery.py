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
from sink.contract import duplicate_keys
from sink.endpoint import EndpointBuilder, PreparedRequest
from sink.health import Health
from sink.http_client import HttpClient, HttpResult
from sink.metrics import Metrics
from sink.records import Batch, SinkRecord
from sink.replay import Replayer
from sink.reporting import Reporter, encodable, json_text, parse_body
from sink.retry import PUSHBACK, Backoff, Verdict, classify, parse_retry_after

log = logging.getLogger(__name__)

PENDING_JOB_STATES = frozenset({"QUEUED", "IN_PROGRESS", "PENDING", "RUNNING"})
# Job outcomes that are final for the records, with their dead-letter reason.
FINAL_JOB_REASONS = {"REDIRECTED": "redirected", "VALIDATION_ERROR": "job-validation-error"}
VALIDATION_STATES = frozenset({"VALIDATION_ERROR", "VALIDATION_FAILED"})
# The states a job can end in here; any other the API names is counted as OTHER (a metric
# label per string an API makes up would grow without bound).
JOB_END_STATES = frozenset(
    {"SUCCESS", "FAILED", "VALIDATION_ERROR", "NOT_FOUND", "TIMEOUT", "REDIRECTED"}
)
# What a job id looks like (Clari's are 24 hex characters). Anything else is not followed:
# it goes into the job-status URL, every response message and the logs.
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

# Naming culprits in an error body (rejected_ids). Values under these keys are ids.
ID_KEYS = frozenset(
    {"id", "ids", "recordid", "recordids", "record_id", "record_ids", "primarykey", "externalid"}
)
# In free text (Clari's "... for record with id X", "Duplicate record with value X ..."),
# a word right after one of these names an id, whatever it looks like; any other word
# must be a non-numeric id to count: "Data set 7" or "limit to 100" name no record.
NAMING_WORDS = frozenset({"id", "ids", "value", "key", "record", "recordid"})
_QUOTES = "'\"`\u2018\u2019\u201c\u201d"
_TOKEN_EDGES = _QUOTES + "()[]{}<>,;:.!?"
BODY_NODE_BUDGET = 200_000  # values of an error body walked at most (a 1 MiB body holds fewer)

# A 400 that names no record is split in halves to find the culprits, except for these
# codes: they refuse the whole call (integration off, no schema, not a file), so every
# half would be refused again.
BATCH_WIDE_ERRORS = frozenset({"INVALID_CONFIGURATION", "INVALID_FILE_FORMAT", "SCHEMA_MISSING"})
HEALTH_BODY_CHARS = 512  # of an answer's body shown on /readyz
LOCATION_CHARS = 2_048  # of a redirect's Location named in responses and dead letters


@dataclass(slots=True)
class JobResult:
    state: str  # SUCCESS, FAILED, VALIDATION_ERROR, TIMEOUT
    result: HttpResult
    errors: Any = None


def job_id_of(body: Any) -> str | None:
    """The job id an answer names, as text, whatever it is (the caller checks it against
    JOB_ID: a float, a list or 100 kB of text is named, then refused)."""
    if isinstance(body, dict):
        job = body.get("jobId") or body.get("job_id")
        if isinstance(job, str):
            return job
        if isinstance(job, int) and not isinstance(job, bool):
            return str(job)
        if job:  # true, 1e+30, a list: in brackets, so that JOB_ID refuses them
            return f"({json_text(job)[:256]})"
    return None


def job_state_of(res: HttpResult) -> tuple[str | None, Any]:
    """The job's state and its error list from a Get Ingest Job Status answer."""
    body = parse_body(res.body)
    inner = body.get("message") if isinstance(body, dict) else None
    state = inner.get("status") if isinstance(inner, dict) else None
    if isinstance(state, str):
        state = state.upper()[:64]
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
    """Ids of the batch's records that the API's error body names (e.g. a duplicate id).

    The body's structure is walked, not its text searched: values under id keys (ids
    compared as text, so 7 and "7" both name record 7), whole strings equal to an id
    that is not a number, and ids in free text where a word like "id" or quotes mark
    them (see NAMING_WORDS). Numbers elsewhere (positions, counts, limits) name nothing. Work is
    linear in the body and the batch: one set lookup per value or word."""
    wanted: dict[str, Any] = {str(r.rid): r.rid for r in batch.records if r.rid is not None}
    if not wanted or body is None:
        return set()
    id_keys = ID_KEYS | {id_field.lower()}
    found: set[str] = set()
    stack: list[tuple[Any, bool]] = [(body, False)]
    budget = BODY_NODE_BUDGET
    while stack and budget > 0:
        node, under_id = stack.pop()
        budget -= 1
        if isinstance(node, dict):
            stack.extend(
                (v, under_id or (isinstance(k, str) and k.lower() in id_keys))
                for k, v in node.items()
            )
        elif isinstance(node, list):
            stack.extend((v, under_id) for v in node)  # a list under "ids" holds ids
        elif isinstance(node, bool) or node is None or isinstance(node, float):
            continue  # true, null and 7.0 are nobody's id
        elif isinstance(node, int):
            if under_id and str(node) in wanted:
                found.add(str(node))
        elif isinstance(node, str):
            if node in wanted and (under_id or not _numeric(node)):
                found.add(node)
            elif not under_id:
                _ids_in_text(node, wanted, found)
    return found


def _ids_in_text(text: str, wanted: dict[str, Any], found: set[str]) -> None:
    previous = ""
    for word in text.split():
        bare = word.strip(_TOKEN_EDGES)
        named = not _numeric(bare) or previous in NAMING_WORDS or word[:1] in _QUOTES
        if named and bare in wanted:
            found.add(bare)
        previous = bare.lower()


def _numeric(text: str) -> bool:
    """An id that reads as a number ("7", "-7"), whether the record held it as an integer
    or as text (record_id gives both as text): alone in a body it is as likely a row,
    a position or a count, so it names a record only under an id key or a naming word."""
    return text.removeprefix("-").isdecimal()


def splittable(status: int | None, body: Any, count: int) -> bool:
    """Whether a refusal naming no record is worth splitting the batch in halves for: a
    400 (what Clari answers for one bad record), more than one record, and no error code
    that refuses the whole call whatever it holds."""
    if status != 400 or count < 2:
        return False
    errors = body if isinstance(body, list) else [body]
    codes = {e.get("errorCode") for e in errors if isinstance(e, dict)}
    codes.discard(None)
    return not codes or not codes <= BATCH_WIDE_ERRORS


def sub_batch(batch: Batch, records: list[SinkRecord], part: int) -> Batch:
    """Part ``part`` (1 or 2) of ``batch``: its own id for the response topic, and
    isLastBatch only on the part that ends the batch."""
    sub = Batch(id=f"{batch.id}.{part}", group=batch.group, records=records)
    sub.is_last = batch.is_last and part == 2
    sub.lanes = batch.lanes  # where it came from (its entity, for sink/last_batch.py)
    return sub


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
        on_rate_limited: Callable[[], None] = lambda: None,
        on_success: Callable[[], None] = lambda: None,
        replayer: Replayer | None = None,
        on_accepted: Callable[[Batch], None] = lambda batch: None,
    ) -> None:
        self.s = settings
        self.on_accepted = on_accepted  # sink/last_batch.py: an initial load closed
        self.http = http
        self.builder = builder
        self.reporter = reporter
        self.metrics = metrics
        self.health = health
        self.on_pushback = on_pushback
        self.on_rate_limited = on_rate_limited
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
        await self._unpark(batch)  # handed back parked by a rebalance
        await self._deliver(batch, on_sent)

    async def _deliver(self, batch: Batch, on_sent: Callable[[], None]) -> None:
        """deliver() for ``batch`` or a part of it (see splittable())."""
        attempt = 0  # calls that count against RETRY_MAX_ATTEMPTS
        calls = 0
        while batch.count:
            calls += 1
            req = self.builder.build(batch, batch.is_last)
            res = await self.http.call(req)
            req.release()  # sent: don't hold a 10 MB bulk file while its job runs
            self._observe(res)
            entity = self.builder.routes.for_batch(batch).label
            self.metrics.entity_requests.labels(
                entity=entity, status=str(res.status or "none")
            ).inc()
            verdict = classify(res.status)
            body = parse_body(res.body)
            job_id = job_id_of(body) if verdict is Verdict.OK else None
            if verdict is not Verdict.AUTH:
                attempt += 1

            if job_id is not None and not JOB_ID.fullmatch(job_id):
                if not self.follow_jobs:
                    job_id = None  # not followed anyway: only not repeated everywhere
                else:
                    # Clari may hold the file, but its job cannot be followed: let a person
                    # look (the answer is on the response topic) and replay the records.
                    res.error = f"the answer's jobId is not a job id: {job_id[:64]!r}"
                    on_sent()
                    await self._final_error(batch, req, res, calls, "invalid-job-id", res.error)
                    return

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
                    final = FINAL_JOB_REASONS.get(job.state)
                    if final is not None:  # the job's answer is final for these records
                        on_sent()
                        await self._publish_job(batch, job, job_id, calls, "dead-lettered")
                        await self.reporter.dead_letter(
                            batch.records,
                            reason=final,
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
                    # A state the API made up is "failed": reasons are metric labels too.
                    ended = job.state if job.state in JOB_END_STATES else "FAILED"
                    if await self._gave_up(
                        batch, attempt, calls, f"job-{ended.lower()}", job.result, job.errors
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

            if verdict is Verdict.REDIRECT:
                res.error = self._redirect_note(res)
                self.health.fail("api", res.error)
                on_sent()
                await self._final_error(batch, req, res, calls, "redirected", res.error)
                return

            if verdict is Verdict.REJECT:
                if doubled := duplicate_keys(batch.records):
                    # A key twice in a record: the sink and Clari read different ids, so
                    # the error's ids would blame the wrong records. These go first.
                    for record, error in doubled:
                        await self.reporter.dead_letter(
                            [record], reason=error.reason, batch_id=batch.id,
                            error=error.detail, attempts=calls,
                        )  # fmt: skip
                    gone = {id(r) for r, _ in doubled}
                    batch.records = [r for r in batch.records if id(r) not in gone]
                    if batch.count:
                        continue
                    on_sent()
                    return
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
                if not ids and splittable(res.status, body, batch.count):
                    # Named no one: send each half on its own, the first before the second
                    # (a key may be in both), until the culprits stand alone. A bad record
                    # costs two calls per halving: 2·log2(n) at most.
                    records = batch.records
                    half = (len(records) + 1) // 2
                    await self.reporter.api_call(
                        batch, req, res, attempt=calls, outcome="split", kind=self.kind
                    )
                    await self._deliver(sub_batch(batch, records[:half], 1), lambda: None)
                    await self._deliver(sub_batch(batch, records[half:], 2), on_sent)
                    return
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
                shown = self.builder.mask_text(
                    res.body[:HEALTH_BODY_CHARS].decode("utf-8", "replace")
                )
                self.health.fail("auth", f"credential rejected: HTTP {res.status} {shown}")
            else:
                # aiohttp's error text can carry the URL: mask any secret a user put there.
                self.health.fail("api", self.builder.mask_text(f"HTTP {res.status or res.error}"))
            if res.status == 429:
                self.on_rate_limited()  # the rate, not the calls in flight (rate_share.py)
            elif res.status in PUSHBACK:
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
            # Detail: the API's state is logged once per outage (sink/outage.py, through
            # health.fail above), not once per call of every lane.
            log.debug(
                "batch %s: %s, retrying in %.2fs (call %d)",
                batch.id,
                res.status or self.builder.mask_text(res.error or ""),
                wait,
                calls,
            )
            await asyncio.sleep(wait)

    # -- helpers -----------------------------------------------------------------------
    async def _final_error(
        self, batch: Batch, req: PreparedRequest, res: HttpResult, calls: int, reason: str, why: str
    ) -> None:
        """Publish the call and dead-letter the batch: an answer no retry can change."""
        await self.reporter.api_call(
            batch, req, res, attempt=calls, outcome="dead-lettered", kind=self.kind
        )
        await self.reporter.dead_letter(
            batch.records,
            reason=reason,
            batch_id=batch.id,
            status=res.status,
            error=why,
            attempts=calls,
        )

    def _redirect_note(self, res: HttpResult) -> str:
        """What a 3xx said, for the response message, the dead letters and /readyz."""
        location = res.headers.get("Location")  # aiohttp spells known names so
        where = (
            self.builder.mask_text(encodable(location[:LOCATION_CHARS]))
            if location
            else "(no Location)"
        )
        return (
            f"HTTP {res.status} redirect to {where} not followed: it would send the "
            "credentials there (check CLARI_BASE_URL / CLARI_URL)"
        )

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
        entity = self.builder.routes.for_batch(batch).label
        self.metrics.entity_records.labels(entity=entity, outcome="delivered").inc(batch.size)
        self.on_accepted(batch)

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
        self.metrics.jobs.labels(state=job.state if job.state in JOB_END_STATES else "OTHER").inc()
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
            if classify(last.status) is Verdict.REDIRECT:
                last.error = self._redirect_note(last)
                self.health.fail("api", last.error)
                return JobResult("REDIRECTED", last, last.error)
            state, errors = job_state_of(last)
            if state is None or state in PENDING_JOB_STATES:
                continue
            if state == "NOT_FOUND":
                return JobResult("FAILED", last, errors)
            return JobResult(state, last, errors)
        log.error("batch %s: job %s did not end within JOB_TIMEOUT_S", batch.id, job_id)
        return JobResult("TIMEOUT", last, {"error": "job did not end within JOB_TIMEOUT_S"})
