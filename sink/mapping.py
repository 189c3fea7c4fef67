"""Records as CRM systems publish them, made into records Clari takes.

Kafka Connect users fix field names, timestamps and change-event envelopes with single
message transforms (ReplaceField, TimestampConverter, Debezium's ExtractNewRecordState);
this is the sink's equivalent, applied once per record after decoding, in a fixed order:

    unwrap (KAFKA_VALUE_ENVELOPE) -> rename (CLARI_RENAME_ATTRIBUTES)
    -> convert (CLARI_TIMESTAMP_ATTRIBUTES) -> exclude (CLARI_EXCLUDE_ATTRIBUTES, sink/decoding.py)

Every step works in place on the freshly decoded record (the decoder's own objects,
never shared), so mapping allocates nothing but the converted numbers. A record that
cannot be mapped raises a RecordError naming the field and why: that record alone is
dead-lettered. A delete the policy says to skip raises SkipRecord, which resolves the
record without sending it (sink/rejects.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from sink.contract import RecordError

Envelope = Literal["none", "debezium"]
DeletePolicy = Literal["skip", "dead-letter", "send"]

# The formats a timestamp field may come in, each made epoch milliseconds.
TIMESTAMP_FORMATS: Final = ("iso8601", "seconds", "millis", "micros", "nanos")
# Debezium's operations: create, snapshot read, update; delete; truncate; message.
UPSERT_OPS: Final = frozenset({"c", "r", "u"})
SHOWN_VALUE_CHARS: Final = 64  # of a value named in a dead letter's reason

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)
_DIVISORS: Final = {"micros": 1_000, "nanos": 1_000_000}


class SkipRecord(RecordError):
    """A record resolved without being sent (a delete under SINK_DELETES=skip)."""


@dataclass(frozen=True, slots=True)
class MappingSettings:
    """The parsed mapping settings (sink/config.py checks them at start)."""

    envelope: Envelope = "none"
    deletes: DeletePolicy = "skip"
    deleted_attribute: str = "isDeleted"
    renames: tuple[tuple[str, str], ...] = ()
    timestamps: tuple[tuple[str, str], ...] = ()


def parse_pairs(text: str, what: str) -> list[tuple[str, str]]:
    """``a:b,c:d`` as pairs, each side stripped; ValueError naming the bad entry."""
    pairs = []
    for i, entry in enumerate((e.strip() for e in text.split(",")), 1):
        if not entry:
            continue
        left, sep, right = (part.strip() for part in entry.partition(":"))
        if not sep or not left or not right:
            raise ValueError(f"entry {i} ({entry!r}) is not of the form {what}")
        pairs.append((left, right))
    return pairs


def _iso_millis(value: Any) -> int:
    if not isinstance(value, str):
        raise TypeError
    parsed = datetime.fromisoformat(value)  # 3.11: Z, +0000, +02:00, fractions, dates
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # no offset: read as UTC (README)
    seconds = parsed.timestamp()
    if seconds >= 0:
        # Whole seconds from the float (its error, under 0.3 us, cannot carry a second
        # over), milliseconds from the exact field: a third of the cost of subtracting
        # datetimes, and no rounding of .123 to .122999.
        return int(seconds) * 1000 + parsed.microsecond // 1000
    return (parsed - _EPOCH) // _MS  # before 1970: exact, flooring


def _number(value: Any) -> int | float:
    """A number, or the digits of one in text (some exports quote them)."""
    if type(value) is int or type(value) is float:
        return value
    if isinstance(value, str):
        return int(value.strip())
    raise TypeError


def to_millis(value: Any, fmt: str) -> int:
    """``value`` in ``fmt`` as epoch milliseconds; ValueError/TypeError if it is not."""
    if fmt == "iso8601":
        return _iso_millis(value)
    number = _number(value)
    if fmt == "millis":
        return int(number)
    if fmt == "seconds":
        if isinstance(number, float):
            return round(number * 1000)
        return number * 1000
    return int(number // _DIVISORS[fmt])


_EXPECTED = {
    "iso8601": "ISO-8601 text (e.g. 2024-03-01T12:34:56Z, 2024-03-01T12:34:56.000+0000)",
    "seconds": "a number of epoch seconds",
    "millis": "a number of epoch milliseconds",
    "micros": "a number of epoch microseconds",
    "nanos": "a number of epoch nanoseconds",
}


class RecordMapper:
    """Unwraps, renames and converts one decoded record in place (see the module doc)."""

    __slots__ = ("_deleted", "_deletes", "_envelope", "_origin", "_renames", "_timestamps")

    def __init__(self, settings: MappingSettings) -> None:
        self._envelope = settings.envelope
        self._deletes = settings.deletes
        self._deleted = settings.deleted_attribute
        self._renames = settings.renames
        self._timestamps = settings.timestamps
        # For the reason of a dead letter: the field as the producer named it.
        self._origin = {new: old for old, new in settings.renames}

    @property
    def unwraps(self) -> bool:
        return self._envelope != "none"

    def tombstone(self) -> RecordError:
        """What a message without value is under an envelope: Debezium writes one after
        each delete, for log compaction; it holds no record to send."""
        if self._deletes == "dead-letter":
            return RecordError("deleted", "a tombstone (the key's record was deleted)")
        return SkipRecord("tombstone", "a tombstone (the key's record was deleted)")

    def apply(self, data: dict[str, Any]) -> dict[str, Any]:
        """The record Clari is sent, made from ``data`` (changed in place)."""
        if self._envelope != "none":
            data = self._unwrap(data)
        for old, new in self._renames:
            if old in data:
                data[new] = data.pop(old)
        for name, fmt in self._timestamps:
            value = data.get(name)
            if value is None:
                continue  # absent or null: the contract check names a required one
            try:
                data[name] = to_millis(value, fmt)
            except (ValueError, TypeError, OverflowError, KeyError):
                raise self._unconvertible(name, value, fmt) from None
        return data

    def _unconvertible(self, name: str, value: Any, fmt: str) -> RecordError:
        origin = self._origin.get(name)
        field = f"{name} (renamed from {origin})" if origin else name
        shown = _shown(value)
        return RecordError(
            "unconvertible-timestamp", f"field {field}: {shown} is not {_EXPECTED[fmt]}"
        )

    def _unwrap(self, event: dict[str, Any]) -> dict[str, Any]:
        """The row of a Debezium change event: JSON with or without the converter's
        schema wrapper (``{"schema": ..., "payload": {...}}``), or Avro decoded."""
        payload = event.get("payload")
        if "schema" in event and isinstance(payload, dict):
            event = payload
        op = event.get("op")
        if type(op) is not str:  # a list would not even hash
            if op is None:
                raise RecordError(
                    "bad-envelope",
                    "not a Debezium change event (no 'op'); set KAFKA_VALUE_ENVELOPE=none "
                    "for plain records",
                )
            raise RecordError("bad-envelope", f"unknown change-event op {_shown(op)}")
        if op in UPSERT_OPS:
            after = event.get("after")
            if isinstance(after, dict):
                return after
            raise RecordError("bad-envelope", f"op {op!r} without an 'after' object")
        if op == "d":
            if self._deletes == "skip":
                raise SkipRecord("deleted", "a delete event (op 'd')")
            if self._deletes == "dead-letter":
                raise RecordError("deleted", "a delete event (op 'd'), SINK_DELETES=dead-letter")
            before = event.get("before")
            if not isinstance(before, dict):
                raise RecordError(
                    "bad-envelope",
                    "a delete event without a 'before' object (Postgres needs "
                    "REPLICA IDENTITY FULL for Debezium to send the deleted row)",
                )
            before[self._deleted] = True
            return before
        if op == "t":  # a table truncated: nothing Clari can apply per record
            if self._deletes == "dead-letter":
                raise RecordError("deleted", "a truncate event (op 't')")
            raise SkipRecord("truncate", "a truncate event (op 't')")
        raise RecordError("bad-envelope", f"unknown change-event op {_shown(op)}")


def _shown(value: Any) -> str:
    """A value named in a dead letter's reason: scalars as they are (cut short), objects
    and arrays by kind only (one may nest 1,024 levels, beyond what repr() takes)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    shown = repr(value)
    return shown if len(shown) <= SHOWN_VALUE_CHARS else shown[:SHOWN_VALUE_CHARS] + "..."


__all__ = [
    "TIMESTAMP_FORMATS",
    "MappingSettings",
    "RecordMapper",
    "SkipRecord",
    "parse_pairs",
    "to_millis",
]
