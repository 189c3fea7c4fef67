"""Generated values, JSON and Avro, thrown at shape -> batch -> render (issue 13).

Invariants, for every value and every way the sink can be set up to shape it:
- shaping raises nothing but RecordError, whose reason is one the sink documents;
- every message is either placed in a batch or rejected with a reason, exactly once;
- the hot path (probe_messages), shape_many and shape() reach the same verdicts (the
  replayer shapes again what the hot path passed: a different verdict stops the sink);
- every body parses, in every content format and template.

Needs Hypothesis (a dev dependency); skipped without it.
"""

from __future__ import annotations

import csv
import io
import json
import struct
import sys
import xml.etree.ElementTree as ET
from typing import Any

import orjson
import pytest
from confluent_kafka import Message

hypothesis = pytest.importorskip("hypothesis")
from fastavro import parse_schema, schemaless_writer  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sink.avro import SchemaRegistry, _keep_encoded  # noqa: E402
from sink.batching import Batcher, grouping_function  # noqa: E402
from sink.config import Settings  # noqa: E402
from sink.decoding import RecordError, Shaper  # noqa: E402
from sink.endpoint import EndpointBuilder  # noqa: E402
from sink.records import Batch, SinkRecord  # noqa: E402

REASONS = {
    "null-value",
    "invalid-json",
    "not-an-object",
    "too-deep",
    "missing-id",
    "bad-id",
    "missing-timestamp",
    "bad-timestamp",
    "record-too-large",
    "invalid-avro",
    "not-avro",
    "unknown-schema",
    "invalid-schema",
    "unencodable",
    "missing-group-attribute",
}
FAST = settings(
    max_examples=150,
    database=None,  # nothing written into the work tree
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- JSON values ------------------------------------------------------------------------------
# Any character, lone surrogates included: the stdlib writes them as \ud800 escapes, which
# both parsers refuse.
odd_text = st.text(st.characters(exclude_categories=()), max_size=12) | st.sampled_from(
    ["", "=1+1", "+1", "-1", "@x", "\t", "\r\n", "'", "a.b", "a\\b", "\x00", "\ufffe", "😀"]
)
keys = odd_text | st.sampled_from(["id", "createdAt", "updatedAt", "secret", "a", "b", "item"])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | odd_text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=16,
)
stamps = st.integers(min_value=-1, max_value=2**63) | st.sampled_from(
    [1_700_000_000_000, 31_536_000_000, 7_258_118_399_999, 1_700_000_000, 1.7e12]
)
records = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=4) | st.integers() | st.none() | st.booleans() | st.floats(),
        "createdAt": stamps,
        "updatedAt": stamps,
        "secret": json_values,
        "a": st.dictionaries(keys, json_values, max_size=3),
        "body": json_values,
    },
)

# Records with every contract field, each good more often than not.
complete = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["A", "B", 7]) | st.text(max_size=2),
        "createdAt": st.sampled_from([1_700_000_000_000, 1_700_000_000_001]) | stamps,
        "updatedAt": st.sampled_from([1_700_000_000_000, 1_700_000_000_001]) | stamps,
    },
    optional={"secret": json_values, "a": st.dictionaries(keys, json_values, max_size=2)},
)


def _dumps(value: Any, pretty: bool) -> bytes:
    """JSON as a producer may write it: big integers, escaped surrogates, indented."""
    return json.dumps(value, indent=2 if pretty else None).encode()


