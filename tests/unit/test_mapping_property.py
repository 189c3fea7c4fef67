"""Generated values through the record mapping (sink/mapping.py): whatever a value holds,
shaping under a mapping raises nothing but a RecordError with a documented reason, and
what passes is Clari's contract's. Values come from the hostile-values suite, bare and
inside Debezium envelopes (rows and ops of any shape, with and without the wrapper)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sink.config import Settings  # noqa: E402
from sink.contract import check_contract  # noqa: E402
from sink.decoding import RecordError, Shaper  # noqa: E402
from sink.records import SinkRecord  # noqa: E402
from tests.crm_fixtures import DEBEZIUM_SETTINGS, SALESFORCE_SETTINGS  # noqa: E402
from tests.property.test_hostile_values import (  # noqa: E402
    FAST,
    REASONS,
    json_values,
    raw_values,
    stamps,
)

MAPPING_REASONS = REASONS | {"unconvertible-timestamp", "bad-envelope", "deleted"}
BASE = {"CLARI_ENTITY_TYPE": "Account", "CLARI_API_TOKEN": "tok-123", "CLARI_PARTNER_KEY": "pk-4"}
SHAPERS = [
    Shaper.for_settings(Settings(**BASE, **values), None, contract=True)
    for values in (
        SALESFORCE_SETTINGS,
        DEBEZIUM_SETTINGS,
        {**DEBEZIUM_SETTINGS, "SINK_DELETES": "send"},
        {**DEBEZIUM_SETTINGS, "SINK_DELETES": "dead-letter"},
        {"CLARI_TIMESTAMP_ATTRIBUTES": "createdAt:seconds,updatedAt:nanos"},
    )
]
times = stamps | st.text(max_size=30) | st.sampled_from(["2024-03-01T12:00:00Z", "17e8", ""])
rows = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=3) | st.integers() | json_values,
        "Id": st.text(max_size=3) | json_values,
        "created_at": times | json_values,
        "updated_at": times,
        "CreatedDate": times,
        "LastModifiedDate": times | json_values,
        "createdAt": times,
        "updatedAt": times,
    },
)


def _dumps(value: Any) -> bytes:
    """JSON as a producer may write it: big integers, escaped surrogates."""
    return json.dumps(value).encode()


@st.composite
def events(draw: st.DrawFn) -> bytes:
    event: dict[str, Any] = {
        "op": draw(st.sampled_from(["c", "r", "u", "d", "t", "m"]) | json_values),
        "before": draw(rows | json_values),
        "after": draw(rows | json_values),
    }
    if draw(st.booleans()):
        event = {"schema": draw(json_values), "payload": event}
    return _dumps(event)


@FAST
@given(st.one_of(raw_values(), events(), rows.map(_dumps)))
def test_mapping_refuses_with_a_reason_or_sends_the_contract(value: bytes | None) -> None:
    for shaper in SHAPERS:
        record = SinkRecord("crm", 0, 0, None, value, None, 0)
        try:
            data = shaper.shape(record)
        except RecordError as exc:
            assert exc.reason in MAPPING_REASONS | {"tombstone", "truncate"}, exc
            continue
        check_contract(orjson.loads(record.body))  # what is sent is Clari's
        assert orjson.loads(record.body) == orjson.loads(orjson.dumps(data))
