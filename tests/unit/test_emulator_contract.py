"""The emulator must answer as Clari's published contract says (clari-api.md, part A)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer

from sink.emulator.app import build_app
from sink.emulator.state import EmulatorState

AUTH = {"apikey": "tok", "partnerkey": "pk"}


def rec(i: int, **extra: object) -> dict[str, object]:
    return {"id": f"R{i}", "createdAt": 1, "updatedAt": 2, **extra}


def ds(*records: dict[str, object]) -> bytes:
    return orjson.dumps([{"sourceEntity": "crm_account", "records": list(records)}])


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    state = EmulatorState(api_token="tok", partner_key="pk", job_queued_s=0.05, job_running_s=0.05)
    async with TestClient(TestServer(build_app(state))) as c:
        yield c


URL = "/v2/ingest/entity/account?mode=incremental&isLastBatch=true"


async def test_auth_errors(client: TestClient) -> None:  # type: ignore[type-arg]
    r = await client.post(URL, data=ds(rec(1)))
    assert r.status == 401 and await r.json() == {"error": "Invalid authentication credentials"}
    r = await client.post(URL, data=ds(rec(1)), headers={"apikey": "tok", "partnerkey": "bad"})
    assert r.status == 401 and (await r.json())[0]["errorCode"] == "INVALID_PARTNER_KEY"


async def test_upload_accepts_valid_records_with_empty_body(client: TestClient) -> None:  # type: ignore[type-arg]
    r = await client.post(URL, data=ds(rec(1), rec(2)), headers=AUTH)
    assert r.status == 200 and await r.read() == b""
    got = await (await client.get("/_emulator/records")).json()
    assert [x["record"]["id"] for x in got["records"]] == ["R1", "R2"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (orjson.dumps({"records": []}), "array"),
        (ds(*[rec(i) for i in range(101)]), "The number of records limit to 100"),
        (ds(rec(1), rec(1)), "Duplicate record with value R1 for primary key field id"),
        (ds({"id": "X", "updatedAt": 2}), "Missing required field createdAt"),
        (ds(rec(1, createdAt="2024-01-01")), "Invalid date value"),
    ],
)
async def test_upload_rejections(client: TestClient, body: bytes, needle: str) -> None:  # type: ignore[type-arg]
    r = await client.post(URL, data=body, headers=AUTH)
    assert r.status == 400
    errors = await r.json()
    assert errors[0]["errorCode"] == "INVALID_INPUT_FORMAT"
    assert any(needle in e["errorSummary"] for e in errors)
    assert (await (await client.get("/_emulator/records")).json())["count"] == 0


async def test_bad_mode_and_unregistered_entity(client: TestClient) -> None:  # type: ignore[type-arg]
    r = await client.post("/v2/ingest/entity/account?mode=upsert", data=ds(rec(1)), headers=AUTH)
    assert r.status == 400
    r = await client.post("/v2/ingest/entity/lead?mode=incremental", data=ds(rec(1)), headers=AUTH)
    assert r.status == 428 and (await r.json())[0]["errorCode"] == "SCHEMA_MISSING"


async def test_initial_after_initial_load_finished(client: TestClient) -> None:  # type: ignore[type-arg]
    url = "/v2/ingest/entity/account?mode=initial&isLastBatch="
    assert (await client.post(url + "false", data=ds(rec(1)), headers=AUTH)).status == 200
    assert (await client.post(url + "true", data=ds(rec(2)), headers=AUTH)).status == 200
    assert (await client.post(url + "true", data=ds(rec(3)), headers=AUTH)).status == 400


async def bulk(client: TestClient, content: bytes) -> tuple[int, dict]:  # type: ignore[type-arg]
    form = FormData()
    form.add_field("FileData", content, filename="data.json", content_type="application/json")
    r = await client.post(
        "/v2/ingest/bulk/entity/account?mode=incremental&isLastBatch=true", data=form, headers=AUTH
    )
    return r.status, await r.json()


async def poll(client: TestClient, job: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    for _ in range(100):
        r = await client.get(f"/v2/ingest/job/{job}", headers=AUTH)
        if r.status != 202:
            return r.status, await r.json()
        body = await r.json()
        assert body["message"]["status"] in ("QUEUED", "IN_PROGRESS")
        await asyncio.sleep(0.02)
    raise AssertionError("job never ended")


async def test_bulk_job_success(client: TestClient) -> None:  # type: ignore[type-arg]
    status, body = await bulk(client, ds(*[rec(i) for i in range(250)]))
    assert status == 202 and len(body["jobId"]) == 24
    status, body = await poll(client, body["jobId"])
    assert status == 200 and body["message"]["status"] == "SUCCESS"
    assert (await (await client.get("/_emulator/records")).json())["count"] == 250


async def test_bulk_job_validation_error_is_all_or_nothing(client: TestClient) -> None:  # type: ignore[type-arg]
    status, body = await bulk(client, ds(rec(1), {"id": "bad"}))
    assert status == 202
    status, body = await poll(client, body["jobId"])
    assert status == 400 and body["message"][0]["errorCode"] == "INVALID_INPUT_FORMAT"
    assert (await (await client.get("/_emulator/records")).json())["count"] == 0


async def test_bulk_not_json_and_unknown_job(client: TestClient) -> None:  # type: ignore[type-arg]
    status, body = await bulk(client, b"id,name\n1,a")
    assert status == 400 and body[0]["errorCode"] == "INVALID_FILE_FORMAT"
    r = await client.get("/v2/ingest/job/" + "0" * 24, headers=AUTH)
    assert r.status == 404 and "not found" in (await r.json())["error"]


async def test_failed_job_answers_500(client: TestClient) -> None:  # type: ignore[type-arg]
    await client.post("/_emulator/faults", json={"job_failure_rate": 1})
    _, body = await bulk(client, ds(rec(1)))
    status, body = await poll(client, body["jobId"])
    assert status == 500 and "retry ingestion" in body["message"]


async def test_rate_limit_is_100_per_second_per_token(client: TestClient) -> None:  # type: ignore[type-arg]
    statuses = [(await client.post(URL, data=ds(rec(i)), headers=AUTH)).status for i in range(120)]
    assert statuses.count(429) >= 1 and statuses[:100].count(200) == 100
    stats = await (await client.get("/_emulator/stats")).json()
    # Refused calls count towards the busiest second: that is what a client must avoid.
    assert stats["counters"]["rate_limited"] == statuses.count(429)
    assert stats["counters"]["status_429"] == statuses.count(429)
    assert stats["counters"]["status_200"] == statuses.count(200)
    assert stats["maxCallsInAnySecond"] >= 101
    assert stats["maxCallsInAnySecondByToken"] == {"tok": stats["maxCallsInAnySecond"]}


async def test_faults_are_settable_at_run_time(client: TestClient) -> None:  # type: ignore[type-arg]
    r = await client.post("/_emulator/faults", json={"rate_503": 1, "retry_after_s": 2})
    assert r.status == 200
    r = await client.post(URL, data=ds(rec(1)), headers=AUTH)
    assert r.status == 503 and r.headers["Retry-After"] == "2"
    r = await client.post("/_emulator/faults", json={"rate_503": 0, "down_for_s": 30})
    assert (await client.post(URL, data=ds(rec(1)), headers=AUTH)).status == 503
    assert (await client.post("/_emulator/faults", json={"nonsense": 1})).status == 400


async def test_the_next_calls_can_be_dropped_without_an_answer(client: TestClient) -> None:  # type: ignore[type-arg]
    """reset_next: deterministic resets, for tests that must see one whatever the rolls."""
    assert (await client.post("/_emulator/faults", json={"reset_next": 2})).status == 200
    for _ in range(2):
        with pytest.raises(aiohttp.ClientError):
            await client.post(URL, data=ds(rec(1)), headers=AUTH)
    assert (await client.post(URL, data=ds(rec(1)), headers=AUTH)).status == 200
    stats = await (await client.get("/_emulator/stats")).json()
    assert stats["counters"]["faults_reset"] == 2


async def test_part_b_form_bearer_v1(client: TestClient) -> None:  # type: ignore[type-arg]
    r = await client.post(
        "/v1/ingest/entity/Contact?mode=full&isLastBatch=true",
        data=orjson.dumps([{"id": "C1", "name": "Åsa"}]),
        headers={"Authorization": "Bearer tok"},
    )
    assert r.status == 202
    job = (await r.json())["jobId"]
    for _ in range(50):
        r = await client.get(f"/v1/ingest/job/{job}", headers={"Authorization": "Bearer tok"})
        if r.status == 200:
            break
        await asyncio.sleep(0.02)
    assert r.status == 200
    got = await (await client.get("/_emulator/records?entity=contact")).json()
    assert got["records"][0]["record"] == {"id": "C1", "name": "Åsa"}


# --- the no-store fast path must reach the same verdicts as check_datasets ---------------
VERDICT_CASES = [
    ds(rec(1), rec(2, producedAt=1_700_000_000_000), rec(3, nested={"a": [1, "é"]})),
    ds(*[rec(i) for i in range(100)]),
    ds(*[rec(i) for i in range(101)]),  # over the upload limit
    ds(rec(1), rec(1)),  # duplicate id
    orjson.dumps(
        [
            {"sourceEntity": "a", "records": [rec(1, id=7)]},
            {"sourceEntity": "b", "records": [rec(2, id="7")]},
        ]
    ),  # 7 and "7" are one id
    ds({"id": "X", "updatedAt": 2}),  # missing createdAt
    ds(rec(1, createdAt="2024-01-01")),
    ds(rec(1, createdAt=-1)),
    ds(rec(1, createdAt=True)),
    ds(rec(1, updatedAt=1.5)),
    ds(rec(1, id=None)),
    ds(rec(1, id="")),
    ds(rec(1, id={"composite": 1})),
    ds(rec(1, producedAt="soon")),
    orjson.dumps({"records": []}),
    orjson.dumps([{"records": [rec(1)]}]),  # no sourceEntity
    orjson.dumps([{"sourceEntity": 3, "records": [rec(1)]}]),
    orjson.dumps([{"sourceEntity": "a", "records": {}}]),
    orjson.dumps([{"sourceEntity": "a", "records": [1]}]),
    b'[{"sourceEntity":"a","records":[{"id":"1","createdAt":1,"updatedAt":2,"n":"\xff"}]}]',
    b'[{"sourceEntity":"a","records":[{"id":"1","createdAt":1,"updatedAt":2,"n":tru}]}]',
    b"[]",
    b'[{"sourceEntity":"a","records":[{"id":"1","createdAt":1,"updatedAt":2,"n":"\xc3x\xa9"}]}]',
    b"\xef\xbb\xbf" + ds(rec(1)),  # a byte order mark: not JSON
    ds(rec(1, producedAt=True), rec(2, producedAt=1.5), rec(3, producedAt=7)),
]
# Valid, but left to check_datasets (the quick check may refuse, never wrongly accept).
SLOW_BUT_VALID = b'[{"sourceEntity":"a","records":[{"id":"1","createdAt":1,"updatedAt":2,"n":1234567890123456789012}]}]'  # noqa: E501 (beyond 64 bits)


@pytest.mark.parametrize("body", [*VERDICT_CASES, SLOW_BUT_VALID])
def test_quick_check_agrees_with_check_datasets(body: bytes) -> None:
    from sink.emulator.contract import check_datasets, quick_check
    from sink.emulator.state import Received

    quick = quick_check(body, 100)
    try:
        datasets, errors = check_datasets(orjson.loads(body), 100)
    except orjson.JSONDecodeError:
        assert quick is None
        return
    if body == SLOW_BUT_VALID:
        assert quick is None and not errors
        return
    assert (quick is not None) == (not errors), errors
    if quick is not None:
        full = Received.of(datasets)
        assert quick == (full.count, full.stamps, [])
        tracked = quick_check(body, 100, ("key", "seq"))
        assert tracked == (full.count, full.stamps, Received.of(datasets, ("key", "seq")).marks)


@pytest.fixture
async def counting() -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    state = EmulatorState(
        api_token="tok", partner_key="pk", job_queued_s=0.05, job_running_s=0.05,
        store_records=False,
    )  # fmt: skip
    async with TestClient(TestServer(build_app(state))) as c:
        yield c


async def test_without_stored_records_counts_and_still_names_errors(counting: TestClient) -> None:  # type: ignore[type-arg]
    r = await counting.post(URL, data=ds(rec(1), rec(2, producedAt=1)), headers=AUTH)
    assert r.status == 200
    r = await counting.post(URL, data=ds(rec(1), rec(1)), headers=AUTH)
    assert r.status == 400
    assert "Duplicate record with value R1" in (await r.json())[0]["errorSummary"]
    status, body = await bulk(counting, ds(*[rec(i) for i in range(300)]))
    status, body = await poll(counting, body["jobId"])
    assert status == 200 and body["message"]["recordCount"] == 300
    status, body = await bulk(counting, ds(rec(1), {"id": "bad"}))
    status, body = await poll(counting, body["jobId"])
    assert status == 400 and "createdAt" in body["message"][0]["errorSummary"]
    stats = await (await counting.get("/_emulator/stats")).json()
    assert stats["counters"]["records_accepted"] == 302
    assert (await (await counting.get("/_emulator/records")).json())["count"] == 0


async def test_stats_tell_received_from_accepted() -> None:
    """A bulk file is received when its job is made, and accepted when the job ends: the
    benchmark's rate is the former, the job's turnaround being the API's latency."""
    # Jobs queue 0.4 s: a slow machine still reads the stats before this one ends.
    state = EmulatorState(
        api_token="tok", partner_key="pk", job_queued_s=0.4, job_running_s=0.05,
        store_records=False,
    )  # fmt: skip
    async with TestClient(TestServer(build_app(state))) as counting:
        await _received_then_accepted(counting)


