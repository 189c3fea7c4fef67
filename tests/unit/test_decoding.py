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
