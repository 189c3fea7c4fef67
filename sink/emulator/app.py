"""Clari ingest API emulator (aiohttp): the published contract (part A of clari-api.md),
the form the Nexla description shows (part B), and fault injection.

API (as Clari):
  POST /v2/ingest/entity/{entity}?mode=&isLastBatch=       upload, at most 100 records
  POST /v2/ingest/bulk/entity/{entity}?mode=&isLastBatch=  multipart JSON file → 202 jobId
  GET  /v2/ingest/job/{jobId}                               job status
  POST /v1/ingest/entity/{entity}?mode=&isLastBatch=       part B: Bearer auth, JSON records
  GET  /v1/ingest/job/{jobId}
  *    /custom/{anything}                                   any method and content type: 200,
                                                            kept in the request log (manual mode)
Control (no auth):
  GET /_emulator/records[?entity=]  GET /_emulator/requests  GET /_emulator/stats
  GET|POST /_emulator/faults        POST /_emulator/reset    GET /_emulator/health
  GET /_emulator/progress           counters and the delivery check, cheap to poll
  GET|POST /_emulator/tracking      the delivery check: POST {"key_field", "seq_field"}
                                    starts it afresh (lost, duplicated, reordered per key)
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from sink.emulator import contract as c
from sink.emulator.state import EmulatorState, Job, Received, Tracking

STATE: web.AppKey[EmulatorState] = web.AppKey("state", EmulatorState)
OVER_RATE: web.RequestKey[bool] = web.RequestKey("over_rate", bool)  # past its token's calls/s
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LOG_BODY_BYTES = 64 * 1024


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def _is_api(path: str) -> bool:
    return path.startswith(("/v1/", "/v2/", "/custom/"))


@web.middleware
async def faults_and_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Log every API request; inject the configured faults before the real handler runs."""
    state = request.app[STATE]
    if not _is_api(request.path):
        return await handler(request)
    state.first_request = state.first_request or time.time()
    # Clari counts 100 calls/s per token where calls arrive (a gateway in front of the
    # service): judged here, before the body is read and the latency simulated. Judged
    # after them, as this emulator once did, its own timer jitter bunched calls and it
    # counted up to 107 in a second the sink had paced at 95.
    token = _token(request)
    if token == state.api_token:
        request[OVER_RATE] = state.over_rate(token)
    state.in_flight.enter()
    try:
        response = await _serve_api(state, request, handler)
    finally:
        state.in_flight.leave()
        state.last_response = time.time()
    return response


async def _serve_api(
    state: EmulatorState, request: web.Request, handler: Handler
) -> web.StreamResponse:
    body = await request.read()
    entry: dict[str, Any] = {
        "time": time.time(),
        "method": request.method,
        "path": request.path,
        "query": {str(k): v for k, v in request.query.items()},
        "headers": {str(k): v for k, v in request.headers.items()},
        "contentType": request.headers.get("Content-Type", ""),
        "bytes": len(body),
        "body": body[:LOG_BODY_BYTES].decode("utf-8", "replace"),
    }
    state.log_request(entry)
    state.count("requests")
    f = state.faults
    if f.latency_ms or f.latency_jitter_ms:
        await asyncio.sleep((f.latency_ms + state.rng.uniform(0, f.latency_jitter_ms)) / 1000)
    roll = state.rng.random()
    injected: int | None = None
    if time.time() < f.down_until:
        injected = 503
    elif f.reset_next >= 1 or roll < f.reset_rate:
        if f.reset_next >= 1:
            f.reset_next -= 1
        entry["status"] = "reset"
        state.count("faults_reset")
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("emulator: injected connection reset")
    elif roll < f.reset_rate + f.rate_429:
        injected = 429
    elif roll < f.reset_rate + f.rate_429 + f.rate_500:
        injected = 500
    elif roll < f.reset_rate + f.rate_429 + f.rate_500 + f.rate_503:
        injected = 503
    if injected is not None:
        state.count(f"faults_{injected}")
        entry["status"] = injected
        headers = {"Retry-After": f"{f.retry_after_s:g}"} if f.retry_after_s is not None else None
        if injected == 429:
            return _json(c.RATE_LIMITED, 429, headers)
        if injected == 500:
            return _json([c.error("INTERNAL_SERVER_ERROR", "Internal server error")], 500)
        return _json({"error": "Service Unavailable"}, 503, headers)
    response = await handler(request)
    entry["status"] = response.status
    entry["answered"] = time.time()  # tests judge what a call could have known
    state.count(f"status_{response.status}")
    return response


