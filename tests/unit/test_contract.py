"""Clari's record contract (sink/contract.py), checked before sending with
``Shaper(contract=True)``: a bad record is dead-lettered alone, with the same verdict on
every path a record can take (the hot path, decoded JSON, excluded attributes, Avro)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from confluent_kafka import Message
from fastavro import parse_schema

from sink.avro import SchemaRegistry, _keep_encoded
from sink.contract import EPOCH_MS_MAX, EPOCH_MS_MIN
from sink.decoding import RecordError, Shaper
from sink.records import SinkRecord
from tests.registry import avro_value

T0 = 1_700_000_000_000
GOOD: dict[str, Any] = {"id": "A1", "createdAt": T0, "updatedAt": T0 + 5, "name": "x"}

# (the record, the reason, what the detail must name)
BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"createdAt": T0, "updatedAt": T0}, "missing-id", "'id'"),
    (GOOD | {"id": None}, "missing-id", "'id'"),
    (GOOD | {"id": ""}, "bad-id", "empty string"),
    (GOOD | {"id": True}, "bad-id", "boolean"),
    (GOOD | {"id": 1.5}, "bad-id", "fraction"),
    (GOOD | {"id": {"crm": 1}}, "bad-id", "object"),
    (GOOD | {"id": ["a"]}, "bad-id", "array"),
    ({"id": "A", "updatedAt": T0}, "missing-timestamp", "'createdAt'"),
    (GOOD | {"updatedAt": None}, "missing-timestamp", "'updatedAt'"),
    (GOOD | {"createdAt": str(T0)}, "bad-timestamp", "'createdAt' is a string"),
    (GOOD | {"createdAt": float(T0)}, "bad-timestamp", "'createdAt'"),
    (GOOD | {"createdAt": T0 // 1000}, "bad-timestamp", "epoch seconds"),
    (GOOD | {"updatedAt": T0 * 1000}, "bad-timestamp", "'updatedAt' is 1700000000000000 (micro"),
    (GOOD | {"createdAt": True}, "bad-timestamp", "boolean"),
    (GOOD | {"createdAt": -1}, "bad-timestamp", "'createdAt' is -1"),
    (GOOD | {"createdAt": 0}, "bad-timestamp", "'createdAt' is 0"),
    (GOOD | {"createdAt": EPOCH_MS_MAX}, "bad-timestamp", "'createdAt'"),
    (GOOD | {"createdAt": [T0]}, "bad-timestamp", "array"),
]
OK: list[dict[str, Any]] = [
    GOOD,
    GOOD | {"id": 7},
    GOOD | {"id": -7, "createdAt": EPOCH_MS_MIN, "updatedAt": EPOCH_MS_MAX - 1},
    GOOD | {"id": " "},
    GOOD | {"extra": {"createdAt": "not checked", "id": None}},
]


def messages(values: list[bytes]) -> list[Message]:
    return [Message(topic="t", partition=0, offset=i, value=v) for i, v in enumerate(values)]


def verdicts(shaper: Shaper, values: list[bytes]) -> dict[str, list[tuple[int, str, str]]]:
    """Each path's rejections: (offset, reason, detail)."""
    out: dict[str, list[tuple[int, str, str]]] = {}
    probed = shaper.probe_messages(messages(values), "id")
    if probed is not None:
        out["probe"] = [(r.offset, e.reason, e.detail) for r, e in probed[2]]
    recs = [SinkRecord("t", 0, i, None, v, None, 0) for i, v in enumerate(values)]
    _, _, refused = shaper.shape_many(recs)
    out["shape_many"] = [(r.offset, e.reason, e.detail) for r, e in refused]
    one: list[tuple[int, str, str]] = []
    for r in recs:
        try:
            shaper.shape(r)
        except RecordError as e:
            one.append((r.offset, e.reason, e.detail))
    out["shape"] = one
    return out


@pytest.mark.parametrize("exclude", [[], ["secret"]], ids=["sent-as-is", "re-encoded"])
def test_each_bad_record_is_refused_alone_with_the_field_named(exclude: list[str]) -> None:
    values = [orjson.dumps(r) for r in OK] + [orjson.dumps(r) for r, _, _ in BAD]
    seen = verdicts(Shaper(exclude, contract=True), values)
    for path, found in seen.items():
        assert [(o, reason) for o, reason, _ in found] == [
            (len(OK) + i, reason) for i, (_, reason, _) in enumerate(BAD)
        ], path
        for (_, _, detail), (_, _, named) in zip(found, BAD, strict=True):
            assert named in detail, (path, detail)