async def _received_then_accepted(counting: TestClient) -> None:  # type: ignore[type-arg]
    assert (await counting.post(URL, data=ds(rec(1), rec(2)), headers=AUTH)).status == 200
    assert (await counting.post(URL, data=ds(rec(3), rec(3)), headers=AUTH)).status == 400
    first = await (await counting.get("/_emulator/stats")).json()
    assert first["firstReceiptRecords"] == 2
    assert first["firstReceiptAt"] == first["lastReceiptAt"] <= first["lastAcceptAt"]
    status, body = await bulk(counting, ds(*[rec(i) for i in range(300)]))
    assert status == 202
    submitted = await (await counting.get("/_emulator/stats")).json()
    assert submitted["lastReceiptAt"] > first["lastReceiptAt"]
    assert submitted["lastAcceptAt"] == first["lastAcceptAt"]  # the job has not ended yet
    await poll(counting, body["jobId"])
    ended = await (await counting.get("/_emulator/stats")).json()
    assert ended["lastAcceptAt"] > submitted["lastReceiptAt"] == ended["lastReceiptAt"]
    assert ended["firstReceiptRecords"] == 2


# --- what the benchmark reads ----------------------------------------------------------------
def keyed(i: int, key: str, seq: int) -> dict[str, object]:
    return rec(i, key=key, seq=seq)


