"""Records built to break the sink (issue 13): each ends in a dead letter with a reason, or
goes through intact, never in an exception that stops the sink."""

from __future__ import annotations

import base64
import csv
import io
import sys
import xml.etree.ElementTree as ET
from typing import Any

import orjson
import pytest
from confluent_kafka import Message

from sink.contract import JSON_MAX_DEPTH, MAX_DEPTH, duplicate_key, duplicate_keys
from sink.decoding import RecordError, Shaper, encode, record_id
from sink.formats import csv_column, render
from sink.records import SinkRecord

STAMPS = b'"createdAt":1700000000000,"updatedAt":1700000000001'


def deep_value(depth: int, pretty: bool = False) -> bytes:
    """A JSON record whose objects and arrays nest ``depth`` levels (the record is one)."""
    nl = b"\n" if pretty else b""
    inner = b"[" * (depth - 1) + b"]" * (depth - 1)
    return b"{" + nl + b'"id":"D",' + nl + STAMPS + b',"a":' + inner + nl + b"}"


def record(value: bytes | None, offset: int = 0) -> SinkRecord:
    return SinkRecord("t", 0, offset, None, value, None, 0)


def messages(*values: bytes | None) -> list[Message]:
    return [Message(topic="t", partition=0, offset=i, value=v) for i, v in enumerate(values)]


def reason_of(shaper: Shaper, value: bytes) -> str | None:
    try:
        shaper.shape(record(value))
    except RecordError as exc:
        return exc.reason
    return None


GOOD = b'{"id":"G",' + STAMPS + b"}"


# -- deep records (item 1) --------------------------------------------------------------------
@pytest.mark.parametrize("depth", [255, 300, JSON_MAX_DEPTH])
def test_a_deep_record_with_excluded_attributes_is_dead_lettered_too_deep(depth: int) -> None:
    # It used to raise orjson's TypeError ("Recursion limit reached"): a crash loop.
    assert reason_of(Shaper(["secret"]), deep_value(depth)) == "too-deep"


def test_where_records_are_encoded_again_the_limit_is_max_depth_levels() -> None:
    shaper = Shaper(["secret"])
    assert MAX_DEPTH == 254  # what orjson encodes
    assert reason_of(shaper, deep_value(MAX_DEPTH)) is None
    assert reason_of(shaper, deep_value(MAX_DEPTH + 1)) == "too-deep"
    nested: Any = {"id": "x"}
    for _ in range(MAX_DEPTH - 1):
        nested = {"n": nested}
    assert orjson.loads(encode(nested)) == nested  # the wrapping lists are gone
    with pytest.raises(RecordError, match="too-deep"):
        encode({"n": nested})


def test_orjson_encodes_254_levels_and_no_more() -> None:
    """encode() relies on it to refuse records deeper than MAX_DEPTH exactly."""
    nested: Any = 1
    for _ in range(254):
        nested = [nested]
    orjson.dumps(nested)
    with pytest.raises(TypeError):
        orjson.dumps([nested])


def test_json_deeper_than_the_parsers_take_is_too_deep_on_every_path() -> None:
    value = deep_value(JSON_MAX_DEPTH + 1)
    probed = Shaper([]).probe_messages(messages(GOOD, value), "id")
    assert probed is not None
    assert [(r.offset, e.reason) for r, e in probed[2]] == [(1, "too-deep")]
    _, _, refused = Shaper([]).shape_many([record(GOOD), record(value, 1)])
    assert [(r.offset, e.reason) for r, e in refused] == [(1, "too-deep")]
    # As deep as the parsers take: sent as it is, where nothing is encoded again.
    probed = Shaper([]).probe_messages(messages(deep_value(JSON_MAX_DEPTH)), "id")
    assert probed is not None and len(probed[0]) == 1


def test_a_poll_holding_a_deep_record_shapes_the_rest() -> None:
    recs = [record(GOOD, 0), record(deep_value(400), 1), record(GOOD, 2)]
    shaped, datas, rejected = Shaper(["secret"]).shape_many(recs)
    assert [r.offset for r in shaped] == [0, 2] and len(datas) == 2
    assert [(r.offset, e.reason) for r, e in rejected] == [(1, "too-deep")]


def test_an_id_nested_deeper_than_max_depth_counts_as_no_id() -> None:
    # repr() of a 900-level id raised RecursionError in the probe: a crash.
    value = b'{"id":' + b"[" * 900 + b"]" * 900 + b"}"
    probed = Shaper([]).probe_messages(messages(value, b'{"id":[[1]]}'), "id")
    assert probed is not None and probed[1] == [None, "[[1]]"] and not probed[2]
    assert record_id(orjson.loads(value), "id") is None


