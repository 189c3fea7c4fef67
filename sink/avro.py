"""Avro values in the Confluent wire format, with writer schemas from a Schema Registry.

A value is one magic byte (0), the writer schema's id (4 bytes, big-endian) and the
Avro binary encoding. Schemas are fetched once per id, asynchronously and before the
records that need them are handled, so the per-record path never waits on the network.

Values become the JSON Clari is sent: timestamps, dates and times keep their encoded
number (Clari's ``createdAt``/``updatedAt`` are epoch milliseconds, exactly what
``timestamp-millis`` carries), decimals become JSON numbers, bytes and fixed become
base64 text.
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
        missing = await self._references(session, body, named)
        if missing is not None:
            return RecordError("unknown-schema", f"schema id {sid} references {missing}, not found")
        return parse_schema(_keep_encoded(orjson.loads(body["schema"])), named_schemas=named)

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
                    return None
                if resp.status != 200:
                    text = (await resp.text())[:200]
                    raise RegistryUnavailable(f"HTTP {resp.status} for {path}: {text}")
                return await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RegistryUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def fetch_until_done(
        self, ids: set[int], wait: Callable[[float], Any], on_error: Callable[[str], None]
    ) -> bool:
        """Fetch ``ids``, retrying with backoff while the registry is unavailable: each
        failure goes to ``on_error``, then ``await wait(seconds)``, which returns True to
        give up (the sink is stopping). True once fetched."""
        delay = 0.5
        while True:
            try:
                await self.fetch(ids)
                return True
            except RegistryUnavailable as exc:
                on_error(str(exc))
                if await wait(delay):
                    return False
                delay = min(delay * 2, 30.0)

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
        try:
            return schemaless_reader(io.BytesIO(value[HEADER:]), schema, None)
        except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError...
            raise RecordError(
                "invalid-avro", f"schema id {sid}: {type(exc).__name__}: {exc}"
            ) from None


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
