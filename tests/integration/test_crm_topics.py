"""Topics as CRM systems publish them, end to end on the real broker and the emulator:
a Salesforce-shaped account stream, a Debezium Postgres change stream (JSON, with and
without the schema wrapper; create, update, delete, tombstone), Debezium Avro with
timestamp-micros, and four entities through one sink."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from devkit.sample_data import crm_record
from tests.crm_fixtures import (
    DEBEZIUM_SETTINGS,
    SALESFORCE_SETTINGS,
    T0_MS,
    debezium_event,
    pg_row,
    salesforce_account,
    salesforce_expected,
)
from tests.registry import Registry, avro_value
from tests.support import (
    Emulator,
    SinkProcess,
    all_committed,
    consume_all,
    create_topic,
    headers_of,
    produce,
    responses,
    sink_env,
    unique,
)

pytestmark = pytest.mark.integration


def dead_letters(kafka: str, env: dict[str, str], expect: int) -> dict[str, dict[str, bytes]]:
    """The dead letters by their record's key, with their headers."""
    return {
        (m.key() or b"").decode(): headers_of(m)
        for m in consume_all(kafka, env["DLQ_TOPIC"], expect, timeout=20)
    }


def test_a_salesforce_account_stream_reaches_clari_mapped(
    kafka: str, emulator: Emulator, logs: Path
) -> None:
    good = [salesforce_account(i) for i in range(240)]
    bad_date = {**salesforce_account(900), "CreatedDate": "last Tuesday"}
    no_modified = {k: v for k, v in salesforce_account(901).items() if k != "LastModifiedDate"}
    values = [*good[:100], bad_date, *good[100:], no_modified]
    topic = create_topic(kafka, unique("salesforce.Account"), partitions=2)
    produce(kafka, topic, ((v["Id"].encode(), orjson.dumps(v)) for v in values))
    env = sink_env(kafka, emulator, topic, **SALESFORCE_SETTINGS)

    # What a user checks first: the record before and after mapping.
    shown = subprocess.run(
        [sys.executable, "-m", "sink.cli", "sample", "--records", "1", "--json"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    (example,) = orjson.loads(shown.stdout)["mapped"]
    first = next(v for v in values if example["before"]["Id"] == v["Id"])
    assert example["before"] == first
    assert example["after"] == salesforce_expected(int(first["Id"][-5:]))

    SinkProcess(env, "--until-drained", log_dir=logs).run_to_end()

    arrived = {r["record"]["id"]: r["record"] for r in emulator.records("account")}
    assert arrived == {v["Id"]: salesforce_expected(i) for i, v in enumerate(good)}
    dead = dead_letters(kafka, env, 2)
    assert dead[bad_date["Id"]]["clari-sink.error.reason"] == b"unconvertible-timestamp"
    assert dead[bad_date["Id"]]["clari-sink.error.body"].startswith(
        b"field createdAt (renamed from CreatedDate): 'last Tuesday' is not ISO-8601 text"
    )
    assert dead[no_modified["Id"]]["clari-sink.error.reason"] == b"missing-timestamp"
    assert all_committed(kafka, env, topic)


def test_a_debezium_postgres_change_stream_creates_updates_and_deletes(
    kafka: str, emulator: Emulator, logs: Path
) -> None:
    snapshot = [debezium_event("r", None, pg_row(i, f"Account {i}")) for i in range(8)]
    created = [  # the converter without schemas: bare payloads
        debezium_event("c", None, pg_row(i, f"Account {i}"), wrapped=False) for i in range(8, 12)
    ]
    renamed = pg_row(3, "Acme Renamed", updated_s=60)
    update = debezium_event("u", pg_row(3, "Account 3"), renamed)
    delete = debezium_event("d", pg_row(5, "Account 5"), None)  # REPLICA IDENTITY FULL
    events: list[tuple[bytes, bytes | None]] = [
        *((str(e["payload"]["after"]["id"]).encode(), orjson.dumps(e)) for e in snapshot),
        *((str(e["after"]["id"]).encode(), orjson.dumps(e)) for e in created),
        (b"1003", orjson.dumps(update)),
        (b"1005", orjson.dumps(delete)),
        (b"1005", None),  # the tombstone Debezium writes after a delete
    ]
    topic = create_topic(kafka, unique("crm.public.accounts"))
    produce(kafka, topic, events)
    env = sink_env(kafka, emulator, topic, **DEBEZIUM_SETTINGS, SINK_DELETES="send")
    SinkProcess(env, "--until-drained", log_dir=logs).run_to_end()

    received = [r["record"] for r in emulator.records("account")]
    assert len(received) == 8 + 4 + 1 + 1  # the tombstone is not sent
    latest = {r["id"]: r for r in received}  # one partition: each key's order kept
    assert sorted(latest) == list(range(1000, 1012))
    assert latest[1003] == {
        "id": 1003,
        "name": "Acme Renamed",
        "tier": "gold",
        "createdAt": T0_MS + 3000,
        "updatedAt": T0_MS + 63_000,
    }
    assert latest[1005] == {
        "id": 1005,
        "name": "Account 5",
        "tier": "gold",
        "createdAt": T0_MS + 5000,
        "updatedAt": T0_MS + 5000,
        "isDeleted": True,
    }
    assert latest[1010]["createdAt"] == T0_MS + 10_000  # from the bare payload
    assert consume_all(kafka, env["DLQ_TOPIC"], idle_s=1) == []
    assert all_committed(kafka, env, topic)  # the skipped tombstone too


ROW = {
    "type": "record",
    "name": "Value",
    "namespace": "crm.public.opportunities",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "created_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "updated_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    ],
}
ENVELOPE = {
    "type": "record",
    "name": "Envelope",
    "namespace": "crm.public.opportunities",
    "fields": [
        {"name": "before", "type": ["null", "crm.public.opportunities.Value"], "default": None},
        {"name": "after", "type": ["null", "crm.public.opportunities.Value"], "default": None},
        {"name": "op", "type": "string"},
        {"name": "ts_ms", "type": ["null", "long"], "default": None},
    ],
}


@pytest.fixture
def registry() -> Iterator[Registry]:
    reg = Registry().start()
    yield reg
    reg.stop()


def test_debezium_avro_with_timestamp_micros(
    kafka: str, emulator: Emulator, registry: Registry, logs: Path
) -> None:
    registry.register("row", ROW)
    sid = registry.register(
        "opportunities-value", ENVELOPE, [{"name": ROW["name"], "subject": "row", "version": 1}]
    )

    def row(i: int) -> dict[str, Any]:
        micros = (T0_MS + i) * 1000 + 999
        return {"id": f"OPP{i:04d}", "amount": 10.5 * i, "created_at": micros,
                "updated_at": micros + 1_000_000}  # fmt: skip

    def event(op: str, i: int) -> tuple[bytes, bytes]:
        before, after = (row(i), None) if op == "d" else (None, row(i))
        value = {"before": before, "after": after, "op": op, "ts_ms": T0_MS}
        return f"OPP{i:04d}".encode(), avro_value(ENVELOPE, sid, value, [ROW])

    topic = create_topic(kafka, unique("crm.public.opportunities"))
    produce(kafka, topic, [event("c", i) for i in range(120)] + [event("d", 7)])
    env = sink_env(
        kafka,
        emulator,
        topic,
        CLARI_ENTITY_TYPE="Opportunity",
        KAFKA_VALUE_FORMAT="avro",
        SCHEMA_REGISTRY_URL=registry.url,
        KAFKA_VALUE_ENVELOPE="debezium",
        CLARI_RENAME_ATTRIBUTES="created_at:createdAt,updated_at:updatedAt",
        CLARI_TIMESTAMP_ATTRIBUTES="createdAt:micros,updatedAt:micros",
    )
    SinkProcess(env, "--until-drained", log_dir=logs).run_to_end()

    arrived = {r["record"]["id"]: r["record"] for r in emulator.records("opportunity")}
    assert len(arrived) == 120  # the delete skipped (SINK_DELETES=skip, the default)
    assert arrived["OPP0042"] == {
        "id": "OPP0042",
        "amount": 441.0,
        "createdAt": T0_MS + 42,
        "updatedAt": T0_MS + 42 + 1000,
    }
    assert all_committed(kafka, env, topic)


ENTITIES = {"accounts": "account", "contacts": "contact", "opportunities": "opportunity",
            "activities": "activity"}  # fmt: skip


@pytest.mark.parametrize("template", ["upload-entity-data", "ingest-bulk-entities"])
def test_four_entities_through_one_sink(
    kafka: str, emulator: Emulator, logs: Path, template: str
) -> None:
    run = unique("four")
    topics = {f"{run}.{name}": entity for name, entity in ENTITIES.items()}
    counts = dict(zip(topics, (300, 200, 150, 120), strict=True))
    for topic, entity in topics.items():
        create_topic(kafka, topic, partitions=2)
        rows = [crm_record(entity, i) for i in range(counts[topic])]
        produce(kafka, topic, ((r["id"].encode(), orjson.dumps(r)) for r in rows))
    env = sink_env(
        kafka,
        emulator,
        ",".join(topics),
        CLARI_ENTITY_TYPE="",
        CLARI_TEMPLATE=template,
        JOB_POLL_INITIAL_MS=50,
        JOB_POLL_MAX_MS=200,
        CLARI_TOPIC_ENTITIES=",".join(f"{t}:{e.capitalize()}" for t, e in topics.items()),
    )
    SinkProcess(env, "--until-drained", log_dir=logs).run_to_end()

    by_entity = {e: counts[t] for t, e in topics.items()}
    assert emulator.state.by_entity == by_entity
    assert emulator.state.by_source_entity == {f"crm_{e}": n for e, n in by_entity.items()}
    for topic, entity in topics.items():
        got = {r["record"]["id"] for r in emulator.records(entity)}
        assert got == {crm_record(entity, i)["id"] for i in range(counts[topic])}
        assert all(r["record"]["entityType"] == entity for r in emulator.records(entity))
    calls = [m for m in responses(kafka, env) if m["kind"] in ("ingest", "bulk")]
    assert {m["outcome"] for m in calls} <= {"delivered", "job-submitted"}
    assert sum(m["recordCount"] for m in calls) == sum(counts.values())
    for m in calls:  # each call's entity is its records' topic's
        (source,) = m["sources"]
        assert (m["entity"], m["sourceEntity"]) == (
            topics[source["topic"]],
            f"crm_{topics[source['topic']]}",
        )
    assert all(all_committed(kafka, env, t) for t in topics)
