"""Avro values in the Confluent wire format, with writer schemas from a Schema Registry.

A value is one magic byte (0), the writer schema's id (4 bytes, big-endian) and the
Avro binary encoding. Schemas are fetched once per id, asynchronously and before the
records that need them are handled, so the per-record path never waits on the network.

Values become the JSON Clari is sent: timestamps, dates and times keep their encoded
number (Clari's ``createdAt``/``updatedAt`` are epoch milliseconds, exactly what
``timestamp-millis`` carries), decimals become JSON numbers, bytes and fixed become
base64 text.

fastavro decodes recursively in C, and builds whatever a value claims: a few kilobytes of
a recursive schema nested 5,000 levels deep crash the process (SIGSEGV), and an array of
items that take no bytes (``null``, an empty record, a zero-size ``fixed``) claims
billions of them in six bytes. Values of schemas that allow either are measured first,
without building anything (``measure``), and refused as ``too-deep`` (deeper than
sink.contract.MAX_DEPTH) or ``record-too-large``; other schemas' values cannot be either,
and cost nothing more.
"""

from __future__ import annotations

import io
import logging
from base64 import b64encode
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
import orjson
from fastavro import parse_schema, schemaless_reader

from sink.config import Settings
from sink.contract import MAX_DEPTH, too_deep
from sink.decoding import RecordError

log = logging.getLogger(__name__)

MAGIC = 0
HEADER = 5
# Logical types read as their underlying int/long: no datetime objects to re-encode.
KEEP_ENCODED = frozenset(
    {
        "timestamp-millis",
        "timestamp-micros",
        "timestamp-nanos",
        "local-timestamp-millis",
        "local-timestamp-micros",
        "local-timestamp-nanos",
        "date",
        "time-millis",
        "time-micros",
    }
)


# Items that take no bytes an array may claim in all: each is at least ``null,`` (5 bytes)
# in the JSON sent, so this is already 500 kB, past what a record of a batch should be.
MAX_EMPTY_ITEMS = 100_000
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


MAX_RETRY_S = 5.0  # the longest wait between two reads of an unavailable registry


class RegistryUnavailable(Exception):
    """The registry did not answer (or refused the credential): retried, never a dead letter."""


def schema_id(value: bytes | None) -> int | None:
    """The writer schema id of a wire-format value, or None if it is not one."""
    if value is None or len(value) < HEADER or value[0] != MAGIC:
        return None
    return int.from_bytes(value[1:HEADER], "big")


