"""Avro values through a Schema Registry, end to end against the real broker.

The registry is a real one (Karapace, tests/real_registry.py, the ``schema_registry``
fixture) with basic auth on. The hand-written one (tests/registry.py) is used only where
a real registry cannot be made to do what the test needs; each such use says why."""

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
from sink.avro import RegistryUnavailable, SchemaRegistry
from sink.decoding import RecordError
from tests.real_registry import PASSWORD, USER, RealRegistry, RegistryError
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


@pytest.fixture
def fake_registry() -> Iterator[Registry]:
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


def register_account(registry: RealRegistry | Registry) -> int:
    """The Account schema, which references Address in another subject; its id. The
    subjects are new each time (the session's registry is shared by the tests)."""
    address = unique("address")
    registry.register(address, ADDRESS)
    return registry.register(
        unique("accounts") + "-value",
        ACCOUNT,
        [{"name": "crm.Address", "subject": address, "version": 1}],
    )


def accounts(sid: int, n: int) -> list[tuple[bytes, bytes]]:
    return [
        (f"ACC{i:06d}".encode(), avro_value(ACCOUNT, sid, account(i), [ADDRESS])) for i in range(n)
    ]


def avro_env(
    kafka: str, emulator: Emulator, registry: RealRegistry | Registry, topic: str
) -> dict[str, str]:
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
    kafka: str, emulator: Emulator, schema_registry: RealRegistry, logs: Path
) -> None:
    registry = schema_registry
    sid = register_account(registry)
    good = accounts(sid, 150)
    bad = [
        (b"json", b'{"id": "not avro"}'),  # a JSON producer on an Avro topic
        (b"unknown", b"\x00\x00\x01\x86\x9f" + good[0][1][5:]),  # schema id 99999
        (b"cut", good[1][1][:9]),  # truncated
    ]
    topic = create_topic(kafka, unique("avro"))
    produce(kafka, topic, good[:70] + bad + good[70:])
    env = avro_env(kafka, emulator, registry, topic)
    sink = SinkProcess(env, "--until-drained", log_dir=logs)
    sink.run_to_end()
    out = sink.log_path.read_text()  # all of it: output() keeps only the end

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
    # Schemas are read once each, not per record.
    assert out.count(f"schema {sid} read from the registry") == 1, out


def test_records_wait_while_the_registry_answers_503(
    kafka: str, emulator: Emulator, fake_registry: Registry, logs: Path
) -> None:
    # The hand-written registry: a real one cannot be made to answer 503 on demand (a
    # stopped one refuses connections: tests/integration/test_registry_restart.py).
    registry = fake_registry
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
    kafka: str, emulator: Emulator, schema_registry: RealRegistry
) -> None:
    registry = schema_registry
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


def test_schema_references_are_followed_through_several_subjects(
    schema_registry: RealRegistry,
) -> None:
    registry = schema_registry
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
    s_country, s_place, s_site = unique("country"), unique("place"), unique("site")
    registry.register(s_country, country)
    registry.register(s_place, place, [{"name": "crm.Country", "subject": s_country, "version": 1}])
    sid = registry.register(s_site, site, [{"name": "crm.Place", "subject": s_place, "version": 1}])
    # A real registry gives reference versions back as integers, as they were registered.
    latest = registry.request("GET", f"/subjects/{s_site}/versions/latest")
    assert latest["references"] == [{"name": "crm.Place", "subject": s_place, "version": 1}]
    value = avro_value(site, sid, {"id": "S1", "place": {"city": "Bern", "country": "CH"}},
                       [country, place])  # fmt: skip
    reader = SchemaRegistry(registry.url, USER, PASSWORD)
    asyncio.run(reader.fetch(reader.missing([value])))
    assert reader.decode(value) == {"id": "S1", "place": {"city": "Bern", "country": "CH"}}
    # A real registry refuses a reference to a subject it does not have...
    with pytest.raises(RegistryError) as refused:
        registry.register(
            unique("orphan"), site, [{"name": "crm.Place", "subject": unique("gone"), "version": 1}]
        )
    assert refused.value.status == 422


def test_a_reference_to_a_missing_subject_makes_its_records_unknown_schema(
    fake_registry: Registry,
) -> None:
    # ...so the hand-written registry serves one: a subject deleted after the schema that
    # references it was registered looks like this to a consumer.
    registry = fake_registry
    place = {
        "type": "record",
        "name": "Place",
        "namespace": "crm",
        "fields": [{"name": "city", "type": "string"}],
    }
    site = {
        "type": "record",
        "name": "Site",
        "namespace": "crm",
        "fields": [{"name": "id", "type": "string"}, {"name": "place", "type": "crm.Place"}],
    }
    gone = [{"name": "crm.Place", "subject": "gone", "version": 1}]
    sid = registry.register("orphan", site, gone)
    value = avro_value(site, sid, {"id": "S1", "place": {"city": "Bern"}}, [place])
    reader = SchemaRegistry(registry.url, USER, PASSWORD)
    asyncio.run(reader.fetch({sid}))
    with pytest.raises(RecordError, match=r"crm\.Place, not found"):
        reader.decode(value)


def test_a_schema_not_found_while_the_registry_is_not_ready_waits_instead_of_dead_letters(
    fake_registry: Registry,
) -> None:
    # The hand-written registry, held in the moment after a start when Karapace serves
    # before it has read its schemas topic (a real one passes through it in well under a
    # second: test_registry_restart.py watches one come up).
    registry = fake_registry
    sid = register_account(registry)
    value = accounts(sid, 1)[0][1]
    reader = SchemaRegistry(registry.url, USER, PASSWORD)
    registry.starting = True
    with pytest.raises(RegistryUnavailable, match="still reading its schemas"):
        asyncio.run(reader.fetch({sid}))
    assert sid not in reader.schemas  # nothing cached: asked again on the next try
    registry.starting = False
    asyncio.run(reader.fetch({sid}))
    assert reader.decode(value)["id"] == "ACC000000"
    # A registry without a /_health page: its "not found" is believed, and the records of
    # that id are dead letters.
    registry.health_page = False
    asyncio.run(reader.fetch({999}))
    with pytest.raises(RecordError, match="999 is not in the registry"):
        reader.decode(value[:1] + (999).to_bytes(4, "big") + value[5:])