def _check_v2_auth(request: web.Request) -> web.Response | None:
    state = request.app[STATE]
    if request.headers.get("apikey") != state.api_token:
        return _json(c.BAD_APIKEY, 401)
    if request.headers.get("partnerkey") != state.partner_key:
        return _json(c.bad_partner_key(), 401)
    if request.get(OVER_RATE):
        return _json(c.RATE_LIMITED, 429)
    return None


def _token(request: web.Request) -> str | None:
    """The credential a call brings: part B's Bearer token, or part A's apikey header."""
    auth = request.headers.get("Authorization", "")
    return auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("apikey")


def _check_v1_auth(request: web.Request) -> web.Response | None:
    state = request.app[STATE]
    if _token(request) != state.api_token:
        return _json(c.BAD_APIKEY, 401)
    if request.get(OVER_RATE):
        return _json(c.RATE_LIMITED, 429)
    return None


def _entity(request: web.Request) -> tuple[str, web.Response | None]:
    entity = request.match_info["entity"].lower()
    if entity not in c.ENTITIES:
        return entity, _json(
            [c.error("SCHEMA_MISSING", f"Partner schema is not registered for entity {entity}")],
            428,
        )
    return entity, None


def _meta(request: web.Request, api: str, entity: str) -> dict[str, Any]:
    q = request.query
    return {
        "api": api,
        "entity": entity,
        "mode": q.get("mode"),
        "isLastBatch": q.get("isLastBatch", "true").lower() == "true",
        "requestId": id(request),
    }


def _initial_errors(state: EmulatorState, entity: str, mode: str | None) -> list[dict[str, str]]:
    if (mode or "").lower() == "initial" and entity in state.initial_done:
        return [
            c.error(
                "INVALID_INPUT_FORMAT",
                f"Initial load for {entity} has already finished; use incremental mode",
            )
        ]
    return []


def _quick(
    state: EmulatorState, raw: bytes | memoryview, max_records: int | None
) -> Received | None:
    """A body that passes, counted without building its records, when records are not
    stored; None when they are, or when check_datasets must decide and explain."""
    if state.store_records:
        return None
    checked = c.quick_check(raw, max_records, state.track_fields())
    if checked is None:
        return None
    count, stamps, marks = checked
    return Received(count, stamps, marks=marks)


def _after_accept(state: EmulatorState, entity: str, mode: str | None, is_last: bool) -> None:
    if (mode or "").lower() == "initial" and is_last:
        state.initial_done.add(entity)


