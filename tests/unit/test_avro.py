"""Avro values in the Confluent wire format, decoded into the JSON Clari is sent."""

from __future__ import annotations

import base64
from decimal import Decimal

import orjson
import pytest
from fastavro import parse_schema

from sink.avro import SchemaRegistry, _keep_encoded, schema_id
from sink.decoding import RecordError, Shaper
from sink.records import SinkRecord
from tests.registry import avro_value

OPPORTUNITY = {
    "type": "record",
    "name": "Opportunity",
    "namespace": "crm",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "createdAt", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "updatedAt", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "closeDate", "type": {"type": "int", "logicalType": "date"}},
        {
            "name": "amount",
            "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2},
        },
        {"name": "stage", "type": {"type": "enum", "name": "Stage", "symbols": ["OPEN", "WON"]}},
        {"name": "owner", "type": ["null", "string"], "default": None},
        {"name": "blob", "type": "bytes"},
        {"name": "secret", "type": "string"},
    ],
}
REC = {
    "id": "OPP-1",
    "createdAt": 1_700_000_000_123,
    "updatedAt": 1_700_000_999_456,
    "closeDate": 19_700,
    "amount": Decimal("1234.50"),
    "stage": "WON",
    "owner": None,
    "blob": b"\x00\xff",
    "secret": "x",
}


def registry_with(schema: dict[str, object], sid: int = 7) -> SchemaRegistry:
    registry = SchemaRegistry("http://127.0.0.1:1")
    registry.schemas[sid] = parse_schema(_keep_encoded(schema))
    return registry


def record(value: bytes | None) -> SinkRecord:
    return SinkRecord("crm", 0, 3, b"k", value, None, 0)


def test_decodes_into_the_json_clari_is_sent() -> None:
    registry = registry_with(OPPORTUNITY)
    r = record(avro_value(OPPORTUNITY, 7, REC))
    data = Shaper(["secret"], decode=registry.decode).shape(r)
    sent = orjson.loads(r.body)
    assert sent == data | {"amount": 1234.5, "blob": base64.b64encode(b"\x00\xff").decode()}
    # Timestamps stay epoch milliseconds (Clari's format), dates days since the epoch.
    assert sent["createdAt"] == 1_700_000_000_123 and sent["closeDate"] == 19_700
    assert sent["stage"] == "WON" and sent["owner"] is None and "secret" not in sent


def test_values_that_are_not_avro_of_a_known_schema_are_record_errors() -> None:
    registry = registry_with(OPPORTUNITY)
    shaper = Shaper([], decode=registry.decode)
    registry.schemas[9] = RecordError("unknown-schema", "schema id 9 is not in the registry")
    good = avro_value(OPPORTUNITY, 7, REC)
    cases = {
        b'{"id": "json, not avro"}': "not-avro",
        good[:5] + good[5:12]: "invalid-avro",  # truncated
        b"\x00\x00\x00\x00\x09" + good[5:]: "unknown-schema",
    }
    for value, reason in cases.items():
        with pytest.raises(RecordError) as info:
            shaper.shape(record(value))
        assert info.value.reason == reason
    assert schema_id(good) == 7 and schema_id(b"\x00\x01") is None and schema_id(None) is None


def test_registry_lists_only_ids_it_has_not_fetched() -> None:
    registry = registry_with(OPPORTUNITY, sid=7)
    values = [avro_value(OPPORTUNITY, 7, REC), avro_value(OPPORTUNITY, 8, REC), b"{}", None]
    assert registry.missing(values) == {8}
