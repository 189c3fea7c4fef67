"""The real registry restarting: its schemas live in Kafka and come back with it, it
answers ``/_health`` before it is ready, and a sink that needs a new schema meanwhile
waits and then delivers every record once."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import topic_subject_name_strategy
from confluent_kafka.serialization import MessageField, SerializationContext

from devkit.kafka_local import free_port
from sink.avro import SchemaRegistry
from tests.integration.test_registry_producers import ACCOUNT_V1, ACCOUNT_V2, common, serializer
from tests.real_registry import PASSWORD, USER, RealRegistry, RegistryError
from tests.support import (
    Emulator,
    SinkProcess,
    committed,
    create_topic,
    produce,
    sink_env,
    unique,
    wait_all_committed,
    wait_until,
)

pytestmark = pytest.mark.integration


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_registry_restart_while_the_sink_runs_holds_records_then_delivers_all_once(
    kafka: str, emulator: Emulator, schema_registry: RealRegistry, logs: Path
) -> None:
    registry = schema_registry
    topic = create_topic(kafka, unique("avro-restart"), partitions=2)
    ctx = SerializationContext(topic, MessageField.VALUE)
    v1 = serializer(registry, ACCOUNT_V1, topic_subject_name_strategy)
    before = [{**common("B-", i), "name": f"before {i}", "tier": None} for i in range(40)]
    produce(kafka, topic, [(r["id"].encode(), v1(r, ctx)) for r in before], lambda i: i % 2)
    admin = free_port()
    env = sink_env(
        kafka, emulator, topic, KAFKA_VALUE_FORMAT="avro", SCHEMA_REGISTRY_URL=registry.url,
        SCHEMA_REGISTRY_USERNAME=USER, SCHEMA_REGISTRY_PASSWORD=PASSWORD,
        ADMIN_PORT=admin, ADMIN_HOST="127.0.0.1",
    )  # fmt: skip
    sink = SinkProcess(env, log_dir=logs).start()
    try:
        wait_until(lambda: len(emulator.records()) == 40, 60, what="the first 40 records")
        wait_all_committed(kafka, env, topic)
        # A producer moves to v2 while the registry is up (its serializer registers v2 and
        # keeps the id), then the registry goes down and the v2 records arrive.
        v2 = serializer(registry, ACCOUNT_V2, topic_subject_name_strategy)
        during = [{**common("D-", i), "name": f"during {i}", "tier": None, "region": "EU"}
                  for i in range(40)]  # fmt: skip
        values = [(r["id"].encode(), v2(r, ctx)) for r in during]
        registry.stop()
        produce(kafka, topic, values, lambda i: i % 2)
        wait_until(lambda: "schema registry unavailable" in sink.output(), 30, what="retries")
        status, body = readyz(admin)
        assert status == 503 and "schema-registry" in body["problems"], body
        time.sleep(1.5)
        assert len(emulator.records()) == 40  # held: nothing sent, nothing dead-lettered
        assert "dead-lettered" not in sink.output()
        assert committed(kafka, env["KAFKA_GROUP_ID"], topic) == {0: 20, 1: 20}

        registry.start()  # same port and topic: the schemas come back from Kafka
        wait_until(lambda: len(emulator.records()) == 80, 60, what="the records held")
        wait_until(lambda: readyz(admin)[0] == 200, 30, what="/readyz 200 again")
        wait_all_committed(kafka, env, topic)
    finally:
        sink.signal(signal.SIGTERM)
    assert sink.wait(60) == 0, sink.output()
    ids = [r["record"]["id"] for r in emulator.records()]
    assert sorted(ids) == sorted(r["id"] for r in before + during)  # each once, none lost
    assert {r["record"]["region"] for r in emulator.records() if r["record"]["id"][0] == "D"} == {
        "EU"
    }
    assert "dead-lettered" not in sink.output() and PASSWORD not in sink.output()


def test_schemas_survive_a_restart_and_health_answers_before_the_registry_is_ready(
    schema_registry: RealRegistry,
) -> None:
    registry = schema_registry
    subject = unique("survivor") + "-value"
    schema = {**ACCOUNT_V1, "name": "Survivor"}
    sid = registry.register(subject, schema)
    registry.stop()
    starting = registry.start_in_background()
    seen: list[int | bool] = []  # each /_health answer: its status, or whether ready
    try:
        while starting.poll() is None:
            try:
                seen.append(registry.health()["status"]["schema_registry_ready"])
            except RegistryError as exc:
                seen.append(exc.status)  # Karapace's first answers: 500
            except OSError:
                pass  # not listening yet
            time.sleep(0.005)  # Karapace's not-ready moment lasts a few hundred ms
    finally:
        _, err = starting.communicate(timeout=60)
    assert starting.returncode == 0, err
    # It answers before it has read its schemas topic: an answer is not readiness.
    assert seen and seen[0] is not True and seen[-1] is True, seen
    # Ready, it has every schema back from Kafka: same id, same text, same versions.
    assert json.loads(registry.request("GET", f"/schemas/ids/{sid}")["schema"]) == schema
    assert registry.request("GET", f"/subjects/{subject}/versions") == [1]
    reader = SchemaRegistry(registry.url, USER, PASSWORD)
    asyncio.run(reader.fetch({sid}))
    assert not isinstance(reader.schemas[sid], Exception)