@st.composite
def raw_values(draw: st.DrawFn) -> bytes | None:
    kind = draw(
        st.sampled_from(
            [
                "record",
                "duplicate",
                "record",
                "duplicate",
                "any",
                "pretty",
                "bom",
                "bad-utf8",
                "duplicate",
                "deep",
                "cut",
                "bytes",
                "tombstone",
            ]
        )
    )
    value = _dumps(draw(records), pretty=kind == "pretty")
    if kind == "any":
        return _dumps(draw(json_values), pretty=False)
    if kind == "bom":
        return b"\xef\xbb\xbf" + value
    if kind == "bad-utf8":
        at = draw(st.integers(0, len(value)))
        return value[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + value[at:]
    if kind == "duplicate":
        # A field twice, one value good for Clari's contract and one bad: every path
        # must read the same one.
        key = draw(st.sampled_from(["id", "createdAt", "updatedAt", "secret"]))
        good: Any = "X" if key == "id" else 1_700_000_000_000
        bad = draw(st.sampled_from(["", 1, None, [], 1.5, {"a": 1}]))
        first, second = (good, bad) if draw(st.booleans()) else (bad, good)
        value = _dumps(draw(complete) | {key: second}, pretty=False)
        return b'{"' + key.encode() + b'":' + _dumps(first, pretty=False) + b"," + value[1:]
    if kind == "deep":
        depth = draw(st.integers(0, 1_100))
        body = b'"createdAt":1700000000000,"updatedAt":1700000000000'
        return b'{"id":"D",' + body + b',"a":' + b"[" * depth + b"]" * depth + b"}"
    if kind == "cut":
        return value[: draw(st.integers(0, len(value)))]
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    if kind == "tombstone":
        return None
    return value


# -- Avro values ------------------------------------------------------------------------------
FLAT = {
    "type": "record",
    "name": "Flat",
    "fields": [
        {"name": "id", "type": ["null", "string", "long"]},
        {"name": "createdAt", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "updatedAt", "type": "long"},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9}},
        {"name": "score", "type": "double"},
        {"name": "stage", "type": {"type": "enum", "name": "Stage", "symbols": ["A", "B"]}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "attrs", "type": {"type": "map", "values": ["null", "long", "string"]}},
        {"name": "blob", "type": "bytes"},
        {"name": "secret", "type": "string"},
    ],
}
NODE = {
    "type": "record",
    "name": "Node",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "next", "type": ["null", "Node"], "default": None},
    ],
}
NULLS = {
    "type": "record",
    "name": "Nulls",
    "fields": [{"name": "xs", "type": {"type": "array", "items": "null"}}],
}
REGISTRY = SchemaRegistry("http://127.0.0.1:1")
for _sid, _schema in ((1, FLAT), (2, NODE), (3, NULLS)):
    REGISTRY.schemas[_sid] = parse_schema(_keep_encoded(_schema))
FLAT_PARSED = parse_schema(FLAT)

avro_text = st.text(max_size=8)
flat_records = st.fixed_dictionaries(
    {
        "id": st.none() | avro_text | st.integers(-(2**63), 2**63 - 1),
        "createdAt": st.integers(-(2**63), 2**63 - 1),
        "updatedAt": st.integers(-(2**63), 2**63 - 1),
        "amount": st.decimals(min_value=-(10**8), max_value=10**8, places=0),
        "score": st.floats(allow_nan=False),
        "stage": st.sampled_from(["A", "B"]),
        "tags": st.lists(avro_text, max_size=3),
        "attrs": st.dictionaries(avro_text, st.none() | st.integers(-5, 5) | avro_text, max_size=3),
        "blob": st.binary(max_size=8),
        "secret": avro_text,
    }
)


def _zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


@st.composite
def avro_values(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["flat", "flat", "chain", "nulls", "flipped", "cut"]))
    if kind == "chain":
        levels = draw(st.integers(1, 6_000))
        return struct.pack(">bI", 0, 2) + b"\x02x\x02" * (levels - 1) + b"\x02x\x00"
    if kind == "nulls":
        return struct.pack(">bI", 0, 3) + _zigzag(draw(st.integers(0, 10**15))) + b"\x00"
    out = io.BytesIO()
    schemaless_writer(out, FLAT_PARSED, draw(flat_records))
    value = struct.pack(">bI", 0, 1) + out.getvalue()
    if kind == "flipped":
        at = draw(st.integers(5, len(value) - 1))
        value = value[:at] + bytes([draw(st.integers(0, 255))]) + value[at + 1 :]
    elif kind == "cut":
        value = value[: draw(st.integers(0, len(value)))]
    return value


# -- the path ---------------------------------------------------------------------------------
def messages(values: list[bytes | None]) -> list[Message]:
    return [
        Message(topic="t", partition=i % 2, offset=i, key=f"k{i % 3}".encode(), value=v)
        for i, v in enumerate(values)
    ]


