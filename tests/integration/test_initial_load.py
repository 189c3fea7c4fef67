"""Initial loads (Full, Replace: ``mode=initial``) close exactly once, after everything
else landed: against the real broker and the emulator, which ends the load at the first
isLastBatch=true and refuses ``initial`` after it, as Clari does."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from devkit.sample_data import crm_record
from tests.support import (
    Emulator,
    SinkProcess,
    consume_all,
    run_sink,
    seeded_topic,
    sink_env,
    wait_until,
)

pytestmark = pytest.mark.integration

RECORDS = 10_000


def _closing(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in calls if c["query"].get("isLastBatch") == "true"]


def test_full_upload_closes_once_after_every_other_call(
    kafka: str, emulator: Emulator, logs: Path
) -> None:
    sent = [crm_record("account", i) for i in range(RECORDS)]
    topic = seeded_topic(kafka, sent, partitions=6)
    emulator.state.faults.latency_ms = 300  # calls overlap: the close must not
    env = run_sink(kafka, emulator, logs, topic, CLARI_MODE="Full")  # isLastBatch unset

    calls = emulator.api_requests()
    assert len(calls) >= RECORDS // 100  # many calls, at most 100 records each
    assert {c["query"]["mode"] for c in calls} == {"initial"}
    assert all(c["status"] == 200 for c in calls), {c["status"] for c in calls}
    (close,) = _closing(calls)
    others = [c for c in calls if c is not close]
    # Sent once every earlier call had its answer, and nothing was sent after it.
    assert close["time"] >= max(c["answered"] for c in others)
    assert close is max(calls, key=lambda c: c["time"])
    assert {r["record"]["id"] for r in emulator.records("account")} == {r["id"] for r in sent}
    assert "account" in emulator.state.initial_done
    assert consume_all(kafka, env["DLQ_TOPIC"], expect=0, timeout=2) == []


def test_replace_bulk_closes_once_after_every_job_ended(
    kafka: str, emulator: Emulator, logs: Path
) -> None:
    sent = [crm_record("account", i) for i in range(RECORDS)]
    topic = seeded_topic(kafka, sent, partitions=3)
    run_sink(
        kafka, emulator, logs, topic,
        CLARI_TEMPLATE="ingest-bulk-entities", CLARI_MODE="Replace",
        BATCH_SIZE=1_000, JOB_POLL_INITIAL_MS=100,
    )  # fmt: skip

    posts = [c for c in emulator.api_requests() if c["method"] == "POST"]
    assert len(posts) >= RECORDS // 1_000
    assert all(c["status"] == 202 for c in posts)
    (close,) = _closing(posts)
    job_s = emulator.state.job_queued_s + emulator.state.job_running_s
    # Every other job had ended (the emulator's jobs end job_s after their file came).
    assert all(close["time"] >= c["answered"] + job_s for c in posts if c is not close)
    assert close is max(posts, key=lambda c: c["time"])
    assert {r["record"]["id"] for r in emulator.records("account")} == {r["id"] for r in sent}


def test_a_restart_closes_the_load_left_open(kafka: str, emulator: Emulator, logs: Path) -> None:
    """A load cut short by a stop is not closed; the next run closes it once caught up."""
    sent = [crm_record("account", i) for i in range(2_000)]
    topic = seeded_topic(kafka, sent, partitions=2)
    # Slow calls and a short stop: the stop comes long before the load is read through.
    env = sink_env(
        kafka, emulator, topic, CLARI_MODE="Full", HTTP_RATE_LIMIT=4, SINK_SHUTDOWN_TIMEOUT_S=1
    )
    sink = SinkProcess(env, log_dir=logs).start()
    wait_until(lambda: len(emulator.records("account")) >= 200, timeout=60)
    sink.signal(signal.SIGTERM)
    sink.wait(60)
    assert _closing(emulator.api_requests()) == []
    assert "account" not in emulator.state.initial_done

    SinkProcess({**env, "HTTP_RATE_LIMIT": "100"}, "--until-drained", log_dir=logs).run_to_end()
    calls = emulator.api_requests()
    (close,) = _closing(calls)
    assert close is max(calls, key=lambda c: c["time"])
    assert all(c["status"] == 200 for c in calls)
    assert {r["record"]["id"] for r in emulator.records("account")} == {r["id"] for r in sent}


def test_each_entity_of_one_sink_closes_its_own_load_once(
    kafka: str, emulator: Emulator, logs: Path
) -> None:
    """Two topics, two entities, one sink: each entity's load is closed by its own last
    call, after that entity's other calls, whatever the other entity is doing."""
    accounts = [crm_record("account", i) for i in range(1_500)]
    opportunities = [crm_record("opportunity", i) for i in range(900)]
    t_acc = seeded_topic(kafka, accounts, partitions=3)
    t_opp = seeded_topic(kafka, opportunities, partitions=2)
    emulator.state.faults.latency_ms = 200
    run_sink(
        kafka, emulator, logs, f"{t_acc},{t_opp}", CLARI_MODE="Full",
        CLARI_TOPIC_ENTITIES=f"{t_acc}:Account,{t_opp}:Opportunity",
    )  # fmt: skip
    calls = emulator.api_requests()
    assert all(c["status"] == 200 for c in calls)
    for entity, sent in (("account", accounts), ("opportunity", opportunities)):
        mine = [c for c in calls if c["path"].endswith(f"/{entity}")]
        (close,) = _closing(mine)
        assert close["time"] >= max(c["answered"] for c in mine if c is not close)
        assert close is max(mine, key=lambda c: c["time"])
        assert {r["record"]["id"] for r in emulator.records(entity)} == {r["id"] for r in sent}
    assert emulator.state.initial_done == {"account", "opportunity"}