@pytest.mark.parametrize("store", [True, False])
async def test_tracking_counts_distinct_duplicated_and_reordered_per_key(store: bool) -> None:
    state = EmulatorState(api_token="tok", partner_key="pk", store_records=store)
    async with TestClient(TestServer(build_app(state))) as client:
        r = await client.post("/_emulator/tracking", json={"key_field": "key", "seq_field": "seq"})
        assert r.status == 200 and (await r.json())["distinct"] == 0
        calls = [
            [keyed(1, "a", 0), keyed(2, "b", 0), keyed(3, "a", 1)],
            [keyed(5, "a", 3), keyed(6, "b", 1)],
            [keyed(4, "a", 2), keyed(2, "b", 0), rec(7)],  # a's 2 after its 3; b's 0 again
        ]
        for body in calls:
            assert (await client.post(URL, data=ds(*body), headers=AUTH)).status == 200
        got = await (await client.get("/_emulator/tracking")).json()
        assert got == {
            "keyField": "key", "seqField": "seq", "distinct": 7, "duplicates": 1,
            "reordered": 1, "keys": 2, "unkeyed": 1,
        }  # fmt: skip
        progress = await (await client.get("/_emulator/progress")).json()
        assert progress["tracking"] == got and progress["counters"]["records_accepted"] == 8
        bad = await client.post("/_emulator/tracking", json={"key_fields": "k"})
        assert bad.status == 400