def _keep_encoded(schema: Any) -> Any:
    """The schema with time-like logical types removed (see the module's docstring)."""
    if isinstance(schema, list):
        return [_keep_encoded(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _keep_encoded(v) for k, v in schema.items()}
    if out.get("logicalType") in KEEP_ENCODED:
        del out["logicalType"]
    return out


class SchemaRegistry:
    """Writer schemas by id from a Confluent-compatible registry (``GET /schemas/ids/N``),
    with the schemas they reference."""

    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        # The header by hand: aiohttp deprecates BasicAuth, its replacement is 3.14+ only.
        self._headers = (
            {
                "Authorization": "Basic "
                + b64encode(f"{username}:{password or ''}".encode()).decode()
            }
            if username
            else {}
        )
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.schemas: dict[int, Any] = {}  # id -> parsed schema, or RecordError if unknown
        self._named: dict[int, dict[str, Any]] = {}  # id -> its named types, references too
        # id -> (the schema it was made for, whether its values are measured first)
        self._plans: dict[int, tuple[Any, bool]] = {}

    def missing(self, values: Iterable[bytes | None]) -> set[int]:
        ids = {schema_id(v) for v in values}
        return {i for i in ids if i is not None and i not in self.schemas}

    async def fetch(self, ids: set[int]) -> None:
        """Fetch ``ids`` into the cache. Raises RegistryUnavailable for anything but an
        answer (a schema, or "not found", which makes its records dead letters)."""
        if not ids:
            return
        async with aiohttp.ClientSession(timeout=self._timeout, headers=self._headers) as session:
            for sid in sorted(ids):
                self.schemas[sid] = await self._schema(session, sid)
                log.info("schema %d read from the registry", sid)

    async def _schema(self, session: aiohttp.ClientSession, sid: int) -> Any:
        body = await self._get(session, f"/schemas/ids/{sid}")
        if body is None:
            return RecordError("unknown-schema", f"schema id {sid} is not in the registry")
        if body.get("schemaType", "AVRO") != "AVRO":
            return RecordError(
                "not-avro", f"schema id {sid} is {body['schemaType']}, KAFKA_VALUE_FORMAT=avro"
            )
        named: dict[str, Any] = {}
        try:
            missing = await self._references(session, body, named)
            if missing is not None:
                return RecordError(
                    "unknown-schema", f"schema id {sid} references {missing}, not found"
                )
            parsed = parse_schema(_keep_encoded(orjson.loads(body["schema"])), named_schemas=named)
        except RegistryUnavailable:
            raise
        except Exception as exc:  # whatever the schema text does to a parser
            # Not JSON, not Avro, or nested past the parsers' recursion: its records are
            # dead-lettered; the registry answered, so retrying cannot help.
            return RecordError("invalid-schema", f"schema id {sid}: {type(exc).__name__}: {exc}")
        self._named[sid] = named
        return parsed

    async def _references(
        self, session: aiohttp.ClientSession, body: dict[str, Any], named: dict[str, Any]
    ) -> str | None:
        """Parse the schemas ``body`` references (and theirs) into ``named``; the name of
        one the registry does not have, or None."""
        for ref in body.get("references") or []:
            ref_body = await self._get(
                session, f"/subjects/{ref['subject']}/versions/{ref['version']}"
            )
            if ref_body is None:
                return str(ref.get("name"))
            if (missing := await self._references(session, ref_body, named)) is not None:
                return missing
            parse_schema(_keep_encoded(orjson.loads(ref_body["schema"])), named_schemas=named)
        return None

    async def _get(self, session: aiohttp.ClientSession, path: str) -> Any:
        try:
            async with session.get(self.url + path) as resp:
                if resp.status == 404:
                    await self._believe_not_found(session, path)
                    return None
                if resp.status != 200:
                    text = (await resp.text())[:200]
                    raise RegistryUnavailable(f"HTTP {resp.status} for {path}: {text}")
                return await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RegistryUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def _believe_not_found(self, session: aiohttp.ClientSession, path: str) -> None:
        """Raise RegistryUnavailable if a "not found" for ``path`` may only mean that the
        registry has not read its schemas yet.

        Karapace serves requests while it is still reading its schemas topic after a start:
        a schema written before then is "not found" for a few seconds, and believing that
        would dead-letter good records. Its ``/_health`` says whether it has caught up
        (``schema_registry_ready``; a 5xx in its first moments). A registry without that
        page, or whose page says nothing of it, is believed."""
        try:
            async with session.get(self.url + "/_health") as resp:
                if resp.status >= 500:  # Karapace's answer in its first moments: 500
                    raise RegistryUnavailable(
                        f"{path}: not found, and /_health answers {resp.status}"
                    )
                if resp.status != 200:
                    return
                health = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RegistryUnavailable(f"{path}: not found, then {type(exc).__name__}") from None
        except ValueError:
            return  # a /_health page that is not JSON says nothing about readiness
        status = health.get("status") if isinstance(health, dict) else None
        if isinstance(status, dict) and status.get("schema_registry_ready") is False:
            raise RegistryUnavailable(
                f"{path}: not found while the registry is still reading its schemas "
                "(/_health: schema_registry_ready false)"
            )

    async def fetch_until_done(
        self, ids: set[int], wait: Callable[[float], Any], on_error: Callable[[str], None]
    ) -> bool:
        """Fetch ``ids``, retrying with backoff while the registry is unavailable: each
        failure goes to ``on_error``, then ``await wait(seconds)``, which returns True to
        give up (the sink is stopping). True once fetched."""
        # Capped low: a read is one small GET, and the records wait on it. At 30 s, the
        # sink resumed 14 s after a registry restart of 18 s, at 5 s within 3 s of its
        # return (measured with test_registry_restart.py on a loaded 2-core machine).
        delay = 0.5
        while True:
            try:
                await self.fetch(ids)
                return True
            except RegistryUnavailable as exc:
                on_error(str(exc))
                if await wait(delay):
                    return False
                delay = min(delay * 2, MAX_RETRY_S)

    def decode(self, value: bytes) -> Any:
        """The decoded value (its schema must have been fetched); RecordError if it is not
        a wire-format Avro value this registry knows."""
        sid = schema_id(value)
        if sid is None:
            raise RecordError(
                "not-avro", "the value does not start with the Avro wire format's magic byte"
            )
        schema = self.schemas[sid]
        if isinstance(schema, RecordError):
            raise schema
        named = self._named.get(sid) or _named_in(schema)
        plan = self._plans.get(sid)
        if plan is None or plan[0] is not schema:
            plan = self._plans[sid] = (schema, needs_measuring(schema, named))
        if plan[1]:
            measure(schema, named, value, HEADER, sid)
        try:
            return schemaless_reader(io.BytesIO(value[HEADER:]), schema, None)
        except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError...
            raise RecordError(
                "invalid-avro", f"schema id {sid}: {type(exc).__name__}: {exc}"
            ) from None


# -- what a schema's values can hold ---------------------------------------------------------
def _named_in(schema: Any) -> dict[str, Any]:
    """The named types fastavro keeps in a parsed record schema."""
    named = schema.get("__named_schemas") if isinstance(schema, dict) else None
    return named if isinstance(named, dict) else {}


def _resolve(t: Any, named: dict[str, Any]) -> Any:
    """A type with names and ``{"type": <type>}`` wrappers looked through; a name not
    known stays a string (fastavro decides about it)."""
    while True:
        if isinstance(t, str) and t not in _PRIMITIVES and t in named:
            t = named[t]
        elif isinstance(t, dict) and not isinstance(t.get("type"), str):
            t = t.get("type")
        else:
            return t


def _kind(t: Any) -> str:
    """``record``, ``array``..., a primitive's name, or ``union``."""
    if isinstance(t, list):
        return "union"
    if isinstance(t, dict):
        kind = t.get("type")
        return "record" if kind == "error" else str(kind)
    return str(t)


def needs_measuring(schema: Any, named: dict[str, Any]) -> bool:
    """Whether the schema's values may nest deeper than MAX_DEPTH (it is recursive, or
    just deep) or hold an array of items that take no bytes: then each value is measured
    before fastavro decodes it."""
    depth = _static_depth(schema, named, frozenset())
    return depth is None or depth > MAX_DEPTH or _has_empty_items(schema, named, set())


def _static_depth(t: Any, named: dict[str, Any], seen: frozenset[str]) -> int | None:
    """The deepest nesting the type's decoded values can reach (records, maps and arrays
    are a level each), or None if it has no bound (the type is recursive)."""
    t = _resolve(t, named)
    kind = _kind(t)
    if kind in ("union", "record"):
        if kind == "union":
            inner = [_static_depth(b, named, seen) for b in t]
        else:
            name = str(t.get("name", ""))
            if name and name in seen:
                return None
            inner = [_static_depth(f.get("type"), named, seen | {name}) for f in t["fields"]]
        deepest = 0
        for depth in inner:
            if depth is None:
                return None
            deepest = max(deepest, depth)
        return deepest if kind == "union" else deepest + 1
    if kind in ("array", "map"):
        depth = _static_depth(t.get("items" if kind == "array" else "values"), named, seen)
        return None if depth is None else depth + 1
    if isinstance(t, str) and t not in _PRIMITIVES:
        return None  # a name not known: assume the worst
    return 0


def _takes_no_bytes(t: Any, named: dict[str, Any], seen: set[str]) -> bool:
    t = _resolve(t, named)
    kind = _kind(t)
    if kind == "null":
        return True
    if kind == "fixed":
        return int(t.get("size", 1)) == 0
    if kind == "record":
        name = str(t.get("name", ""))
        if name in seen:
            return False  # a record holding itself takes bytes (a union, an array) or none
        seen = seen | {name}
        return all(_takes_no_bytes(f.get("type"), named, seen) for f in t.get("fields", []))
    return False


def _has_empty_items(t: Any, named: dict[str, Any], seen: set[str]) -> bool:
    """Whether an array in the type has items that take no bytes."""
    t = _resolve(t, named)
    kind = _kind(t)
    if kind == "union":
        return any(_has_empty_items(b, named, seen) for b in t)
    if kind == "record":
        name = str(t.get("name", ""))
        if name in seen:
            return False
        seen.add(name)
        return any(_has_empty_items(f.get("type"), named, seen) for f in t.get("fields", []))
    if kind == "array":
        items = t.get("items")
        return _takes_no_bytes(items, named, set()) or _has_empty_items(items, named, seen)
    if kind == "map":
        return _has_empty_items(t.get("values"), named, seen)
    return False


_FIXED_WIDTH = {"null": 0, "boolean": 1, "float": 4, "double": 8}


def measure(schema: Any, named: dict[str, Any], value: bytes, pos: int, sid: int) -> None:
    """Walk an Avro binary ``value`` from ``pos`` as ``schema`` without building it, and
    raise RecordError if decoding it would nest deeper than MAX_DEPTH levels or make more
    than MAX_EMPTY_ITEMS items that take no bytes. Without recursion: the value decides
    how deep it goes."""
    # Work to do, last first: (0, type, level) reads a value of ``type`` inside a
    # container at ``level``; (1, items, level) an array's next block, (2, values, level) a
    # map's; (3, type, level, n) the n items left of a block, (4, type, level, n) the n
    # entries left of a map block.
    todo: list[tuple[Any, ...]] = [(0, schema, 0)]
    empty_items = 0
    end = len(value)
    try:
        while todo:
            task = todo.pop()
            step, t, level = task[0], task[1], task[2]
            if step == 3 or step == 4:
                if task[3] > 1:
                    todo.append((step, t, level, task[3] - 1))
                todo.append((0, t, level))
                if step == 4:
                    todo.append((0, "string", level))  # the entry's key, read first
                continue
            if step == 1 or step == 2:
                count, pos = _read_long(value, pos)
                if count == 0:
                    continue
                if count < 0:  # a block that gives its size in bytes too
                    count = -count
                    _, pos = _read_long(value, pos)
                todo.append((step, t, level))  # the block after this one
                if step == 1 and _takes_no_bytes(t, named, set()):
                    empty_items += count
                    if empty_items > MAX_EMPTY_ITEMS:
                        raise RecordError(
                            "record-too-large",
                            f"schema id {sid}: an array claims {empty_items} or more items "
                            f"that take no bytes (at most {MAX_EMPTY_ITEMS})",
                        )
                    todo.append((0, t, level))  # each reads the same nothing: look at one
                else:
                    todo.append((3 if step == 1 else 4, t, level, count))
                continue
            t = _resolve(t, named)
            kind = _kind(t)
            if kind == "union":
                index, pos = _read_long(value, pos)
                if not 0 <= index < len(t):
                    raise ValueError(f"union branch {index} of {len(t)}")
                todo.append((0, t[index], level))
            elif kind in ("record", "array", "map"):
                if level + 1 > MAX_DEPTH:
                    raise too_deep(MAX_DEPTH, f"the value (schema id {sid})")
                if kind == "record":
                    todo.extend((0, f.get("type"), level + 1) for f in reversed(t["fields"]))
                else:
                    inner = t.get("items") if kind == "array" else t.get("values")
                    todo.append((1 if kind == "array" else 2, inner, level + 1))
            elif kind in ("int", "long", "enum"):
                _, pos = _read_long(value, pos)
            elif kind in ("bytes", "string"):
                size, pos = _read_long(value, pos)
                if size < 0:
                    raise ValueError(f"a length of {size}")
                pos += size
            elif kind == "fixed":
                pos += int(t["size"])
            elif kind in _FIXED_WIDTH:
                pos += _FIXED_WIDTH[kind]
            else:
                return  # a type not known here: fastavro decides about the value
            if pos > end:
                raise IndexError
    except IndexError:
        raise RecordError("invalid-avro", f"schema id {sid}: the value ends early") from None
    except ValueError as exc:
        raise RecordError("invalid-avro", f"schema id {sid}: {exc}") from None


def _read_long(value: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint (Avro's int and long) at ``pos``, and the position after it."""
    byte = value[pos]
    pos += 1
    n = byte & 0x7F
    shift = 7
    while byte & 0x80:
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")
        byte = value[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
    return (n >> 1) ^ -(n & 1), pos


def registry_for(settings: Settings) -> SchemaRegistry | None:
    """The registry to decode values with, or None when values are JSON."""
    if settings.kafka_value_format != "avro" or not settings.schema_registry_url:
        return None
    password = settings.schema_registry_password
    return SchemaRegistry(
        settings.schema_registry_url,
        settings.schema_registry_username,
        password.get_secret_value() if password is not None else None,
    )