def test_one_bad_record_no_longer_fails_a_batch_of_a_hundred() -> None:
    values = [orjson.dumps(GOOD | {"id": f"A{i}"}) for i in range(100)]
    values[37] = orjson.dumps(GOOD | {"id": "A37", "createdAt": T0 // 1000})
    probed = Shaper([], contract=True).probe_messages(messages(values), "id")
    assert probed is not None
    passed, ids, rejected = probed
    assert len(passed) == 99 and "A37" not in ids
    assert [(r.offset, e.reason) for r, e in rejected] == [(37, "bad-timestamp")]


def test_the_contract_is_off_unless_asked_for() -> None:
    values = [orjson.dumps(r) for r, _, _ in BAD]
    assert verdicts(Shaper([]), values) == {"probe": [], "shape_many": [], "shape": []}


def test_the_contract_reads_id_whatever_clari_id_field_names() -> None:
    values = [
        orjson.dumps(GOOD | {"crmId": "C1"}),
        orjson.dumps({"crmId": "C2"} | GOOD | {"id": ""}),
    ]
    probed = Shaper([], contract=True).probe_messages(messages(values), "crmId")
    assert probed is not None
    assert probed[1] == ["C1"] and [e.reason for _, e in probed[2]] == ["bad-id"]


def test_repeated_contract_keys_get_the_same_verdict_on_every_path() -> None:
    """simdjson (the hot path) reads the first of repeated keys, orjson the last: the
    contract reads the first on every path, or the replayer, shaping a record the hot
    path passed, would refuse it and stop the sink."""
    ts = b'"createdAt":1700000000000,"updatedAt":1700000000001'
    values = [
        b'{"id":"X","id":"",' + ts + b"}",  # passes: the first id is good
        b'{"id":"","id":"X",' + ts + b"}",
        b'{"id":"X",' + ts + b',"createdAt":1}',  # passes: the first createdAt is good
        b'{"id":"X","createdAt":1,' + ts + b"}",
    ]
    seen = verdicts(Shaper([], contract=True), values)
    expected = [(1, "bad-id"), (3, "bad-timestamp")]
    assert {path: [(o, reason) for o, reason, _ in v] for path, v in seen.items()} == {
        "probe": expected,
        "shape_many": expected,
        "shape": expected,
    }


def test_values_simdjson_refuses_are_judged_by_orjson_on_every_path() -> None:
    big = b'{"id":"B","n":123456789012345678901234567890,' + b'"createdAt":1,"updatedAt":1}'
    seen = verdicts(Shaper([], contract=True), [big])
    assert {p: [r for _, r, _ in v] for p, v in seen.items()} == {
        "probe": ["bad-timestamp"],
        "shape_many": ["bad-timestamp"],
        "shape": ["bad-timestamp"],
    }


def test_a_refused_object_id_leaves_the_rest_of_the_poll_on_the_fast_path() -> None:
    """A field read as a simdjson proxy (an object) must be let go of before the next
    parse, or each later value would fail to parse and be decoded one by one."""
    shaper = Shaper([], contract=True)
    values = [orjson.dumps(GOOD | {"id": {"o": 1}})] + [orjson.dumps(GOOD)] * 3
    calls = 0
    shape = shaper.shape

    def counting(record: SinkRecord) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return shape(record)

    shaper.shape = counting  # type: ignore[method-assign]
    probed = shaper.probe_messages(messages(values), "id")
    assert probed is not None and len(probed[0]) == 3 and calls == 1


AVRO = {
    "type": "record",
    "name": "Account",
    "fields": [
        {"name": "id", "type": ["null", "string"]},
        {"name": "createdAt", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "updatedAt", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    ],
}


def test_avro_records_meet_the_contract_too() -> None:
    registry = SchemaRegistry("http://127.0.0.1:1")
    registry.schemas[3] = parse_schema(_keep_encoded(AVRO))
    shaper = Shaper([], decode=registry.decode, contract=True)
    good = avro_value(AVRO, 3, {"id": "A", "createdAt": T0, "updatedAt": T0})
    shaper.shape(SinkRecord("t", 0, 0, None, good, None, 0))
    cases = {
        avro_value(AVRO, 3, {"id": None, "createdAt": T0, "updatedAt": T0}): "missing-id",
        # A timestamp-micros field holds microseconds: not what Clari reads.
        avro_value(AVRO, 3, {"id": "A", "createdAt": T0, "updatedAt": T0 * 1000}): "bad-timestamp",
    }
    for value, reason in cases.items():
        with pytest.raises(RecordError) as info:
            shaper.shape(SinkRecord("t", 0, 0, None, value, None, 0))
        assert info.value.reason == reason