@pytest.mark.parametrize("fmt", ["csv", "xml", "ndjson", "json", "clari-datasets"])
def test_bodies_are_built_from_records_as_deep_as_the_parsers_take(fmt: str) -> None:
    # A record sent as it is may nest 1024 levels: CSV and XML recursed (RecursionError),
    # NDJSON compacted pretty JSON with orjson (TypeError beyond 254 levels).
    recs = [record(deep_value(JSON_MAX_DEPTH, pretty=True)), record(GOOD, 1)]
    for r in recs:
        Shaper([]).shape(r)
    body = render(fmt, recs, "crm_x")
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(body.decode())))
        assert len(rows) == 3 and {len(r) for r in rows} == {len(rows[0])}
    elif fmt == "xml":
        assert len(ET.fromstring(body).findall("record")) == 2
    elif fmt == "ndjson":
        lines = body.splitlines()
        assert len(lines) == 2 and lines[0] == recs[0].body.replace(b"\n", b" ")
    else:
        assert _json_loads_any_depth(body)


def test_sample_shows_a_deep_record_as_rejected() -> None:
    from sink.config import Settings
    from sink.sampling import sample_requests

    settings = Settings(
        CLARI_ENTITY_TYPE="Opportunity",
        CLARI_API_TOKEN="tok",
        CLARI_PARTNER_KEY="pk",
        CLARI_EXCLUDE_ATTRIBUTES="secret",
    )
    recs = [record(GOOD, 0), record(deep_value(300), 1)]
    requests, rejected = sample_requests(settings, recs, Shaper(["secret"]))
    assert [req.records for req in requests] == [1]
    assert [(r.offset, why.split(":")[0]) for r, why in rejected] == [(1, "too-deep")]


def _json_loads_any_depth(body: bytes) -> Any:
    """The stdlib's decoder with room for a body as deep as a record sent as it is."""
    import json

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        return json.loads(body)
    finally:
        sys.setrecursionlimit(limit)


# -- duplicate keys (item 2) ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "path"),
    [
        (b'{"id":"Y","id":"X"}', "id"),
        (b'{"id":"Y", "\\u0069d" :"X"}', "id"),  # the same key, spelt with an escape
        (b'{"a":{"b":1,"c":{},"b":2}}', "a.b"),
        (b'{"a":[{"k":1},{"k":1,"k":2}]}', "a.[].k"),
        (b'{ "a" : 1 ,\n "a" : 2 }', "a"),
        (b'{"a":[{"k":1},{"k":2}],"b":{"k":1},"k":[{"k":{"k":1}}]}', None),
        (b'{"a":"\\"a\\":1,\\"a\\":2","b":["a","a"]}', None),  # strings are not keys
        (b'{"x":' + b'{"y":' * 900 + b'{"z":1,"z":2}' + b"}" * 900 + b"}", None),
    ],
)
def test_duplicate_keys_are_found_at_any_depth(value: bytes, path: str | None) -> None:
    if path is None and value.startswith(b'{"x":'):
        path = "x" + ".y" * 900 + ".z"
    assert duplicate_key(value) == path


def test_the_records_whose_id_the_sink_and_clari_read_differently_are_named() -> None:
    """The hot path reads the first of repeated keys (simdjson), orjson and Clari the
    last: asked when the API refuses a batch, duplicate_keys() names the culprit, not
    the record whose id the API's error names."""
    clash = b'{"id":"Y","id":"X",' + STAMPS + b"}"
    honest = b'{"id":"X",' + STAMPS + b"}"
    probed = Shaper([]).probe_messages(messages(clash, honest), "id")
    assert probed is not None and probed[1] == ["Y", "X"]  # no batch cut: ids differ
    assert orjson.loads(clash)["id"] == "X"  # what Clari reads: a duplicate id in the batch
    recs = [record(clash, 0), record(honest, 1)]
    for r in recs:
        Shaper([]).shape(r)
    found = duplicate_keys(recs)
    assert [(r.offset, e.reason) for r, e in found] == [(0, "duplicate-key")]
    assert "'id'" in found[0][1].detail


# -- content formats (item 4) -----------------------------------------------------------------
HOSTILE_ROWS: list[dict[str, Any]] = [
    {
        "id": "A",
        "a": {"b": 1},
        "a.b": 2,
        "a\\.b": 3,
        "f": '=HYPERLINK("http://x")',
        "p": "+1 555",
        "m": "-2+3",
        "at": "@SUM(A1)",
        "tab": "\t=1",
        "cr": "\r=1",
        "apos": "'quoted",
        "neg": -5,
        "fl": 1.5,
        "t": True,
        "none": None,
        "empty": {},
        "list": [1, {"k": None}, []],
        "=key": "k",
    },
    {
        "id": "B",
        "a b": 1,
        "a_b": 2,
        "bell": "ring\x07",
        "nul": "a\x00b",
        "crlf": "x\r\ny",
        "\x01key": "v",
        "xmlish": 1,
        "1st": 2,
        "é": "ü",
        "item": {"item": [{"item": "i"}]},
        "field": "f",
        "s": "",
        "emoji": "😀\U0010fffd\ufffe",
    },
]


