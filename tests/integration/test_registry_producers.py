"""Records as users produce them: confluent-kafka's ``AvroSerializer`` registers each
writer schema in the real registry under the subject its name strategy names, and
writes the Confluent wire format. The sink decodes them all, whatever the subject and
whichever version of an evolving schema wrote them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import (
    SchemaRegistryClient,
    record_subject_name_strategy,
    topic_record_subject_name_strategy,
    topic_subject_name_strategy,
)
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from tests.real_registry import PASSWORD, USER, RealRegistry
from tests.support import (
    Emulator,
    SinkProcess,
    all_committed,
    create_topic,
    produce,
    sink_env,
    unique,
)

pytestmark = pytest.mark.integration

MILLIS = {"type": "long", "logicalType": "timestamp-millis"}
COMMON = [
    {"name": "id", "type": "string"},
    {"name": "createdAt", "type": MILLIS},
    {"name": "updatedAt", "type": MILLIS},
]
ACCOUNT_V1 = {
    "type": "record",
    "name": "Account",
    "namespace": "crm",
    "fields": [*COMMON, {"name": "name", "type": "string"},
               {"name": "tier", "type": ["null", "string"], "default": None}],
}  # fmt: skip
# Evolution under BACKWARD compatibility: a field added with a default, then one removed.
REGION = {"name": "region", "type": "string", "default": "EMEA"}
ACCOUNT_V2 = {**ACCOUNT_V1, "fields": [*ACCOUNT_V1["fields"], REGION]}
ACCOUNT_V3 = {**ACCOUNT_V2, "fields": [f for f in ACCOUNT_V2["fields"] if f["name"] != "tier"]}
LEAD = {
    "type": "record",
    "name": "Lead",
    "namespace": "crm",
    "fields": [*COMMON, {"name": "source", "type": "string"}],
}
PARTNER = {
    "type": "record",
    "name": "Partner",
    "namespace": "crm",
    "fields": [*COMMON, {"name": "level", "type": "int"}],
}
Strategy = Callable[[SerializationContext, str], str]


def serializer(
    registry: RealRegistry, schema: dict[str, Any], strategy: Strategy
) -> AvroSerializer:
    """A producer's serializer as users configure it (auto-registering its schema)."""
    client = SchemaRegistryClient(
        {"url": registry.url, "basic.auth.user.info": f"{USER}:{PASSWORD}"}
    )
    return AvroSerializer(client, json.dumps(schema), conf={"subject.name.strategy": strategy})


def common(prefix: str, i: int) -> dict[str, Any]:
    created = 1_700_000_000_000 + i
    return {"id": f"{prefix}{i:04d}", "createdAt": created, "updatedAt": created + 900_000}


def test_records_of_every_subject_name_strategy_and_schema_version_reach_clari(
    kafka: str, emulator: Emulator, schema_registry: RealRegistry, logs: Path
) -> None:
    topic = create_topic(kafka, unique("avro-producers"))
    ctx = SerializationContext(topic, MessageField.VALUE)
    writers: list[tuple[dict[str, Any], Strategy, Callable[[int], dict[str, Any]]]] = [
        (ACCOUNT_V1, topic_subject_name_strategy,
         lambda i: {**common("A1-", i), "name": f"v1 {i}", "tier": "gold" if i % 2 else None}),
        (ACCOUNT_V2, topic_subject_name_strategy,
         lambda i: {**common("A2-", i), "name": f"v2 {i}", "tier": None, "region": "APAC"}),
        (ACCOUNT_V3, topic_subject_name_strategy,
         lambda i: {**common("A3-", i), "name": f"v3 {i}", "region": "AMER"}),
        (LEAD, record_subject_name_strategy, lambda i: {**common("L-", i), "source": "webinar"}),
        (PARTNER, topic_record_subject_name_strategy, lambda i: {**common("P-", i), "level": i}),
    ]  # fmt: skip
    rows: list[tuple[bytes, bytes]] = []
    expected: dict[str, dict[str, Any]] = {}
    for schema, strategy, make in writers:
        serialize = serializer(schema_registry, schema, strategy)
        for i in range(20):
            record = make(i)
            rows.append((record["id"].encode(), serialize(record, ctx)))
            expected[record["id"]] = record
    produce(kafka, topic, rows)

    env = sink_env(
        kafka, emulator, topic, KAFKA_VALUE_FORMAT="avro", SCHEMA_REGISTRY_URL=schema_registry.url,
        SCHEMA_REGISTRY_USERNAME=USER, SCHEMA_REGISTRY_PASSWORD=PASSWORD,
    )  # fmt: skip
    out = SinkProcess(env, "--until-drained", log_dir=logs).run_to_end()

    # Where each strategy put its schema, and the evolving subject's three versions.
    subjects = set(schema_registry.request("GET", "/subjects"))
    assert {f"{topic}-value", "crm.Lead", f"{topic}-crm.Partner"} <= subjects
    assert schema_registry.request("GET", f"/subjects/{topic}-value/versions") == [1, 2, 3]
    # Each record as its writer wrote it: v1 has no region, v3 no tier.
    arrived = {r["record"]["id"]: r["record"] for r in emulator.records()}
    assert len(emulator.records()) == len(expected) == 100
    assert arrived == expected
    assert "region" not in arrived["A1-0001"] and arrived["A1-0001"]["tier"] == "gold"
    assert "tier" not in arrived["A3-0001"] and arrived["A3-0001"]["region"] == "AMER"
    assert "dead-lettered" not in out
    assert all_committed(kafka, env, topic)
    assert PASSWORD not in out
