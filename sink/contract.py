"""What the sink refuses in a record, and why: nesting, Clari's record contract, keys that
repeat.

Every refusal is a ``RecordError``: the pipeline dead-letters the one record with its
``reason`` and the rest flow. Nothing here may raise anything else on a record's content.

**Nesting** (reason ``too-deep``). A record's level is 1, an object or array in it 2, and
so on.

- Where the sink decodes a record into objects and encodes it again (Avro values, JSON
  values with ``CLARI_EXCLUDE_ATTRIBUTES``), it refuses one nested deeper than
  ``MAX_DEPTH`` (254) levels: what orjson, the sink's encoder, writes, so the check costs
  nothing (orjson raises; tests pin the figure). Refusing fewer levels exactly (200, say)
  cost 0.85 us a record, a seventh of shaping one with attributes excluded, for no
  gain: everything after shaping copes with 1024 levels anyway (below).
- A JSON value sent as it is (nothing to drop: the hot path) is only checked to be valid
  JSON, which simdjson and orjson both refuse beyond ``JSON_MAX_DEPTH`` (1024) levels.
  Checking fewer would mean counting brackets over every byte of every value in Python,
  which costs more than simdjson's whole parse (0.5-1 us a kilobyte on top of 0.5). So
  every later step that decodes a record copes with 1024 levels: bodies are built
  without recursion (sink/formats.py), an id nested deeper than ``MAX_DEPTH`` counts as
  no id (sink/decoding.py).
- An Avro value's depth is known from its schema unless the schema is recursive (or
  deeper than ``MAX_DEPTH``); such a schema's values are measured before they are
  decoded (sink/avro.py), since fastavro decodes recursively in C and a few kilobytes
  nested 5,000 levels deep crash the process (SIGSEGV).

**Clari's record contract** (``Shaper(contract=True)``, for the templates): each record
needs ``id``, a non-empty string or an integer (reason ``missing-id`` if absent or null,
``bad-id`` otherwise), and ``createdAt`` and ``updatedAt``, integers counting epoch
milliseconds from 1971-01-01 up to (not including) 2200-01-01 (``missing-timestamp``,
``bad-timestamp``; the detail names the field). The range refuses the usual mistakes:
epoch seconds (below 10^10 until the year 2286) and microseconds (above 7.3 * 10^12 for
any date after March 1970) both fall outside it. Checked before sending, a bad record is
dead-lettered alone instead of failing its whole batch with a 400 that names no record.

**Keys that repeat** (reason ``duplicate-key``). ``{"id":"Y","id":"X"}`` is valid JSON
that parsers read differently: simdjson (the hot path's id) takes the first value, orjson
and Clari the last. ``duplicate_key`` finds such a value exactly, at any depth. Checking
every value on the hot path would cost as much as the parse (per key, a Python object);
the sink reads the contract fields by the same rule (the first) on every path, so a
record is judged the same wherever it is shaped, and ``duplicate_keys`` is what to ask
when the API refuses a batch: it names the records whose id the sink and Clari read
differently, to dead-letter before the ids the error names are matched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import orjson

from sink.records import SinkRecord

MAX_DEPTH: Final = 254  # orjson's encoder: tests/unit/test_hostile_records.py
JSON_MAX_DEPTH: Final = 1024  # simdjson's and orjson's decoders refuse deeper documents

CONTRACT_ID: Final = "id"  # Clari's primary key field, whatever CLARI_ID_FIELD says
TIMESTAMPS: Final = ("createdAt", "updatedAt")
EPOCH_MS_MIN: Final = 31_536_000_000  # 1971-01-01T00:00:00Z
EPOCH_MS_MAX: Final = 7_258_118_400_000  # 2200-01-01T00:00:00Z, not included

MISSING: Final[Any] = object()  # a field the record does not have (None is JSON's null)


class RecordError(Exception):
    """A record that can never be sent; it goes to the dead-letter topic with this reason.

    Defined here, with what the sink refuses, and exported by sink.decoding as before."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def too_deep(limit: int, what: str = "the record") -> RecordError:
    return RecordError("too-deep", f"{what} nests objects or arrays deeper than {limit} levels")


