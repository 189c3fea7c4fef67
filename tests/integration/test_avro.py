"""Avro values through a Schema Registry, end to end against the real broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from devkit.kafka_local import free_port
from sink.avro import SchemaRegistry
from sink.decoding import RecordError
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
    wait_until,
)

pytestmark = pytest.mark.integration

ADDRESS = {
    "type": "record",
    "name": "Address",
    "namespace": "crm",
    "fields": [{"name": "city", "type": "string"}, {"name": "country", "type": "string"}],
}
ACCOUNT = {
    "type": "record",
    "name": "Account",
    "namespace": "crm",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "createdAt", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "updatedAt", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "name", "type": "string"},
        {"name": "address", "type": "crm.Address"},  # a reference to another subject
        {"name": "tier", "type": ["null", "string"], "default": None},
    ],
}
USER, PASSWORD = "sr-user", "sr-Pa55-SECRET"


@pytest.fixture
def registry() -> Iterator[Registry]:
    reg = Registry(USER, PASSWORD).start()
    yield reg
    reg.stop()


def account(i: int) -> dict[str, Any]:
    return {
        "id": f"ACC{i:06d}",
        "createdAt": 1_700_000_000_000 + i,
        "updatedAt": 1_700_000_500_000 + i,
        "name": f"Account {i}",
        "address": {"city": "Zürich", "country": "CH"},
        "tier": "gold" if i % 2 else None,
    }


def register_account(registry: Registry) -> int:
    """The Account schema, which references Address in another subject; its id."""
    registry.register("address", ADDRESS)
    return registry.register(
        "accounts-value", ACCOUNT, [{"name": "crm.Address", "subject": "address", "version": 1}]
    )


def accounts(sid: int, n: int) -> list[tuple[bytes, bytes]]:
    return [
        (f"ACC{i:06d}".encode(), avro_value(ACCOUNT, sid, account(i), [ADDRESS])) for i in range(n)
    ]


def avro_env(kafka: str, emulator: Emulator, registry: Registry, topic: str) -> dict[str, str]:
    return sink_env(
        kafka,
        emulator,
        topic,
        KAFKA_VALUE_FORMAT="avro",
        SCHEMA_REGISTRY_URL=registry.url,
        SCHEMA_REGISTRY_USERNAME=USER,
        SCHEMA_REGISTRY_PASSWORD=PASSWORD,
        CLARI_EXCLUDE_ATTRIBUTES="address.city",
    )


def test_avro_records_reach_clari_as_json_and_bad_ones_are_dead_lettered(
    kafka: str, emulator: Emulator, registry: Registry, logs: Path
) -> None:
    sid = register_account(registry)
    good = accounts(sid, 150)
    bad = [
        (b"json", b'{"id": "not avro"}'),  # a JSON producer on an Avro topic
        (b"unknown", b"\x00\x00\x00\x03\xe7" + good[0][1][5:]),  # schema id 999
        (b"cut", good[1][1][:9]),  # truncated
    ]
    topic = create_topic(kafka, unique("avro"))
    produce(kafka, topic, good[:70] + bad + good[70:])
    env = avro_env(kafka, emulator, registry, topic)
    out = SinkProcess(env, "--until-drained", log_dir=logs).run_to_end()

    # Every key is distinct: their order among them is free (lanes), each arrives once.
    arrived = {r["record"]["id"]: r["record"] for r in emulator.records()}
    assert sorted(arrived) == [f"ACC{i:06d}" for i in range(150)] and len(emulator.records()) == 150
    assert arrived["ACC000003"] == {
        "id": "ACC000003",
        "createdAt": 1_700_000_000_003,  # timestamp-millis stays epoch milliseconds
        "updatedAt": 1_700_000_500_003,
        "name": "Account 3",
        "address": {"country": "CH"},  # address.city excluded
        "tier": "gold",
    }
    dlq = consume_all(kafka, env["DLQ_TOPIC"], 3)
    dead = {headers_of(m)["clari-sink.error.reason"]: m for m in dlq}
    assert set(dead) == {b"not-avro", b"unknown-schema", b"invalid-avro"}
    assert dead[b"not-avro"].value() == b'{"id": "not avro"}'  # the original bytes
    assert all(m["outcome"] == "delivered" for m in responses(kafka, env, 2))
    assert all_committed(kafka, env, topic)
    assert PASSWORD not in out
    # Schemas are read once each (the referenced subject once too), not per record.
    assert registry.requests.count(f"/schemas/ids/{sid}") == 1


def test_records_wait_while_the_registry_is_down(
    kafka: str, emulator: Emulator, registry: Registry, logs: Path
) -> None:
    sid = register_account(registry)
    topic = create_topic(kafka, unique("avro-down"))
    produce(kafka, topic, accounts(sid, 40))
    registry.down = True
    env = avro_env(kafka, emulator, registry, topic)
    sink = SinkProcess(env, "--until-drained", log_dir=logs).start()
    wait_until(lambda: "schema registry unavailable" in sink.output(), 30, what="retries")
    time.sleep(2)
    assert emulator.records() == []  # nothing sent, and nothing dead-lettered either
    assert "dead-lettered" not in sink.output()
    registry.down = False
    assert sink.wait(60) == 0, sink.output()
    assert len(emulator.records()) == 40
    assert all_committed(kafka, env, topic)


def test_sample_shows_avro_records_as_the_json_sent(
    kafka: str, emulator: Emulator, registry: Registry
) -> None:
    sid = register_account(registry)
    topic = create_topic(kafka, unique("avro-sample"))
    produce(kafka, topic, accounts(sid, 3))
    env = {**os.environ, **avro_env(kafka, emulator, registry, topic)}
    done = subprocess.run(
        [sys.executable, "-m", "sink.cli", "sample", "--records", "3", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    body = orjson.loads(done.stdout)["requests"][0]["body"]
    assert body[0]["records"][0]["createdAt"] == 1_700_000_000_000
    assert PASSWORD not in done.stdout + done.stderr
    down = subprocess.run(
        [sys.executable, "-m", "sink.cli", "sample", "--records", "3"],
        env={**env, "SCHEMA_REGISTRY_URL": f"http://127.0.0.1:{free_port()}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 1 and "schema registry is unavailable" in down.stderr


def test_schema_references_are_followed_through_several_subjects(registry: Registry) -> None:
    country = {"type": "enum", "name": "Country", "namespace": "crm", "symbols": ["CH", "US"]}
    place = {
        "type": "record",
        "name": "Place",
        "namespace": "crm",
        "fields": [{"name": "city", "type": "string"}, {"name": "country", "type": "crm.Country"}],
    }
    site = {
        "type": "record",
        "name": "Site",
        "namespace": "crm",
        "fields": [{"name": "id", "type": "string"}, {"name": "place", "type": "crm.Place"}],
    }
    registry.register("country", country)
    registry.register("place", place, [{"name": "crm.Country", "subject": "country", "version": 1}])
    sid = registry.register("site", site, [{"name": "crm.Place", "subject": "place", "version": 1}])
    value = avro_value(site, sid, {"id": "S1", "place": {"city": "Bern", "country": "CH"}},
                       [country, place])  # fmt: skip
    reader = SchemaRegistry(registry.url, USER, PASSWORD)
    asyncio.run(reader.fetch(reader.missing([value])))
    assert reader.decode(value) == {"id": "S1", "place": {"city": "Bern", "country": "CH"}}
    registry.register("orphan", site, [{"name": "crm.Place", "subject": "gone", "version": 1}])
    asyncio.run(reader.fetch({sid + 1}))
    with pytest.raises(RecordError, match=r"crm\.Place, not found"):
        reader.decode(value[:1] + (sid + 1).to_bytes(4, "big") + value[5:])
