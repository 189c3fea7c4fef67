"""Both templates in each mode, is-last-batch, bulk job outcomes: against the real broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from devkit.sample_data import crm_record
from tests.support import Emulator, consume_all, headers_of, responses, run_sink, seeded_topic

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("mode", "wire"), [("Incremental", "incremental"), ("Full", "initial")])
def test_upload_entity_data_modes(
    kafka: str, emulator: Emulator, logs: Path, mode: str, wire: str
) -> None:
    sent = [crm_record("opportunity", i) for i in range(230)]
    topic = seeded_topic(kafka, sent)
    env = run_sink(
        kafka,
        emulator,
        logs,
        topic,
        CLARI_ENTITY_TYPE="Opportunity",
        CLARI_MODE=mode,
        CLARI_IS_LAST_BATCH="auto",
    )
    calls = emulator.api_requests()
    # 230 records: three full-ish calls, a fourth when a poll split them across a linger.
    assert 3 <= len(calls) <= 4
    assert {c["path"] for c in calls} == {"/v2/ingest/entity/opportunity"}
    assert {c["query"]["mode"] for c in calls} == {wire}
    assert {r["record"]["id"] for r in emulator.records("opportunity")} == {r["id"] for r in sent}
    assert all(c["headers"]["apikey"] == "test-token" for c in calls)
    assert len(responses(kafka, env, len(calls))) == len(calls)


@pytest.mark.parametrize(
    ("mode", "wire"), [("Upsert", "incremental"), ("Merge", "incremental"), ("Replace", "initial")]
)
def test_ingest_bulk_entities_modes_follow_jobs(
    kafka: str, emulator: Emulator, logs: Path, mode: str, wire: str
) -> None:
    sent = [crm_record("account", i) for i in range(1_200)]
    topic = seeded_topic(kafka, sent, partitions=2)
    env = run_sink(
        kafka,
        emulator,
        logs,
        topic,
        CLARI_TEMPLATE="ingest-bulk-entities",
        CLARI_MODE=mode,
        BATCH_SIZE=500,
        JOB_POLL_INITIAL_MS=100,
        CLARI_IS_LAST_BATCH="auto",
    )
    posts = [c for c in emulator.api_requests() if c["method"] == "POST"]
    assert all(c["path"] == "/v2/ingest/bulk/entity/account" for c in posts)
    assert all(c["contentType"].startswith("multipart/form-data") for c in posts)
    assert {c["query"]["mode"] for c in posts} == {wire}
    assert sorted(r["record"]["id"] for r in emulator.records()) == sorted(r["id"] for r in sent)
    msgs = responses(kafka, env)
    submitted = [m for m in msgs if m["kind"] == "bulk"]
    finals = [m for m in msgs if m["kind"] == "job-status"]
    assert len(submitted) == len(posts) == len(finals)
    assert {m["jobId"] for m in submitted} == {m["jobId"] for m in finals}
    assert all(m["jobStatus"] == "SUCCESS" and m["outcome"] == "delivered" for m in finals)


def test_bulk_job_failed_is_resubmitted(kafka: str, emulator: Emulator, logs: Path) -> None:
    emulator.state.faults.fail_next_jobs = 1
    sent = [crm_record("account", i) for i in range(50)]
    topic = seeded_topic(kafka, sent)
    env = run_sink(
        kafka,
        emulator,
        logs,
        topic,
        CLARI_TEMPLATE="ingest-bulk-entities",
        JOB_POLL_INITIAL_MS=50,
        RETRY_BACKOFF_INITIAL_MS=10,
    )
    finals = [m for m in responses(kafka, env) if m["kind"] == "job-status"]
    assert [m["jobStatus"] for m in finals] == ["FAILED", "SUCCESS"]
    assert finals[0]["outcome"] == "retrying" and finals[0]["status"] == 500
    assert len(emulator.records()) == 50  # the failed job stored nothing


def test_bulk_job_validation_error_dead_letters_the_batch(
    kafka: str, emulator: Emulator, logs: Path
) -> None:
    # What the sink cannot check before sending: Clari already ended this entity's
    # initial load, so it refuses another one in the job's validation, for the whole file.
    emulator.state.initial_done.add("account")
    sent = [crm_record("account", i) for i in range(20)]
    topic = seeded_topic(kafka, sent)
    env = run_sink(
        kafka,
        emulator,
        logs,
        topic,
        CLARI_TEMPLATE="ingest-bulk-entities",
        CLARI_MODE="Replace",
        JOB_POLL_INITIAL_MS=50,
    )
    finals = [m for m in responses(kafka, env) if m["kind"] == "job-status"]
    assert [m["jobStatus"] for m in finals] == ["VALIDATION_ERROR"]
    assert emulator.records() == []  # all or nothing
    dead = consume_all(kafka, env["DLQ_TOPIC"], expect=20)
    assert len(dead) == 20
    h = headers_of(dead[5])
    assert h["clari-sink.error.reason"] == b"job-validation-error"
    assert b"already finished" in h["clari-sink.error.body"]
    assert h["clari-sink.source.topic"] == topic.encode()


def test_a_record_breaking_clari_s_contract_is_dead_lettered_alone(
    kafka: str, emulator: Emulator, logs: Path
) -> None:
    """Checked before sending: one record without createdAt no longer fails a file of 20."""
    sent = [crm_record("account", i) for i in range(20)]
    del sent[5]["createdAt"]
    topic = seeded_topic(kafka, sent)
    env = run_sink(
        kafka, emulator, logs, topic, CLARI_TEMPLATE="ingest-bulk-entities", JOB_POLL_INITIAL_MS=50
    )
    finals = [m for m in responses(kafka, env) if m["kind"] == "job-status"]
    assert [m["jobStatus"] for m in finals] == ["SUCCESS"]
    assert sorted(r["record"]["id"] for r in emulator.records()) == sorted(
        r["id"] for i, r in enumerate(sent) if i != 5
    )
    (dead,) = consume_all(kafka, env["DLQ_TOPIC"], expect=1)
    h = headers_of(dead)
    assert h["clari-sink.error.reason"] == b"missing-timestamp"
    assert b"createdAt" in h["clari-sink.error.body"]


def test_bulk_job_failing_for_good_is_dead_lettered(
    kafka: str, emulator: Emulator, logs: Path
) -> None:
    emulator.state.faults.job_failure_rate = 1.0
    topic = seeded_topic(kafka, [crm_record("account", i) for i in range(10)])
    env = run_sink(
        kafka,
        emulator,
        logs,
        topic,
        CLARI_TEMPLATE="ingest-bulk-entities",
        JOB_POLL_INITIAL_MS=20,
        RETRY_MAX_ATTEMPTS=2,
        RETRY_BACKOFF_INITIAL_MS=10,
    )
    finals = [m for m in responses(kafka, env) if m["kind"] == "job-status"]
    assert [m["jobStatus"] for m in finals] == ["FAILED", "FAILED"]
    dead = consume_all(kafka, env["DLQ_TOPIC"], expect=10)
    assert {headers_of(m)["clari-sink.error.reason"] for m in dead} == {b"job-failed"}


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("true", ["true", "true", "true"]),
        ("false", ["false", "false", "false"]),
        ("auto", ["false", "false", "true"]),
    ],
)
def test_is_last_batch(
    kafka: str, emulator: Emulator, logs: Path, setting: str, expected: list[str]
) -> None:
    topic = seeded_topic(kafka, [crm_record("account", i) for i in range(250)])
    run_sink(kafka, emulator, logs, topic, CLARI_IS_LAST_BATCH=setting, HTTP_MAX_IN_FLIGHT=1)
    calls = emulator.api_requests()
    flags = [c["query"]["isLastBatch"] for c in calls]
    # 250 records make three calls, or four when a poll splits them across a linger.
    assert len(flags) in (3, 4)
    assert flags[:-1] == expected[:1] * (len(flags) - 1) and flags[-1] == expected[-1]