# -- nesting ------------------------------------------------------------------------------
def depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` (decoded: dicts, lists, scalars) nests deeper than ``limit``
    levels, the value itself being level 1 if it is a dict or a list. Without recursion:
    a value may hold 1024 levels."""
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if level > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, level + 1) for c in children if isinstance(c, dict | list))
    return False


# -- Clari's record contract ----------------------------------------------------------------
def contract_ok(rid: Any, created: Any, updated: Any) -> bool:
    """The contract's verdict for a record's ``id``, ``createdAt`` and ``updatedAt``
    (MISSING where absent), as one expression: the hot path calls this for every record.
    ``type(x) is int`` refuses booleans (a bool is an int subclass) and floats."""
    return (
        type(created) is int
        and type(updated) is int
        and EPOCH_MS_MIN <= created < EPOCH_MS_MAX
        and EPOCH_MS_MIN <= updated < EPOCH_MS_MAX
        and ((type(rid) is str and rid != "") or type(rid) is int)
    )


def contract_error(rid: Any, created: Any, updated: Any) -> RecordError | None:
    """Why a record's contract fields (MISSING where absent) break Clari's contract, or
    None; the first problem in field order."""
    if rid is MISSING or rid is None:
        return RecordError("missing-id", f"the record has no '{CONTRACT_ID}' (Clari's record key)")
    if not ((type(rid) is str and rid != "") or type(rid) is int):
        shown = "an empty string" if rid == "" else _kind(rid)
        return RecordError(
            "bad-id",
            f"'{CONTRACT_ID}' is {shown}; Clari needs a non-empty string or an integer",
        )
    for name, value in zip(TIMESTAMPS, (created, updated), strict=True):
        error = timestamp_error(name, value)
        if error is not None:
            return error
    return None


def timestamp_error(name: str, value: Any) -> RecordError | None:
    if value is MISSING or value is None:
        return RecordError(
            "missing-timestamp", f"the record has no '{name}' (epoch milliseconds, an integer)"
        )
    if type(value) is not int:
        return RecordError(
            "bad-timestamp",
            f"'{name}' is {_kind(value)}; Clari needs epoch milliseconds, an integer",
        )
    if EPOCH_MS_MIN <= value < EPOCH_MS_MAX:
        return None
    hint = ""
    if 0 < value < EPOCH_MS_MIN:
        hint = " (epoch seconds?)" if value < 10**10 else ""
    elif value >= EPOCH_MS_MAX:
        hint = " (microseconds or nanoseconds?)" if value >= 10**14 else ""
    return RecordError(
        "bad-timestamp",
        f"'{name}' is {value}{hint}; epoch milliseconds from 1971-01-01 to 2200-01-01 expected",
    )


def check_contract(data: Mapping[str, Any]) -> None:
    """Raise the contract's RecordError for a decoded record (a dict: one value a key)."""
    error = contract_error(
        data.get(CONTRACT_ID, MISSING),
        data.get(TIMESTAMPS[0], MISSING),
        data.get(TIMESTAMPS[1], MISSING),
    )
    if error is not None:
        raise error


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    if isinstance(value, float):
        return f"a number with a fraction or exponent ({value!r})"
    if isinstance(value, dict) or type(value).__name__ == "Object":
        return "an object"
    if isinstance(value, list) or type(value).__name__ == "Array":
        return "an array"
    return type(value).__name__


# -- keys that repeat ---------------------------------------------------------------------
# A JSON value's tokens that matter here: strings (keys among them), and the characters
# that open and close objects and arrays. Numbers, literals, commas and colons are
# skipped by searching for the next of these.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]]', re.DOTALL)
_AFTER_SPACE = re.compile(rb"[ \t\r\n]*")


def duplicate_key(value: bytes) -> str | None:
    """The path (``a.b``; ``[]`` for array elements) of the first key that repeats in one
    object of the JSON ``value``, or None. Keys are compared decoded (``"\\u0069d"`` is
    ``"id"``). ``value`` must be valid JSON (the sink's checks passed it); any depth, no
    recursion. Some microseconds a kilobyte: for refused batches and tests, not every
    record."""
    # Per open container: for an object its key set and the key being read, for an
    # array None.
    stack: list[tuple[set[str], list[str]] | None] = []
    path: list[str] = []
    for match in _TOKEN.finditer(value):
        token = match.group()
        first = token[0]
        if first == 0x22:  # a string: a key if a colon follows
            after = _AFTER_SPACE.match(value, match.end())
            end = after.end() if after else match.end()
            if end < len(value) and value[end] == 0x3A and stack and stack[-1] is not None:
                keys, current = stack[-1]
                try:
                    key = orjson.loads(token)
                except orjson.JSONDecodeError:  # not valid JSON after all: compare it raw
                    key = token.decode("utf-8", "surrogateescape")
                if key in keys:
                    return ".".join([*path, key])
                keys.add(key)
                current[0] = key
        elif first in b"{[":
            if stack:
                top = stack[-1]
                path.append("[]" if top is None else top[1][0])
            stack.append((set(), [""]) if first == 0x7B else None)
        else:  # } or ]
            stack.pop()
            if path:
                path.pop()
    return None


def duplicate_keys(records: Iterable[SinkRecord]) -> list[tuple[SinkRecord, RecordError]]:
    """The records whose body repeats a key in an object, each with its RecordError
    (``duplicate-key``): for a batch the API refused, before the ids its error names are
    matched to records (see the module's docstring)."""
    found: list[tuple[SinkRecord, RecordError]] = []
    for record in records:
        path = duplicate_key(record.body)
        if path is not None:
            detail = (
                f"key '{path}' appears twice in one object; JSON readers disagree on which "
                "value counts (the sink read the first, Clari reads the last)"
            )
            found.append((record, RecordError("duplicate-key", detail)))
    return found