def _records(rows: list[dict[str, Any]]) -> list[SinkRecord]:
    recs = [record(orjson.dumps(row), i) for i, row in enumerate(rows)]
    for r in recs:
        Shaper([]).shape(r)
    return recs


def _text(value: Any) -> Any:
    """A decoded value as the XML body holds it: scalars as JSON writes them, as text."""
    if isinstance(value, dict):
        return {k: _text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_text(v) for v in value]
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _from_xml(elem: ET.Element) -> Any:
    """Read an element back by the rules sink/formats.py documents."""
    kind = elem.get("type")
    if kind == "array":
        return [_from_xml(item) for item in elem]
    if kind == "null":
        return None
    if kind == "object":
        return {}
    if len(elem):
        return dict(_xml_field(child) for child in elem)
    text = elem.text or ""
    if elem.get("encoding") == "base64":
        return base64.b64decode(text).decode()
    return text


def _xml_field(elem: ET.Element) -> tuple[str, Any]:
    key = elem.tag
    if key == "field" and "name" in elem.attrib:
        key = elem.attrib["name"]
    elif key == "field" and "name64" in elem.attrib:
        key = base64.b64decode(elem.attrib["name64"]).decode()
    return key, _from_xml(elem)


def test_xml_bodies_parse_and_keep_every_key_and_value() -> None:
    # Control characters made malformed XML; "a b" and "a_b" were both <a_b>.
    body = render("xml", _records(HOSTILE_ROWS), "crm_x")
    root = ET.fromstring(body)
    back = [dict(_xml_field(child) for child in rec) for rec in root.findall("record")]
    assert back == [_text(row) for row in HOSTILE_ROWS]
    assert root.find("record/field[@name='a b']") is not None


def _flat(row: dict[str, Any], path: list[str] | None = None) -> dict[str, Any]:
    """The cells CSV holds for a record, by the rules sink/formats.py documents, before
    the formula guard."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        at = [*(path or []), key]
        if isinstance(value, dict) and value:
            out.update(_flat(value, at))
        elif isinstance(value, dict):
            out[csv_column(at)] = "{}"
        elif isinstance(value, list):
            out[csv_column(at)] = orjson.dumps(value).decode()
        elif value is None:
            out[csv_column(at)] = ""
        elif isinstance(value, str):
            out[csv_column(at)] = value
        else:
            out[csv_column(at)] = orjson.dumps(value).decode()
    return out


def test_csv_bodies_round_trip_and_open_without_running_formulas() -> None:
    # "=..." was written as a formula; {"a":{"b":1},"a.b":2} lost a column.
    body = render("csv", _records(HOSTILE_ROWS), "crm_x")
    rows = list(csv.reader(io.StringIO(body.decode(), newline="")))
    for cell in (c for row in rows for c in row):
        assert (
            not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
            or cell.lstrip("-").replace(".", "").isdigit()
        )
    header = [_unguard(c) for c in rows[0]]
    back = [{h: _unguard(c) for h, c in zip(header, row, strict=True)} for row in rows[1:]]
    for row, flat in zip(back, (_flat(r) for r in HOSTILE_ROWS), strict=True):
        assert {k: v for k, v in row.items() if k in flat} == flat
        assert all(v == "" for k, v in row.items() if k not in flat)
    assert {"a.b", "a\\.b", "a\\\\\\.b"} <= set(header)


def _unguard(cell: str) -> str:
    return cell[1:] if cell.startswith("'") else cell


def test_ndjson_is_one_record_a_line() -> None:
    pretty = b'{\n  "id": "P",\r\n  "n": [\n1,\n2]\n}\n'
    recs = [*_records(HOSTILE_ROWS), record(pretty, 2)]
    Shaper([]).shape(recs[-1])
    lines = render("ndjson", recs, "crm_x").split(b"\n")
    assert lines[-1] == b"" and len(lines) == 4
    assert [orjson.loads(x) for x in lines[:-1]] == [*HOSTILE_ROWS, orjson.loads(pretty)]


def test_lists_too_deep_for_orjson_are_written_as_orjson_writes_them() -> None:
    from sink.formats import _deep_json, _json_text

    shallow: list[Any] = [
        [1, {"a": [None, True, 1.5, 'x"\\', {}], "b": []}, [], [[2]], "é😀\x00"],
        {"k": {"z": [1, 2], "": None}},
        [],
        {},
    ]
    for value in shallow:
        assert _deep_json(value) == orjson.dumps(value).decode()
    deep: Any = [1]
    for _ in range(1_000):
        deep = [{"k": deep}]
    assert _json_text(deep) == '[{"k":' * 1_000 + "[1]" + "}]" * 1_000
