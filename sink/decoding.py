"""Decode a Kafka message's value and shape it into the record sent to the API."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
import simdjson
from confluent_kafka import Message

from sink.contract import (
    CONTRACT_ID,
    EPOCH_MS_MAX,
    EPOCH_MS_MIN,
    JSON_MAX_DEPTH,
    MAX_DEPTH,
    MISSING,
    TIMESTAMPS,
    RecordError,
    check_contract,
    contract_error,
    contract_ok,
    depth_exceeds,
    too_deep,
)
from sink.mapping import UPSERT_OPS, RecordMapper
from sink.records import SinkRecord

if TYPE_CHECKING:
    from sink.config import Settings

__all__ = ["RecordError", "Shaper", "encode", "json_default", "lookup", "record_id"]


def json_default(obj: Any) -> Any:
    """orjson's fallback for decoded values JSON has no type for (from Avro)."""
    if isinstance(obj, Decimal):
        return float(obj)
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode("ascii")
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def encode(data: Any) -> bytes:
    """``data`` (decoded: from JSON or Avro) as JSON; RecordError ``too-deep`` if it nests
    deeper than MAX_DEPTH levels (orjson's own limit), ``unencodable`` if JSON cannot hold
    a value of it."""
    try:
        return orjson.dumps(data, default=json_default)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        if "ecursion" in str(exc):
            raise too_deep(MAX_DEPTH) from None
        raise RecordError("unencodable", str(exc)) from None


def _invalid_json(exc: orjson.JSONDecodeError) -> RecordError:
    if "depth limit" in str(exc):
        return too_deep(JSON_MAX_DEPTH)
    return RecordError("invalid-json", str(exc))


