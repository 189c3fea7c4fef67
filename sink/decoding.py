"""Decode a Kafka message's value and shape it into the record sent to the API."""

from __future__ import annotations

import base64
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson
import simdjson
from confluent_kafka import Message

from sink.records import SinkRecord


class RecordError(Exception):
    """A record that can never be sent; it goes to the dead-letter topic with this reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def json_default(obj: Any) -> Any:
    """orjson's fallback for decoded values JSON has no type for (from Avro)."""
    if isinstance(obj, Decimal):
        return float(obj)
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode("ascii")
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


class Shaper:
    """Decodes values (JSON, or ``decode``'s format) and drops excluded attributes (top
    level or dotted paths)."""

    def __init__(self, exclude: list[str], decode: Callable[[bytes], Any] | None = None) -> None:
        self._top = {path for path in exclude if "." not in path}
        self._nested = [path.split(".") for path in exclude if "." in path]
        self._decode = decode  # None: the value is JSON
        self._parser = simdjson.Parser()

    def shape(self, record: SinkRecord) -> dict[str, Any]:
        """Fill ``record.body`` and return the shaped record; raise RecordError if it
        cannot be sent."""
        if record.value is None:
            raise RecordError("null-value", "the message has no value (a tombstone)")
        if self._decode is not None:
            decoded = self._decode(record.value)  # raises RecordError itself
        else:
            try:
                decoded = orjson.loads(record.value)
            except orjson.JSONDecodeError as exc:
                raise RecordError("invalid-json", str(exc)) from None
        if not isinstance(decoded, dict):
            raise RecordError(
                "not-an-object",
                f"the value decodes to a {type(decoded).__name__}; a record must be an object "
                "(a JSON object, an Avro record)",
            )
        data: dict[str, Any] = decoded
        if self._top or self._nested:
            data = self._exclude(data)
            record.body = orjson.dumps(data, default=json_default)
        elif self._decode is not None:
            record.body = orjson.dumps(data, default=json_default)
        else:
            # Nothing to drop: the producer's bytes are already valid JSON for this record.
            record.body = record.value
        return data

    def probe_messages(
        self, msgs: list[Message], id_field: str | None
    ) -> tuple[list[Message], list[Any], list[tuple[SinkRecord, RecordError]]] | None:
        """For JSON values sent as they are (nothing to drop): check that each message's
        value is a JSON object and read its id (CLARI_ID_FIELD), without building it.
        Returns (messages that pass, their ids, rejected records with why), or None when
        values must be decoded and shaped (Avro, excluded attributes): use shape_many.

        simdjson validates a whole value, its UTF-8 included, for a third of what
        decoding it with orjson and freeing the result costs (bench/README.md). Where it
        refuses a value, shape() decides and names the reason, so the verdicts are
        orjson's: simdjson refuses integers beyond 64 bits that orjson takes, and takes
        a leading byte order mark that orjson (and a JSON array of records) refuses."""
        if self._decode is not None or self._top or self._nested:
            return None
        parse = self._parser.parse
        passed: list[Message] = []
        ids: list[Any] = []
        rejected: list[tuple[SinkRecord, RecordError]] = []
        for msg in msgs:
            value = msg.value()
            try:
                doc = parse(value)  # type: ignore[arg-type]
            except (ValueError, RuntimeError, TypeError):  # None (a tombstone) is a TypeError
                doc = None
            if type(doc) is not simdjson.Object or value[0] == 0xEF:  # type: ignore[index]
                del doc  # the parser is reused: nothing may still point into it
                record = SinkRecord.from_message(msg)
                try:
                    rid = record_id(self.shape(record), id_field)
                except RecordError as exc:
                    rejected.append((record, exc))
                else:
                    passed.append(msg)  # valid after all, and sent as it is
                    ids.append(rid)
                continue
            if id_field:
                try:
                    rid = doc[id_field]  # 30 ns a record less than doc.get()
                except KeyError:
                    rid = None
                if rid is not None and type(rid) not in (str, int):
                    rid = _plain_id(rid)
            else:
                rid = None
            del doc
            passed.append(msg)
            ids.append(rid)
        return passed, ids, rejected

    def shape_many(
        self, records: list[SinkRecord]
    ) -> tuple[list[SinkRecord], list[dict[str, Any]], list[tuple[SinkRecord, RecordError]]]:
        """shape() for a poll's records: (shaped records, their data, rejected records
        with why). JSON values with nothing to drop, by far the common case, are decoded
        in one pass in C; a poll holding a bad one is shaped record by record instead."""
        if self._decode is None and not (self._top or self._nested) and records:
            try:
                # A tombstone's None fails to decode like bad JSON does.
                datas = list(map(orjson.loads, [r.value for r in records]))  # type: ignore[arg-type]
            except (orjson.JSONDecodeError, TypeError):
                pass  # one of them is not JSON (or a tombstone): the loop below says which
            else:
                if set(map(type, datas)) == {dict}:
                    return records, datas, []  # bodies are the values (SinkRecord.body)
        shaped: list[SinkRecord] = []
        data: list[dict[str, Any]] = []
        rejected: list[tuple[SinkRecord, RecordError]] = []
        for record in records:
            try:
                data.append(self.shape(record))
            except RecordError as exc:
                rejected.append((record, exc))
            else:
                shaped.append(record)
        return shaped, data, rejected

    def _exclude(self, data: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in data.items() if k not in self._top}
        for path in self._nested:
            _drop_path(out, path)
        return out


def record_id(data: dict[str, Any], id_field: str | None) -> Any:
    """The record's id (CLARI_ID_FIELD) as a hashable value, or None."""
    rid = data.get(id_field) if id_field else None
    if rid is not None and type(rid) not in (str, int):
        rid = repr(rid)  # ids that are objects or lists still cut a batch when repeated
    return rid


def _plain_id(rid: Any) -> str:
    """record_id() of an id simdjson read: its objects and arrays as Python's."""
    if isinstance(rid, simdjson.Object):
        rid = rid.as_dict()
    elif isinstance(rid, simdjson.Array):
        rid = rid.as_list()
    return repr(rid)


def _drop_path(data: dict[str, Any], path: list[str]) -> None:
    """Remove ``a.b.c`` from ``data`` without touching the caller's nested objects."""
    head, rest = path[0], path[1:]
    child = data.get(head)
    if not rest:
        data.pop(head, None)
    elif isinstance(child, dict):
        data[head] = dict(child)
        _drop_path(data[head], rest)
    elif isinstance(child, list):
        # Arrays of objects (line items, contacts): drop the path from each element.
        copies: list[Any] = []
        for item in child:
            if isinstance(item, dict):
                item = dict(item)
                _drop_path(item, rest)
            copies.append(item)
        data[head] = copies


def lookup(data: dict[str, Any] | None, path: str) -> Any:
    """The value at a dotted path, or None."""
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node