async def upload(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if (denied := _check_v2_auth(request)) is not None:
        return denied
    entity, missing = _entity(request)
    if missing is not None:
        return missing
    mode = request.query.get("mode")
    errors = c.check_query(mode, request.query.get("isLastBatch"), c.V2_MODES)
    received = _quick(state, await request.read(), c.UPLOAD_MAX_RECORDS)
    if received is None:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _json([c.error("INVALID_INPUT_FORMAT", "Request body is not valid JSON")], 400)
        datasets, more = c.check_datasets(body, c.UPLOAD_MAX_RECORDS)
        errors += more
        received = Received.of(datasets, state.track_fields())
    errors += _initial_errors(state, entity, mode)
    if errors:
        state.count("rejected_requests")
        return _json(errors, 400)
    meta = _meta(request, "v2-upload", entity)
    state.receive(received.count)
    state.accept(received, meta)
    _after_accept(state, entity, mode, meta["isLastBatch"])
    return web.Response(status=200)


async def _bulk_file(request: web.Request) -> memoryview | web.Response:
    """The first file part of a multipart body (the logging middleware already read it)."""
    ctype = request.headers.get("Content-Type", "")
    boundary = ctype.partition("boundary=")[2].strip('"')
    if not ctype.startswith("multipart/") or not boundary:
        return _json(
            [c.error("INVALID_FILE_FORMAT", "Expected multipart/form-data with a JSON file")], 400
        )
    raw = await request.read()
    # Found by hand, and handed on as a view: files reach 10 MB, and every split or slice
    # of the body would copy it.
    delimiter = b"--" + boundary.encode()
    start = raw.find(delimiter)
    while start >= 0:
        head_end = raw.find(b"\r\n\r\n", start)
        end = raw.find(delimiter, start + len(delimiter))
        if head_end < 0 or (end >= 0 and head_end > end):
            start = end
            continue
        if b"filename=" in raw[start:head_end]:
            stop = len(raw) if end < 0 else end
            if raw[stop - 2 : stop] == b"\r\n":
                stop -= 2
            content = memoryview(raw)[head_end + 4 : stop]
            if len(content) > c.BULK_MAX_BYTES:
                return _json([c.error("PAYLOAD_TOO_LARGE", "The file is larger than 10 MB")], 413)
            return content
        start = end
    return _json([c.error("INVALID_FILE_FORMAT", "No file part in the request")], 400)


async def bulk(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if (denied := _check_v2_auth(request)) is not None:
        return denied
    entity, missing = _entity(request)
    if missing is not None:
        return missing
    mode = request.query.get("mode")
    errors = c.check_query(mode, request.query.get("isLastBatch"), c.V2_MODES)
    if errors:
        return _json(errors, 400)
    data = await _bulk_file(request)
    if isinstance(data, web.Response):
        return data
    received = _quick(state, data, None)
    job_errors: list[dict[str, str]] = []
    if received is None:
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError:
            return _json([c.error("INVALID_FILE_FORMAT", "The file is not valid JSON")], 400)
        # All-or-nothing: the job fails as a whole if any record is invalid.
        datasets, job_errors = c.check_datasets(body, None)
        received = Received.of(datasets, state.track_fields())
    if state.active_jobs() >= state.max_active_jobs:
        return _json([c.error("TOO_MANY_REQUESTS", "Too many concurrent bulk jobs")], 429)
    job_errors += _initial_errors(state, entity, mode)
    meta = _meta(request, "v2-bulk", entity)
    job = state.new_job(
        entity=entity,
        mode=mode or "",
        is_last=meta["isLastBatch"],
        received=received,
        errors=job_errors,
        request=meta,
    )
    return _json({"jobId": job.id}, 202)


def _settle(state: EmulatorState, job: Job) -> str:
    status = job.state(state.job_queued_s, state.job_running_s)
    if status == "SUCCESS" and not job.settled:
        job.settled = True
        state.accept(job.received, {**job.request, "jobId": job.id})
        _after_accept(state, job.entity, job.mode, job.is_last)
    if status not in ("QUEUED", "IN_PROGRESS"):
        # Ended: its records are accepted (and stored if asked) or refused. Holding every
        # job's decoded file would grow the heap without bound, and the garbage collector's
        # full passes over it would make the emulator, not the sink, the bottleneck.
        job.received.datasets = []
        job.received.marks = []
    return status


async def job_status(request: web.Request) -> web.Response:
    state = request.app[STATE]
    check = _check_v2_auth if request.path.startswith("/v2/") else _check_v1_auth
    if (denied := check(request)) is not None:
        return denied
    job = state.jobs.get(request.match_info["job_id"])
    if job is None:
        return _json(c.JOB_NOT_FOUND, 404)
    status = _settle(state, job)
    if status == "VALIDATION_ERROR":
        return _json({"message": job.errors}, 400)
    if status == "FAILED":
        return _json({"message": c.JOB_FAILED}, 500)
    started = job.submitted + state.job_queued_s
    ended = started + state.job_running_s if status == "SUCCESS" else None
    inner = {
        "jobId": job.id,
        "status": status,
        "entity": job.entity,
        "submittedTime": _iso(job.submitted),
        "startTime": _iso(started) if status != "QUEUED" else None,
        "endTime": _iso(ended) if ended else None,
        "message": (
            "Bulk ingestion job completed successfully"
            if status == "SUCCESS"
            else "Bulk ingestion job is in progress"
        ),
        "recordCount": job.record_count,
    }
    return _json({"message": inner}, 200 if status == "SUCCESS" else 202)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


async def v1_entity(request: web.Request) -> web.Response:
    """Part B: Bearer token, seed entity names and modes, a JSON array of records (or of
    data sets), answered with an ingest job id."""
    state = request.app[STATE]
    if (denied := _check_v1_auth(request)) is not None:
        return denied
    entity, missing = _entity(request)
    if missing is not None:
        return missing
    mode = request.query.get("mode")
    errors = c.check_query(mode, request.query.get("isLastBatch"), c.V1_MODES)
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        errors.append(c.error("INVALID_INPUT_FORMAT", "Request body is not valid JSON"))
        body = None
    if errors:
        return _json(errors, 400)
    if isinstance(body, dict):
        body = [body]
    if not isinstance(body, list) or not all(isinstance(r, dict) for r in body):
        return _json([c.error("INVALID_INPUT_FORMAT", "Body must be a JSON array of records")], 400)
    if body and all("records" in r and "sourceEntity" in r for r in body):
        datasets = body
    else:
        datasets = [{"sourceEntity": f"crm_{entity}", "records": body}]
    meta = _meta(request, "v1", entity)
    job = state.new_job(
        entity=entity,
        mode=mode or "",
        is_last=meta["isLastBatch"],
        received=Received.of(datasets, state.track_fields()),
        errors=[],
        request=meta,
    )
    return _json({"jobId": job.id, "status": "QUEUED"}, 202)


async def custom(request: web.Request) -> web.Response:
    """Anything under /custom/: accepted and logged, for manual endpoints and formats."""
    return _json({"received": request.content_length or 0, "path": request.path})


# --- control endpoints -----------------------------------------------------------------
async def get_records(request: web.Request) -> web.Response:
    state = request.app[STATE]
    entity = request.query.get("entity")
    records = [r for r in state.records if entity is None or r["entity"] == entity]
    return _json({"count": len(records), "records": records})


async def get_requests(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return _json({"count": len(state.requests), "requests": list(state.requests)})


async def get_stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    lat = sorted(state.latencies_ms)

    def pct(p: float) -> int | None:
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] if lat else None

    return _json(
        {
            "counters": state.counters,
            "records": len(state.records),
            "recordsByEntity": dict(state.by_entity),
            "recordsBySourceEntity": dict(state.by_source_entity),
            "jobs": {jid: _settle(state, j) for jid, j in state.jobs.items()},
            "firstRequestAt": state.first_request or None,
            "firstAcceptAt": state.first_accept or None,
            "lastAcceptAt": state.last_accept or None,
            "firstReceiptAt": state.first_receipt or None,
            "firstReceiptRecords": state.first_receipt_records,
            "lastReceiptAt": state.last_receipt or None,
            "latencyMs": {
                "count": len(lat),
                "p50": pct(50),
                "p99": pct(99),
                "p99.9": pct(99.9),
                "max": lat[-1] if lat else None,
            },
            **_progress(state),
            "callsBySecond": {str(k): v for k, v in state.calls_by_second.items()},
        }
    )


def _progress(state: EmulatorState) -> dict[str, Any]:
    return {
        "lastResponseAt": state.last_response or None,
        "callsInFlight": state.in_flight.summary(),
        # Every call with a valid token counts, those refused with 429 too.
        "maxCallsInAnySecond": max(state.max_calls_in_second.values(), default=0),
        "maxCallsInAnySecondByToken": dict(state.max_calls_in_second),
        "tracking": state.tracking.summary() if state.tracking is not None else None,
    }


async def get_progress(request: web.Request) -> web.Response:
    """What a benchmark polls while a run goes on: no sorting, no job walk."""
    state = request.app[STATE]
    return _json(
        {
            "counters": state.counters,
            "firstRequestAt": state.first_request or None,
            "firstReceiptAt": state.first_receipt or None,
            "lastReceiptAt": state.last_receipt or None,
            **_progress(state),
        }
    )


async def tracking(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if request.method == "POST":
        try:
            settings = orjson.loads(await request.read() or b"{}")
            state.tracking = Tracking(
                key_field=str(settings.pop("key_field", "key")),
                seq_field=str(settings.pop("seq_field", "seq")),
            )
            if settings:
                raise KeyError(", ".join(settings))
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            state.tracking = None
            return _json(
                {"error": f"unknown or bad tracking setting: {exc}",
                 "allowed": ["key_field", "seq_field"]},
                400,
            )  # fmt: skip
    return _json(state.tracking.summary() if state.tracking is not None else None)


async def faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if request.method == "POST":
        try:
            state.faults.update(orjson.loads(await request.read() or b"{}"))
        except (KeyError, ValueError, TypeError) as exc:
            return _json(
                {
                    "error": f"unknown or bad fault setting: {exc}",
                    "allowed": sorted(state.faults.as_dict()),
                },
                400,
            )
    return _json(state.faults.as_dict())


async def reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return _json({"reset": True})


async def health(_: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def _settle_jobs(app: web.Application) -> AsyncIterator[None]:
    """Jobs finish on their own, whether or not anyone polls them."""
    state = app[STATE]

    async def loop() -> None:
        while True:
            await asyncio.sleep(0.05)
            for job in list(state.jobs.values()):
                if not job.settled:
                    _settle(state, job)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _collect_garbage(app: web.Application) -> AsyncIterator[None]:
    """For a standalone emulator: collect cyclic garbage on a timer instead of by
    allocation count. A 10 MB bulk file parses into some 100,000 objects, none in a
    cycle, and the collector's passes over them while they live cost more than the
    parse itself (27 vs 17 ms a file): it made the emulator, not the sink, the
    bottleneck of the bulk benchmark."""
    gc.disable()

    async def loop() -> None:
        passes = 0
        while True:
            await asyncio.sleep(5)
            passes += 1
            if passes % 60 == 0:  # every 5 minutes, what was frozen too: no slow leak
                gc.unfreeze()
            gc.collect()
            # What survived a pass is kept out of the next ones: the tracked records of
            # a 200,000-record benchmark made each pass 67-129 ms, and calls that arrived
            # meanwhile were counted in a bunch (101-108 in one second, so 429s for a
            # sink paced at 95). Frozen, a pass takes 1-4 ms.
            gc.freeze()

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    gc.unfreeze()
    gc.enable()


def build_app(state: EmulatorState | None = None, timed_gc: bool = False) -> web.Application:
    app = web.Application(middlewares=[faults_and_log], client_max_size=c.BULK_MAX_BYTES * 2)
    app[STATE] = state or EmulatorState()
    app.cleanup_ctx.append(_settle_jobs)
    if timed_gc:
        app.cleanup_ctx.append(_collect_garbage)
    app.add_routes(
        [
            web.post("/v2/ingest/entity/{entity}", upload),
            web.post("/v2/ingest/bulk/entity/{entity}", bulk),
            web.get("/v2/ingest/job/{job_id}", job_status),
            web.post("/v1/ingest/entity/{entity}", v1_entity),
            web.get("/v1/ingest/job/{job_id}", job_status),
            web.route("*", "/custom/{tail:.*}", custom),
            web.get("/_emulator/records", get_records),
            web.get("/_emulator/requests", get_requests),
            web.get("/_emulator/stats", get_stats),
            web.get("/_emulator/faults", faults),
            web.post("/_emulator/faults", faults),
            web.post("/_emulator/reset", reset),
            web.get("/_emulator/health", health),
            web.get("/_emulator/progress", get_progress),
            web.get("/_emulator/tracking", tracking),
            web.post("/_emulator/tracking", tracking),
        ]
    )
    return app