class Shaper:
    """Decodes values (JSON, or ``decode``'s format) and drops excluded attributes (top
    level or dotted paths). With ``contract``, refuses records that break Clari's record
    contract (sink/contract.py): for the templates, which send Clari's published format.

    Whatever a value holds, it is shaped or refused with a RecordError; sink/contract.py
    says what is refused and why. With ``mapping`` (sink/mapping.py), each decoded record
    is unwrapped, renamed and converted before attributes are dropped; without it, a JSON
    value with nothing to drop is sent as the producer's bytes."""

    def __init__(
        self,
        exclude: list[str],
        decode: Callable[[bytes], Any] | None = None,
        *,
        contract: bool = False,
        mapping: RecordMapper | None = None,
    ) -> None:
        self._mapper = mapping
        self._top = {path for path in exclude if "." not in path}
        self._nested = [path.split(".") for path in exclude if "." in path]
        self._decode = decode  # None: the value is JSON
        self._contract = contract
        self._parser = simdjson.Parser()  # probe_messages' own, used by the event loop only
        self._local = threading.local()  # shape()'s: the replayer shapes in a worker thread

    @classmethod
    def for_settings(
        cls, settings: Settings, decode: Callable[[bytes], Any] | None, *, contract: bool
    ) -> Shaper:
        """The shaper of these settings: exclusions, and the record mapping if any."""
        mapping = settings.mapping
        return cls(
            settings.clari_exclude_attributes,
            decode,
            contract=contract,
            mapping=RecordMapper(mapping) if mapping is not None else None,
        )

    @property
    def maps(self) -> bool:
        """Whether records are mapped (sink/mapping.py) before they are sent."""
        return self._mapper is not None

    def decode_value(self, record: SinkRecord) -> Any:
        """The value as decoded, before any mapping (what ``sample`` shows as "before")."""
        if record.value is None:
            return None
        if self._decode is not None:
            return self._decode(record.value)
        return orjson.loads(record.value)

    def shape(self, record: SinkRecord) -> dict[str, Any]:
        """Fill ``record.body`` and return the shaped record; raise RecordError if it
        cannot be sent."""
        value = record.value
        mapper = self._mapper
        if value is None:
            if mapper is not None and mapper.unwraps:
                raise mapper.tombstone()
            raise RecordError("null-value", "the message has no value (a tombstone)")
        if self._decode is not None:
            decoded = self._decode(value)  # raises RecordError itself
        elif mapper is not None and mapper.unwraps and (slim := self._slim_event(value)):
            decoded = slim
        else:
            try:
                decoded = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise _invalid_json(exc) from None
        if not isinstance(decoded, dict):
            raise RecordError(
                "not-an-object",
                f"the value decodes to a {type(decoded).__name__}; a record must be an object "
                "(a JSON object, an Avro record)",
            )
        data: dict[str, Any] = decoded
        if mapper is not None:
            # The decoder's own objects: mapped and dropped from in place, no copies.
            data = mapper.apply(data)
            for name in self._top:
                data.pop(name, None)
            for path in self._nested:
                _drop_path(data, path)
        elif self._top or self._nested:
            data = self._exclude(data)
        elif self._decode is None:
            # Nothing to drop: the producer's bytes are already valid JSON for this record.
            if self._contract:
                self._check_json_contract(value, data)
            record.body = value
            return data
        record.body = encode(data)
        if self._contract:
            check_contract(data)  # re-encoded: one value a key, as Clari reads it
        return data

    def _slim_event(self, value: bytes) -> dict[str, Any] | None:
        """A JSON change event reduced to its ``op`` and the one row sent, built from
        simdjson's parse without the rest: the converter's schema wrapper is often
        several times the row (a 2.3 kB event of a 0.45 kB payload decoded in half the
        time). None when simdjson does not take the value, or it is no event as
        expected: the full decode then decides, and names what is wrong."""
        if value[:1] == b"\xef":  # a byte order mark: simdjson takes it, orjson refuses
            return None
        try:
            doc = self._json_parser().parse(value)
        except (ValueError, RuntimeError):
            return None
        event: Any = doc
        slim: dict[str, Any] | None = None
        # Keys are looked up only where they should be: a missing one costs pysimdjson
        # an exception inside (12 us, 40 times a found one).
        try:
            if isinstance(event, simdjson.Object) and len(event) == 2:  # schema, payload
                event = event["schema"] and event["payload"]
            if isinstance(event, simdjson.Object):
                op = event["op"]
                side = "after" if op in UPSERT_OPS else "before"
                row = event[side]
                if type(op) is str and isinstance(row, simdjson.Object):
                    slim = {"op": op, side: row.as_dict()}
        except (KeyError, TypeError):
            pass  # not the expected shape: the full decode names what is wrong
        # The parser is reused: nothing may still point into it.
        doc = event = row = None
        return slim

    def _check_json_contract(self, value: bytes, data: dict[str, Any]) -> None:
        """The contract for a JSON value sent as it is, its fields read as probe_messages
        reads them (simdjson: the first of repeated keys), so that a record gets the same
        verdict on every path, the replayer's included."""
        try:
            doc = self._json_parser().parse(value)
        except (ValueError, RuntimeError):
            doc = None
        if not isinstance(doc, simdjson.Object):
            # simdjson refuses what orjson took (integers beyond 64 bits; a leading byte
            # order mark can't get here): probe_messages hands such values to shape().
            del doc
            check_contract(data)
            return
        fields = [doc.get(name, MISSING) for name in (CONTRACT_ID, *TIMESTAMPS)]
        error = contract_error(*fields)
        # The parser is reused: nothing may still point into it, not even through the
        # traceback of the error raised here (an id that is an object is a proxy).
        del doc, fields
        if error is not None:
            raise error

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
        if self._decode is not None or self._top or self._nested or self._mapper is not None:
            return None
        parse = self._parser.parse
        passed: list[Message] = []
        ids: list[Any] = []
        rejected: list[tuple[SinkRecord, RecordError]] = []
        contract = self._contract
        # The contract's id is CLARI_ID_FIELD's when they are the same field (the default).
        contract_id = b"id" if id_field != CONTRACT_ID else None
        for msg in msgs:
            value = msg.value()
            try:
                doc = parse(value)  # type: ignore[arg-type]
            except (ValueError, RuntimeError, TypeError):  # None (a tombstone) is a TypeError
                doc = None
            if type(doc) is not simdjson.Object or value[0] == 0xEF:  # type: ignore[index]
                del doc  # the parser is reused: nothing may still point into it
                self._shape_message(msg, id_field, passed, ids, rejected)
                continue
            if id_field:
                try:
                    rid = doc[id_field]  # 30 ns a record less than doc.get()
                except KeyError:
                    rid = None
            else:
                rid = None
            if contract:
                # Keys as bytes: simdjson skips encoding them (15 ns each); one expression
                # for the common verdict, shape() names what is wrong otherwise.
                try:
                    created = doc[b"createdAt"]  # type: ignore[index]
                    updated = doc[b"updatedAt"]  # type: ignore[index]
                    cid = rid if contract_id is None else doc[contract_id]  # type: ignore[index]
                except KeyError:
                    created = None
                if not (
                    type(created) is int
                    and type(updated) is int
                    and EPOCH_MS_MIN <= created < EPOCH_MS_MAX
                    and EPOCH_MS_MIN <= updated < EPOCH_MS_MAX
                    and ((type(cid) is str and cid != "") or type(cid) is int)
                ):
                    # Drop every proxy into the parser (a field may be an object) before
                    # it parses again, or every later value of the poll would take this
                    # slow path.
                    doc = rid = created = updated = cid = None
                    self._shape_message(msg, id_field, passed, ids, rejected)
                    continue
            if rid is not None and type(rid) is not str:
                rid = str(rid) if type(rid) is int else _plain_id(rid)
            del doc
            passed.append(msg)
            ids.append(rid)
        return passed, ids, rejected

    def _shape_message(
        self,
        msg: Message,
        id_field: str | None,
        passed: list[Message],
        ids: list[Any],
        rejected: list[tuple[SinkRecord, RecordError]],
    ) -> None:
        """probe_messages() for a value it does not pass at once: shape() decides, and
        names the reason."""
        record = SinkRecord.from_message(msg)
        try:
            rid = record_id(self.shape(record), id_field)
        except RecordError as exc:
            rejected.append((record, exc))
        else:
            passed.append(msg)  # valid after all, and sent as it is
            ids.append(rid)

    def shape_many(
        self, records: list[SinkRecord]
    ) -> tuple[list[SinkRecord], list[dict[str, Any]], list[tuple[SinkRecord, RecordError]]]:
        """shape() for a poll's records: (shaped records, their data, rejected records
        with why). JSON values with nothing to drop, by far the common case, are decoded
        in one pass in C; a poll holding a bad one is shaped record by record instead."""
        plain = self._decode is None and self._mapper is None
        if plain and not (self._top or self._nested) and records:
            try:
                # A tombstone's None fails to decode like bad JSON does.
                datas = list(map(orjson.loads, [r.value for r in records]))  # type: ignore[arg-type]
            except (orjson.JSONDecodeError, TypeError):
                pass  # one of them is not JSON (or a tombstone): the loop below says which
            else:
                if set(map(type, datas)) == {dict}:
                    if self._contract:
                        return self._contract_many(records, datas)
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

    def _json_parser(self) -> simdjson.Parser:
        """This thread's parser for shape() (probe_messages has its own)."""
        parser: simdjson.Parser | None = getattr(self._local, "parser", None)
        if parser is None:
            parser = self._local.parser = simdjson.Parser()
        return parser

    def _contract_many(
        self, records: list[SinkRecord], datas: list[dict[str, Any]]
    ) -> tuple[list[SinkRecord], list[dict[str, Any]], list[tuple[SinkRecord, RecordError]]]:
        """shape_many()'s contract check for decoded JSON values sent as they are: the
        fields read as probe_messages reads them (_check_json_contract), the common
        verdict in one expression."""
        parse = self._json_parser().parse
        shaped: list[SinkRecord] = []
        data: list[dict[str, Any]] = []
        rejected: list[tuple[SinkRecord, RecordError]] = []
        for record, decoded in zip(records, datas, strict=True):
            value: bytes = record.value  # type: ignore[assignment]  # decoded: not None
            try:
                doc = parse(value)
                ok = contract_ok(doc[b"id"], doc[b"createdAt"], doc[b"updatedAt"])  # type: ignore[index]
            except (ValueError, RuntimeError, KeyError, TypeError):
                ok = False
            doc = None  # nothing may point into the parser when it parses again
            if not ok:
                try:
                    self._check_json_contract(value, decoded)
                except RecordError as exc:
                    rejected.append((record, exc))
                    continue
            shaped.append(record)
            data.append(decoded)
        return shaped, data, rejected

    def _exclude(self, data: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in data.items() if k not in self._top}
        for path in self._nested:
            _drop_path(out, path)
        return out


def record_id(data: dict[str, Any], id_field: str | None) -> Any:
    """The record's id (CLARI_ID_FIELD) as text, or None. Clari compares ids as text
    (7 and "7" are one record, a duplicate in one call), so the batcher's id sets must
    too: an integer id becomes its text here, once per record."""
    rid = data.get(id_field) if id_field else None
    if rid is not None and type(rid) is not str:
        rid = str(rid) if type(rid) is int else _unusual_id(rid)
    return rid


def _unusual_id(rid: Any) -> str | None:
    """An id that is not a string or an integer, as text: ids that are objects or lists
    still cut a batch when repeated. One nested deeper than MAX_DEPTH counts as no id
    (repr() recurses, and a JSON value sent as it is may nest 1024 levels)."""
    return None if depth_exceeds(rid, MAX_DEPTH) else repr(rid)


def _plain_id(rid: Any) -> str | None:
    """record_id() of an id simdjson read: its objects and arrays as Python's."""
    if isinstance(rid, simdjson.Object):
        rid = rid.as_dict()
    elif isinstance(rid, simdjson.Array):
        rid = rid.as_list()
    return _unusual_id(rid)


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
