"""Bulk jobs run without their records in memory; a failed job's records are read back
from Kafka. Against the real broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from devkit.sample_data import crm_record
from sink.config import load_settings
from sink.decoding import Shaper
from sink.replay import Replayer, ReplayError
from tests.support import (
    Emulator,
    create_topic,
    produce,
    responses,
    run_sink,
    seeded_topic,
    sink_env,
    unique,
)

pytestmark = pytest.mark.integration


def _replayer(kafka: str, emulator: Emulator, topic: str, exclude: str = "") -> Replayer:
    env = sink_env(kafka, emulator, topic, CLARI_EXCLUDE_ATTRIBUTES=exclude)
    settings = load_settings(**{k: v for k, v in env.items()})
    return Replayer(settings, Shaper(settings.clari_exclude_attributes), timeout_s=20)


def test_reads_back_exactly_the_offsets_asked_for(kafka: str, emulator: Emulator) -> None:
    topic = create_topic(kafka, unique("replay"), partitions=2)
    values = [(f"k{i % 7}".encode(), orjson.dumps(crm_record("account", i))) for i in range(60)]
    produce(kafka, topic, values, partition_of=lambda i: i % 2)
    # Offsets 0..29 in each partition; ask for a scattered subset of both.
    wanted = {(topic, 0): [3, 4, 10, 29], (topic, 1): [0, 17]}
    records = asyncio.run(_replayer(kafka, emulator, topic, "address.city").fetch(wanted))
    assert [(r.partition, r.offset) for r in records] == [
        (0, 3), (0, 4), (0, 10), (0, 29), (1, 0), (1, 17)
    ]  # fmt: skip
    # Record i went to partition i % 2 at offset i // 2: the right values came back.
    for r in records:
        i = r.offset * 2 + r.partition
        assert r.value == values[i][1] and r.key == values[i][0]
        assert r.rid == crm_record("account", i)["id"]  # shaped again, id known
        assert "city" not in orjson.loads(r.body)["address"]  # shaped again: excluded


def test_offsets_that_do_not_exist_are_an_error(kafka: str, emulator: Emulator) -> None:
    topic = seeded_topic(kafka, [crm_record("account", i) for i in range(5)])
    with pytest.raises(ReplayError, match="could not be read back"):
        asyncio.run(_replayer(kafka, emulator, topic).fetch({(topic, 0): [2, 9]}))


def test_failed_job_resubmits_the_same_records(kafka: str, emulator: Emulator, logs: Path) -> None:
    """The job's records were dropped while it ran: the resubmitted file, read back from
    Kafka, holds the same records, from every partition."""
    emulator.state.faults.fail_next_jobs = 1
    sent = [crm_record("contact", i) for i in range(120)]
    topic = seeded_topic(kafka, sent, partitions=3)
    env = run_sink(
        kafka,
        emulator,
        logs,
        topic,
        CLARI_TEMPLATE="ingest-bulk-entities",
        CLARI_ENTITY_TYPE="Contact",
        BATCH_SIZE=1000,
        BATCH_LINGER_MS=2000,
        JOB_POLL_INITIAL_MS=50,
        RETRY_BACKOFF_INITIAL_MS=10,
    )
    # A batch never spans partitions: one job per partition, the first one fails.
    posts = [c for c in emulator.api_requests() if c["method"] == "POST"]
    assert len(posts) == 4

    def ids_in(call: dict[str, object]) -> tuple[str, ...]:
        body = str(call["body"])  # the emulator logs bodies up to 64 KB: these fit
        return tuple(r["id"] for r in sent if f'"id":"{r["id"]}"' in body)

    files = [ids_in(p) for p in posts]
    (again,) = [f for f in set(files) if files.count(f) == 2]  # the same records again
    assert again and sorted(i for f in set(files) for i in f) == sorted(r["id"] for r in sent)
    stored = [r["record"]["id"] for r in emulator.records("contact")]
    assert sorted(stored) == sorted(r["id"] for r in sent)
    finals = [m for m in responses(kafka, env) if m["kind"] == "job-status"]
    assert sorted(m["jobStatus"] for m in finals) == ["FAILED", "SUCCESS", "SUCCESS", "SUCCESS"]
    failed = next(m for m in finals if m["jobStatus"] == "FAILED")
    assert failed["recordCount"] == len(again)
    assert sum(m["recordCount"] for m in finals if m["jobStatus"] == "SUCCESS") == 120
