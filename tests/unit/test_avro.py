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


# -- values built to crash or stall the decoder (issue 13) -----------------------------------
NODE = {
    "type": "record",
    "name": "Node",
    "namespace": "crm",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "next", "type": ["null", "crm.Node"], "default": None},
    ],
}
NULLS = {
    "type": "record",
    "name": "Nulls",
    "fields": [{"name": "xs", "type": {"type": "array", "items": "null"}}],
}


def chain(levels: int, sid: int = 7) -> bytes:
    """A Node value nesting ``levels`` records, in the wire format, written by hand:
    fastavro's writer recurses too."""
    return b"\x00" + sid.to_bytes(4, "big") + b"\x02x\x02" * (levels - 1) + b"\x02x\x00"


def zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def test_a_recursive_schema_s_value_deeper_than_max_depth_is_too_deep() -> None:
    # 255 levels and more raised orjson's TypeError: a crash loop. Measured before
    # decoding (the schema is recursive), refused at the same depth as encoding would.
    shaper = Shaper([], decode=registry_with(NODE).decode)
    shaper.shape(record(chain(254)))
    for levels in (255, 300):
        with pytest.raises(RecordError) as info:
            shaper.shape(record(chain(levels)))
        assert info.value.reason == "too-deep"


def test_values_that_crash_or_stall_fastavro_are_refused_before_it_decodes() -> None:
    """5,000 levels crashed the process inside fastavro (SIGSEGV); an array claiming 10^15
    items that take no bytes (six bytes of value) never finished. Run apart: on a sink
    without the check, the first kills the test process."""
    import subprocess
    import sys

    script = f"""
from fastavro import parse_schema
from sink.avro import SchemaRegistry, _keep_encoded
from sink.decoding import RecordError, Shaper
from sink.records import SinkRecord
from tests.unit.test_avro import chain, zigzag
registry = SchemaRegistry("http://127.0.0.1:1")
registry.schemas[7] = parse_schema(_keep_encoded({NODE!r}))
registry.schemas[8] = parse_schema(_keep_encoded({NULLS!r}))
shaper = Shaper([], decode=registry.decode)
bomb = b"\\x00\\x00\\x00\\x00\\x08" + zigzag(10**15) + b"\\x00"
for value in (chain(5_000), chain(300_000), bomb):
    try:
        shaper.shape(SinkRecord("t", 0, 0, None, value, None, 0))
    except RecordError as exc:
        print(exc.reason)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["too-deep", "too-deep", "record-too-large"]


def test_arrays_of_items_that_take_no_bytes_are_capped() -> None:
    from sink.avro import MAX_EMPTY_ITEMS

    shaper = Shaper([], decode=registry_with(NULLS, sid=8).decode)
    header = b"\x00\x00\x00\x00\x08"
    ok = record(header + zigzag(MAX_EMPTY_ITEMS) + b"\x00")
    assert shaper.shape(ok)["xs"] == [None] * MAX_EMPTY_ITEMS
    # Two blocks, the second one too many; and a block that gives its size too.
    for value in (
        zigzag(MAX_EMPTY_ITEMS) + zigzag(1) + b"\x00",
        zigzag(-(MAX_EMPTY_ITEMS + 1)) + zigzag(0) + b"\x00",
    ):
        with pytest.raises(RecordError) as info:
            shaper.shape(record(header + value))
        assert info.value.reason == "record-too-large"


def test_only_schemas_that_allow_such_values_are_measured() -> None:
    from sink.avro import needs_measuring

    def needs(schema: dict[str, object]) -> bool:
        parsed = parse_schema(_keep_encoded(schema))
        return needs_measuring(parsed, parsed.get("__named_schemas", {}))

    arrays: object = "string"
    for _ in range(254):  # not recursive, but a record and 254 arrays: 255 levels
        arrays = {"type": "array", "items": arrays}
    deep = {"type": "record", "name": "Deep", "fields": [{"name": "f", "type": arrays}]}
    empty = {"type": "record", "name": "E", "fields": []}
    holds_empty = {
        "type": "record",
        "name": "H",
        "fields": [{"name": "es", "type": {"type": "array", "items": empty}}],
    }
    assert not needs(OPPORTUNITY)
    assert needs(NODE) and needs(NULLS) and needs(deep) and needs(holds_empty)


def test_measured_values_that_are_cut_short_are_invalid_avro() -> None:
    shaper = Shaper([], decode=registry_with(NODE).decode)
    for value in (chain(3)[:-1], chain(3)[:-3], b"\x00\x00\x00\x00\x07\xff\xff"):
        with pytest.raises(RecordError) as info:
            shaper.shape(record(value))
        assert info.value.reason == "invalid-avro"


async def test_a_schema_no_parser_can_read_dead_letters_its_records() -> None:
    """A schema nested past Python's recursion limit raised RecursionError out of the
    registry's fetch: the sink stopped, and stopped again after each restart."""
    deep = '{"type":"array","items":' * 3_000 + '"string"' + "}" * 3_000
    bodies = {
        1: {"schema": '{"type":"record","name":"D","fields":[{"name":"f","type":' + deep + "}]}"},
        2: {"schema": "{not json"},
        3: {"schema": orjson.dumps({"type": "no-such-type"}).decode()},
    }
    registry = SchemaRegistry("http://127.0.0.1:1")

    async def get(session: object, path: str) -> object:
        return bodies[int(path.rsplit("/", 1)[1])]

    registry._get = get  # type: ignore[method-assign,assignment]
    await registry.fetch({1, 2, 3})
    shaper = Shaper([], decode=registry.decode)
    for sid in (1, 2, 3):
        with pytest.raises(RecordError) as info:
            shaper.shape(record(b"\x00" + sid.to_bytes(4, "big") + b"\x00"))
        assert info.value.reason == "invalid-schema"
