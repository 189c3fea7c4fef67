"""Records as CRM systems publish them (sink/mapping.py): what Clari is sent, what is
dead-lettered and why, and the settings refused at start."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from sink.config import Settings, describe_errors
from sink.decoding import RecordError, Shaper
from sink.mapping import RecordMapper, SkipRecord, to_millis
from sink.records import SinkRecord
from sink.sampling import SKIPPED, mapped_examples, sample_requests
from tests.crm_fixtures import (
    DEBEZIUM_SETTINGS,
    SALESFORCE_SETTINGS,
    T0_MS,
    debezium_event,
    pg_row,
    salesforce_account,
    salesforce_expected,
)

BASE = {"CLARI_ENTITY_TYPE": "Account", "CLARI_API_TOKEN": "tok-123", "CLARI_PARTNER_KEY": "pk-4"}


def shaper(**values: str) -> Shaper:
    return Shaper.for_settings(Settings(**{**BASE, **values}), None, contract=True)


def record(value: Any, offset: int = 0) -> SinkRecord:
    raw = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
    return SinkRecord("crm.accounts", 0, offset, b"k", raw, None, 0)


def sent(s: Shaper, value: Any) -> dict[str, Any]:
    r = record(value)
    s.shape(r)
    body: dict[str, Any] = orjson.loads(r.body)
    return body


def refused(s: Shaper, value: Any) -> RecordError:
    with pytest.raises(RecordError) as info:
        s.shape(record(value))
    return info.value


def test_salesforce_accounts_are_renamed_converted_and_trimmed() -> None:
    s = shaper(**SALESFORCE_SETTINGS)
    for i in (0, 1, 59):
        assert sent(s, salesforce_account(i)) == salesforce_expected(i)


@pytest.mark.parametrize(
    ("value", "fmt", "millis"),
    [
        ("2024-03-01T12:00:00Z", "iso8601", T0_MS),
        ("2024-03-01T12:00:00.000+0000", "iso8601", T0_MS),  # Salesforce
        ("2024-03-01T14:00:00.5+02:00", "iso8601", T0_MS + 500),
        ("2024-03-01T12:00:00.123456", "iso8601", T0_MS + 123),  # no offset: UTC
        ("2024-03-01", "iso8601", T0_MS - 12 * 3_600_000),
        (T0_MS // 1000, "seconds", T0_MS),
        (T0_MS / 1000 + 0.001, "seconds", T0_MS + 1),
        (str(T0_MS // 1000), "seconds", T0_MS),  # digits in text
        (T0_MS, "millis", T0_MS),
        (T0_MS * 1000 + 999, "micros", T0_MS),
        (T0_MS * 1_000_000 + 1, "nanos", T0_MS),
    ],
)
def test_timestamp_formats_become_epoch_milliseconds(value: Any, fmt: str, millis: int) -> None:
    assert to_millis(value, fmt) == millis


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("yesterday", "'yesterday' is not ISO-8601 text"),
        (1_709_294_400, "1709294400 is not ISO-8601 text"),
        (True, "True is not ISO-8601 text"),
        ({"$date": 1}, "an object is not ISO-8601 text"),
        ([[[]]], "an array is not ISO-8601 text"),
        ("x" * 100, f"'{'x' * 63}... is not ISO-8601 text"),
    ],
)
def test_an_unconvertible_value_dead_letters_that_record_naming_field_and_reason(
    value: Any, why: str
) -> None:
    s = shaper(**SALESFORCE_SETTINGS)
    bad = {**salesforce_account(1), "CreatedDate": value}
    error = refused(s, bad)
    assert error.reason == "unconvertible-timestamp"
    assert error.detail.startswith(f"field createdAt (renamed from CreatedDate): {why}")
    # The others of the stream are unaffected.
    assert sent(s, salesforce_account(2)) == salesforce_expected(2)


def test_a_missing_timestamp_is_the_contract_s_to_name() -> None:
    s = shaper(**SALESFORCE_SETTINGS)
    error = refused(s, {k: v for k, v in salesforce_account(1).items() if k != "CreatedDate"})
    assert error.reason == "missing-timestamp"
    assert "createdAt" in error.detail


@pytest.mark.parametrize("wrapped", [True, False])
def test_debezium_creates_updates_and_snapshot_reads_send_the_row_after(wrapped: bool) -> None:
    s = shaper(**DEBEZIUM_SETTINGS)
    row = pg_row(3, "Acme")
    for op, before in (("c", None), ("r", None), ("u", pg_row(3, "Acme old"))):
        assert sent(s, debezium_event(op, before, row, wrapped)) == {
            "id": 1003,
            "name": "Acme",
            "tier": "gold",
            "createdAt": T0_MS + 3000,
            "updatedAt": T0_MS + 3000,
        }


def test_debezium_deletes_follow_sink_deletes() -> None:
    gone = debezium_event("d", pg_row(4, "Gone Inc"), None)
    skipped = refused(shaper(**DEBEZIUM_SETTINGS), gone)
    assert isinstance(skipped, SkipRecord) and skipped.reason == "deleted"
    lettered = refused(shaper(**DEBEZIUM_SETTINGS, SINK_DELETES="dead-letter"), gone)
    assert not isinstance(lettered, SkipRecord) and lettered.reason == "deleted"
    # send: the last row Debezium knew, flagged, as Clari takes any partner field.
    body = sent(shaper(**DEBEZIUM_SETTINGS, SINK_DELETES="send"), gone)
    assert body == {
        "id": 1004,
        "name": "Gone Inc",
        "tier": "silver",
        "createdAt": T0_MS + 4000,
        "updatedAt": T0_MS + 4000,
        "isDeleted": True,
    }
    keys_only = debezium_event("d", {"id": 1004}, None)  # no REPLICA IDENTITY FULL
    s = shaper(**DEBEZIUM_SETTINGS, SINK_DELETES="send", CLARI_DELETED_ATTRIBUTE="deleted")
    assert refused(s, keys_only).reason == "missing-timestamp"


def test_tombstones_follow_sink_deletes_under_an_envelope() -> None:
    skipped = refused(shaper(**DEBEZIUM_SETTINGS), None)
    assert isinstance(skipped, SkipRecord) and skipped.reason == "tombstone"
    lettered = refused(shaper(**DEBEZIUM_SETTINGS, SINK_DELETES="dead-letter"), None)
    assert not isinstance(lettered, SkipRecord) and lettered.reason == "deleted"
    # send: nothing to send (the delete event before it carried the row): skipped.
    assert isinstance(refused(shaper(**DEBEZIUM_SETTINGS, SINK_DELETES="send"), None), SkipRecord)
    # Without an envelope, SINK_NULL_VALUES decides, as before.
    assert refused(shaper(**SALESFORCE_SETTINGS), None).reason == "null-value"


@pytest.mark.parametrize(
    ("value", "reason", "detail"),
    [
        ({"id": "1", "createdAt": 1}, "bad-envelope", "not a Debezium change event (no 'op')"),
        (debezium_event("u", None, None), "bad-envelope", "op 'u' without an 'after' object"),
        (debezium_event("x", None, None), "bad-envelope", "unknown change-event op 'x'"),
    ],
)
def test_what_is_not_a_change_event_is_dead_lettered(value: Any, reason: str, detail: str) -> None:
    error = refused(shaper(**DEBEZIUM_SETTINGS), value)
    assert (error.reason, error.detail.split(";")[0]) == (reason, detail)


def test_truncates_are_skipped() -> None:
    error = refused(shaper(**DEBEZIUM_SETTINGS), debezium_event("t", None, None))
    assert isinstance(error, SkipRecord) and error.reason == "truncate"


def test_without_mapping_the_hot_path_keeps_the_raw_bytes() -> None:
    s = shaper()
    assert not s.maps
    raw = orjson.dumps({"id": "1", "createdAt": T0_MS, "updatedAt": T0_MS})
    r = record(raw)
    s.shape(r)
    assert r.body is raw
    assert shaper(**SALESFORCE_SETTINGS).maps


def test_every_mapping_problem_is_reported_at_once() -> None:
    with pytest.raises(ValueError) as info:
        Settings(
            **BASE,
            KAFKA_TOPICS="crm.accounts,crm.contacts",
            KAFKA_VALUE_ENVELOPE="maxwell",
            SINK_DELETES="purge",
            CLARI_RENAME_ATTRIBUTES="Id:id,Name,Owner.Id:owner",
            CLARI_TIMESTAMP_ATTRIBUTES="createdAt:iso,updatedAt:millis",
            CLARI_TOPIC_ENTITIES="crm.accounts:Account,crm.leads:Lead",
        )
    lines = describe_errors(info.value)
    text = "\n".join(lines)
    assert len(lines) == 5, text
    assert "KAFKA_VALUE_ENVELOPE='maxwell': Input should be 'none' or 'debezium'" in text
    assert "SINK_DELETES='purge': Input should be 'skip', 'dead-letter' or 'send'" in text
    assert "CLARI_RENAME_ATTRIBUTES" in text and "entry 2 ('Name') is not of the form" in text
    assert (
        "'iso' (for createdAt) is not a timestamp format; allowed values: iso8601, seconds, "
        "millis, micros, nanos" in text
    )
    assert "'Lead' (for crm.leads) is not an entity type; allowed values: Account, " in text


def test_topic_entities_are_checked_against_the_topics_read() -> None:
    topics = "crm.accounts,crm.contacts"
    no_type = {k: v for k, v in BASE.items() if k != "CLARI_ENTITY_TYPE"}
    with pytest.raises(ValueError) as info:
        Settings(
            **no_type,
            KAFKA_TOPICS=topics,
            CLARI_SOURCE_ENTITY="crm_thing",
            CLARI_TOPIC_ENTITIES="crm.accounts:Account,crm.deals:Opportunity",
        )
    text = "\n".join(describe_errors(info.value))
    assert "CLARI_TOPIC_ENTITIES: maps crm.deals, not in KAFKA_TOPICS" in text
    assert "CLARI_TOPIC_ENTITIES: no entity type for crm.contacts" in text
    assert "CLARI_SOURCE_ENTITY: one sourceEntity for every entity type" in text
    assert "CLARI_ENTITY_TYPE" not in text.replace("set CLARI_ENTITY_TYPE", "")
    ok = Settings(
        **no_type,
        KAFKA_TOPICS=topics,
        CLARI_TOPIC_ENTITIES="crm.accounts:account, crm.contacts:Contact:sf_contact",
    )
    assert ok.topic_entities == {
        "crm.accounts": ("Account", None),
        "crm.contacts": ("Contact", "sf_contact"),
    }


def test_fields_are_named_as_renamed_after_renaming() -> None:
    lines = describe_errors(
        _error(
            CLARI_RENAME_ATTRIBUTES="Id:id,CreatedDate:createdAt,a:b,b:c",
            CLARI_TIMESTAMP_ATTRIBUTES="CreatedDate:iso8601,updatedAt:iso8601",
            CLARI_EXCLUDE_ATTRIBUTES="Id,attributes,Id.x",
        )
    )
    assert lines == [
        "CLARI_RENAME_ATTRIBUTES='Id:id,CreatedDate:createdAt,a:b,b:c': 'b' is renamed and a "
        "rename's target",
    ]
    lines = describe_errors(
        _error(
            CLARI_RENAME_ATTRIBUTES="Id:id,CreatedDate:createdAt",
            CLARI_TIMESTAMP_ATTRIBUTES="CreatedDate:iso8601,updatedAt:iso8601",
            CLARI_EXCLUDE_ATTRIBUTES="Id,attributes,Id.x",
        )
    )
    assert lines == [
        "CLARI_TIMESTAMP_ATTRIBUTES: names CreatedDate (now createdAt) by the name "
        "CLARI_RENAME_ATTRIBUTES renames: fields are named as renamed here "
        "(unwrap -> rename -> convert -> exclude)",
        "CLARI_EXCLUDE_ATTRIBUTES: names Id (now id) by the name CLARI_RENAME_ATTRIBUTES "
        "renames: fields are named as renamed here (unwrap -> rename -> convert -> exclude)",
    ]


def test_the_deleted_flag_is_a_top_level_field() -> None:
    for bad in (" ", "meta.deleted"):
        (line,) = describe_errors(_error(CLARI_DELETED_ATTRIBUTE=bad))
        assert line.endswith("allowed values: a top-level field name, e.g. isDeleted")


def test_an_envelope_replaces_the_null_value_policy() -> None:
    lines = describe_errors(_error(KAFKA_VALUE_ENVELOPE="debezium", SINK_NULL_VALUES="fail"))
    assert lines == [
        "SINK_NULL_VALUES: with KAFKA_VALUE_ENVELOPE=debezium tombstones follow SINK_DELETES "
        "(allowed values: skip, dead-letter, send); unset SINK_NULL_VALUES"
    ]


def _error(**values: str) -> Exception:
    with pytest.raises(ValueError) as info:
        Settings(**{**BASE, **values})
    return info.value


def test_iso8601_conversion_is_exact_to_the_millisecond() -> None:
    # The fast path reads whole seconds from a float: it must floor like exact arithmetic.
    rng = random.Random(14)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for _ in range(20_000):
        at = epoch + timedelta(microseconds=rng.randrange(-(10**15), 7 * 10**15))
        assert to_millis(at.isoformat(), "iso8601") == (at - epoch) // timedelta(milliseconds=1)


def test_sample_shows_records_before_and_after_mapping_and_why_one_is_not_sent() -> None:
    s = shaper(**SALESFORCE_SETTINGS)
    records = [record(salesforce_account(1)), record({**salesforce_account(2), "CreatedDate": 7})]
    first, second = mapped_examples(records, s)
    assert first == {
        "record": "crm.accounts[0]@0",
        "before": salesforce_account(1),
        "after": salesforce_expected(1),
    }
    assert second["after"].startswith("(not sent: unconvertible-timestamp: field createdAt")
    assert records[0].body == b""  # shaped as copies: the records themselves untouched


def test_sample_tells_a_skipped_delete_from_a_dead_letter() -> None:
    s = Settings(**BASE, **DEBEZIUM_SETTINGS)
    events = [debezium_event("d", pg_row(1, "Gone"), None), debezium_event("x", None, None)]
    requests, rejected = sample_requests(
        s,
        [record(e, i) for i, e in enumerate(events)],
        Shaper.for_settings(s, None, contract=False),
    )
    assert requests == []
    assert [why.split(":")[0] for _, why in rejected] == [f"{SKIPPED}deleted", "bad-envelope"]


@pytest.mark.parametrize("deletes", ["skip", "dead-letter", "send"])
def test_change_events_read_slim_give_what_the_full_decode_gives(deletes: str) -> None:
    s = shaper(**DEBEZIUM_SETTINGS, SINK_DELETES=deletes)
    full = RecordMapper(Settings(**BASE, **DEBEZIUM_SETTINGS, SINK_DELETES=deletes).mapping)  # type: ignore[arg-type]
    events: list[Any] = [
        debezium_event(op, pg_row(1, "Before"), pg_row(1, "After"), wrapped)
        for op in ("c", "r", "u", "d", "t", "x")
        for wrapped in (True, False)
    ]
    events += [
        debezium_event("u", None, None),
        {"schema": {}, "payload": "not an object"},
        {"payload": {"op": "c", "after": pg_row(2, "no schema key: not a wrapper")}},
        [1, 2],
    ]
    for event in events:
        raw = orjson.dumps(event)
        try:
            want: Any = full.apply(orjson.loads(raw)) if isinstance(event, dict) else None
        except RecordError as exc:
            want = (type(exc), exc.reason)
        try:
            got: Any = s.shape(record(raw))
        except RecordError as exc:
            got = (type(exc), exc.reason)
        if want is None:
            assert got == (RecordError, "not-an-object")
        else:
            assert got == want, event
    # The slim read is taken for the events that carry a row (the point of it).
    for op in ("c", "u", "d"):
        assert s._slim_event(orjson.dumps(debezium_event(op, pg_row(1, "B"), pg_row(1, "A"))))


def test_values_nested_as_deep_as_json_goes_are_dead_lettered_not_crashing() -> None:
    deep = b"[" * 1020 + b"]" * 1020
    account = salesforce_account(1)
    value = orjson.dumps(account).replace(orjson.dumps(account["CreatedDate"]), deep)
    assert refused(shaper(**SALESFORCE_SETTINGS), value).reason == "unconvertible-timestamp"
    event = orjson.dumps(debezium_event("c", None, {"id": 1})).replace(b'"op":"c"', b'"op":' + deep)
    assert refused(shaper(**DEBEZIUM_SETTINGS), event).detail == "unknown change-event op an array"
    row = orjson.dumps(debezium_event("c", None, {"deep": 1})).replace(
        b'{"deep":1}', b'{"d":' + deep + b"}"
    )
    assert refused(shaper(**DEBEZIUM_SETTINGS), row).reason == "too-deep"