def verdicts_agree_and_cover(shaper: Shaper, msgs: list[Message]) -> list[SinkRecord]:
    """Shape ``msgs`` on every path the shaper has; check the invariants; the records
    that pass, shaped."""
    recs = list(map(SinkRecord.from_message, msgs))
    shaped, datas, refused = shaper.shape_many(recs)
    verdict = _check_cover(len(msgs), [r.offset for r in shaped], refused)
    one: dict[int, str] = {}
    for r in map(SinkRecord.from_message, msgs):
        try:
            shaper.shape(r)
        except RecordError as exc:
            one[r.offset] = exc.reason
    assert one == verdict, "shape() and shape_many() disagree"
    probed = shaper.probe_messages(msgs, "id")
    if probed is not None:
        passed, rids, rejected = probed
        assert len(rids) == len(passed)
        probe_verdict = _check_cover(len(msgs), [m.offset() for m in passed], rejected)
        assert probe_verdict == verdict, "probe_messages() and shape() disagree"
        batcher = Batcher(max_records=3, max_bytes=4_000, linger_s=0, group_of=None)
        closed, refused_now = batcher.add_messages(passed, rids)
        _check_batches([*closed, *batcher.flush()], refused_now, len(passed), render=False)
    for group_of in (None, grouping_function("key", None)):
        batcher = Batcher(max_records=3, max_bytes=4_000, linger_s=0, group_of=group_of)
        closed, refused_now = batcher.add_many(list(shaped), datas)
        # The bodies hold the same records whichever way they are batched: render once.
        batches = [*closed, *batcher.flush()]
        _check_batches(batches, refused_now, len(shaped), render=group_of is None)
    return shaped


def _check_cover(n: int, passed: list[int], rejected: list[Any]) -> dict[int, str]:
    verdict: dict[int, str] = {}
    for record, error in rejected:
        assert isinstance(error, RecordError) and error.reason in REASONS, error
        assert record.offset not in verdict
        verdict[record.offset] = error.reason
    assert sorted([*passed, *verdict]) == list(range(n)), "a record was lost or doubled"
    return verdict


def _check_batches(batches: list[Batch], refused: list[Any], placed: int, render: bool) -> None:
    for _, error in refused:
        assert isinstance(error, RecordError) and error.reason in REASONS
    assert sum(b.count for b in batches) + len(refused) == placed
    for batch in batches if render else ():
        for fmt_builder in BUILDERS.values():
            check_body(fmt_builder, batch)


def _settings(**extra: str) -> Settings:
    base = {"CLARI_API_TOKEN": "tok", "CLARI_PARTNER_KEY": "pk", "CLARI_ENTITY_TYPE": "Account"}
    return Settings(**(base | extra))


BUILDERS = {
    fmt: EndpointBuilder(
        _settings(
            CLARI_TEMPLATE="manual",
            CLARI_URL="https://clari.example/ingest/{id}",
            CLARI_CONTENT_FORMAT=fmt,
        )
    )
    for fmt in ("json", "ndjson", "csv", "xml", "clari-datasets")
} | {
    "upload": EndpointBuilder(_settings()),
    "bulk": EndpointBuilder(_settings(CLARI_TEMPLATE="ingest-bulk-entities")),
}


def check_body(builder: EndpointBuilder, batch: Batch) -> None:
    req = builder.build(batch, is_last=True)
    body, n = req.body, batch.count
    fmt = builder.format
    if builder.template == "ingest-bulk-entities":
        body = body.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(body.decode(), newline="")))
        assert len(rows) == n + 1 and len({len(r) for r in rows}) == 1
    elif fmt == "xml":
        assert len(ET.fromstring(body).findall("record")) == n
    elif fmt == "ndjson":
        lines = body.split(b"\n")
        assert lines[-1] == b"" and len(lines) == n + 1
        assert all(isinstance(_loads(line), dict) for line in lines[:-1])
    elif fmt == "json":
        assert len(_loads(body)) == n
    else:
        assert len(_loads(body)[0]["records"]) == n


def _loads(body: bytes) -> Any:
    """The stdlib's strict decoder, with room for the 1027 levels a body may reach."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        return json.loads(body, parse_constant=_no_constants)
    finally:
        sys.setrecursionlimit(limit)


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


JSON_SHAPERS = [
    Shaper([]),
    Shaper([], contract=True),
    Shaper(["secret", "a.b"]),
    Shaper(["secret"], contract=True),
]


@FAST
@given(st.lists(raw_values(), min_size=1, max_size=8))
def test_json_values_shape_batch_and_render_whatever_they_hold(
    values: list[bytes | None],
) -> None:
    msgs = messages(values)
    for shaper in JSON_SHAPERS:
        verdicts_agree_and_cover(shaper, msgs)


AVRO_SHAPERS = [
    Shaper([], decode=REGISTRY.decode),
    Shaper(["secret"], decode=REGISTRY.decode, contract=True),
]


@FAST
@given(st.lists(avro_values(), min_size=1, max_size=6))
def test_avro_values_shape_batch_and_render_whatever_they_hold(values: list[bytes]) -> None:
    msgs = messages(list(values))
    for shaper in AVRO_SHAPERS:
        for record in verdicts_agree_and_cover(shaper, msgs):
            assert isinstance(orjson.loads(record.body), dict)
