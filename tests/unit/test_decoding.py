from __future__ import annotations

import orjson
import pytest

from sink.decoding import RecordError, Shaper, lookup
from sink.records import SinkRecord


def shaped(value: bytes | None, exclude: list[str] | None = None) -> SinkRecord:
    r = SinkRecord("t", 0, 0, None, value, None, 0)
    Shaper(exclude or []).shape(r)
    return r


def test_excludes_top_level_and_nested_paths_without_touching_others() -> None:
    data = {
        "id": "1",
        "ssn": "x",
        "owner": {"name": "A", "email": "a@x", "phone": "1"},
        "lines": [{"sku": "s", "cost": 3}, {"sku": "t", "cost": 4}],
        "keep": None,
    }
    r = shaped(orjson.dumps(data), ["ssn", "owner.email", "lines.cost", "absent.path"])
    assert r.data == {
        "id": "1",
        "owner": {"name": "A", "phone": "1"},
        "lines": [{"sku": "s"}, {"sku": "t"}],
        "keep": None,
    }
    assert orjson.loads(r.body) == r.data


def test_without_exclusions_the_original_bytes_are_sent() -> None:
    raw = '{"id": "é", "n": 1}'.encode()
    assert shaped(raw).body is raw


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "null-value"),
        (b"{not json", "invalid-json"),
        (b"[1,2]", "not-an-object"),
        (b"\xff\xfe", "invalid-json"),
    ],
)
def test_records_that_cannot_be_sent_say_why(value: bytes | None, reason: str) -> None:
    with pytest.raises(RecordError) as info:
        shaped(value)
    assert info.value.reason == reason


def test_lookup() -> None:
    assert lookup({"a": {"b": 1}}, "a.b") == 1
    assert lookup({"a": 1}, "a.b") is None


PROBE_VALUES: list[bytes | None] = [
    '{"id": "A1", "name": "Kraków"}'.encode(),
    b'{"id": 7}',
    b'{"id": 7.5}',
    b'{"id": true}',
    b'{"id": {"org": 1, "n": [1, 2]}}',
    b'{"id": ["a", 1]}',
    b'{"id": null}',
    b'{"name": "no id"}',
    b"{nope",
    None,  # a tombstone
    b"[1, 2]",
    b'"text"',
    b'{"id": "x", "n": "\xc3x\xa9"}',  # a broken UTF-8 sequence
    b'{"id": "x", "n": "\xff"}',
    b'\xef\xbb\xbf{"id": "bom"}',  # a byte order mark: simdjson skips it, JSON does not
    b'{"id": "big", "n": 123456789012345678901234567890}',  # beyond 64 bits: orjson takes it
    b'  {"id": "spaced"}\n',
    b'{"id": "x", "n": "\\ud800"}',  # a lone surrogate
]


def test_probing_a_poll_reaches_the_verdicts_and_ids_of_decoding_it() -> None:
    """probe_messages (simdjson, nothing built) against shape_many (orjson): the same
    records pass, with the same ids (record_id), and the rest are refused for the same
    reasons."""
    from confluent_kafka import Message

    from sink.decoding import record_id

    msgs = [Message(topic="t", partition=0, offset=i, value=v) for i, v in enumerate(PROBE_VALUES)]
    probed = Shaper([]).probe_messages(msgs, "id")
    assert probed is not None
    passed, ids, rejected = probed
    shaped_, datas, refused = Shaper([]).shape_many(list(map(SinkRecord.from_message, msgs)))
    assert [m.offset() for m in passed] == [r.offset for r in shaped_]
    assert [m.value() for m in passed] == [r.body for r in shaped_]  # sent as they are
    assert ids == [record_id(d, "id") for d in datas]
    assert [(r.offset, e.reason) for r, e in rejected] == [(r.offset, e.reason) for r, e in refused]
    assert len(passed) == 10 and {e.reason for _, e in rejected} == {
        "invalid-json",
        "null-value",
        "not-an-object",
    }


def test_values_to_reshape_are_not_probed() -> None:
    assert Shaper(["secret"]).probe_messages([], "id") is None
    assert Shaper([], decode=lambda raw: {}).probe_messages([], "id") is None