async def test_tracking_follows_bulk_files_once_their_jobs_end(counting: TestClient) -> None:  # type: ignore[type-arg]
    await counting.post("/_emulator/tracking", json={})
    status, body = await bulk(counting, ds(*[keyed(i, f"k{i % 3}", i // 3) for i in range(30)]))
    assert status == 202
    await poll(counting, body["jobId"])
    got = await (await counting.get("/_emulator/tracking")).json()
    assert (got["distinct"], got["keys"], got["reordered"]) == (30, 3, 0)


async def test_calls_in_flight_are_counted_while_they_are_served() -> None:
    state = EmulatorState(api_token="tok", partner_key="pk", rate_limit=1_000)
    state.faults.latency_ms = 150
    async with TestClient(TestServer(build_app(state))) as client:
        calls = [client.post(URL, data=ds(rec(i)), headers=AUTH) for i in range(5)]
        assert {r.status for r in await asyncio.gather(*calls)} == {200}
        assert (await client.post(URL, data=ds(rec(9)), headers=AUTH)).status == 200
        stats = await (await client.get("/_emulator/stats")).json()
    flight = stats["callsInFlight"]
    assert flight["max"] == 5 and flight["now"] == 0
    # Five at once for 150 ms, then one for 150 ms: a mean of about 3 over about 0.3 s.
    assert 2.0 < flight["mean"] <= 5 and flight["seconds"] >= 0.3
    assert stats["lastResponseAt"] >= stats["firstRequestAt"]
