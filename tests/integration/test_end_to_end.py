"""The foundation's promise, checked against a real broker and the emulator."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from devkit.sample_data import crm_record
from tests.support import (
    Emulator,
    SinkProcess,
    committed,
    consume_all,
    create_topic,
    end_offsets,
    produce_json,
    sink_env,
    unique,
)

pytestmark = pytest.mark.integration


def test_ten_thousand_records_arrive_exactly_once_with_responses_and_commits(
    kafka: str, emulator: Emulator, logs: Path
) -> None:
    topic = create_topic(kafka, unique("accounts"), partitions=3)
    sent = [crm_record("account", i) for i in range(10_000)]
    sent[7]["name"] = 'Ünïcödé — 漢字 ✓ "quoted" \\ back\nslash'
    produce_json(kafka, topic, sent)
    env = sink_env(kafka, emulator, topic, HTTP_MAX_IN_FLIGHT=8)

    SinkProcess(env, "--until-drained", log_dir=logs).run_to_end()

    # Nothing lost, nothing invented, every value intact (compared as whole records).
    received = [r["record"] for r in emulator.records("account")]
    assert len(received) == len(sent)
    by_id = {r["id"]: r for r in received}
    assert len(by_id) == len(sent), "a record arrived twice"
    assert by_id == {r["id"]: r for r in sent}
    assert all(
        r["mode"] == "incremental" and r["sourceEntity"] == "crm_account"
        for r in emulator.records()
    )

    # One response message per API call, each naming the offsets it covers.
    calls = emulator.api_requests()
    responses = consume_all(kafka, env["RESPONSE_TOPIC"], expect=len(calls))
    # Calls stay full: 3 partitions of 3,333 records in 32 lanes each leave a few
    # remainders, merged per partition once they linger.
    assert len(responses) == len(calls) and 100 <= len(calls) <= 110
    covered: set[tuple[int, int]] = set()
    keys: set[str] = set()
    for msg in responses:
        body = orjson.loads(msg.value())
        assert body["status"] == 200 and body["outcome"] == "delivered"
        assert msg.key() == body["batchId"].encode()
        assert len(body["sources"]) == 1  # a call never spans partitions
        assert sum(s["count"] for s in body["sources"]) == body["recordCount"] <= 100
        # keys are the record ids here
        assert len(body["keys"]) == body["keyCount"] == body["recordCount"]
        keys |= set(body["keys"])
        for src in body["sources"]:
            assert src["topic"] == topic
            covered |= {
                (src["partition"], o) for o in range(src["firstOffset"], src["lastOffset"] + 1)
            }
        assert (
            "test-token" not in msg.value().decode() and "test-partner" not in msg.value().decode()
        )
    assert keys == {r["id"] for r in sent}
    ends = end_offsets(kafka, topic)
    assert covered == {(p, o) for p, end in ends.items() for o in range(end)}

    # Committed offsets equal the end offsets.
    assert committed(kafka, env["KAFKA_GROUP_ID"], topic) == ends

    # A restarted sink sends nothing again.
    SinkProcess(env, "--until-drained", log_dir=logs).run_to_end()
    assert len(emulator.api_requests()) == len(calls)
    assert len(emulator.records()) == len(sent)


def test_bad_setting_stops_the_service_with_its_name(
    kafka: str, emulator: Emulator, logs: Path
) -> None:
    env = sink_env(kafka, emulator, unique("t"), CLARI_MODE="Sideways", CLARI_API_TOKEN="s3cr3t")
    proc = SinkProcess(env, log_dir=logs).start()
    assert proc.wait(30) == 2
    out = proc.output()
    assert "CLARI_MODE" in out and "Incremental, Full" in out
    assert "s3cr3t" not in out
