"""A Confluent-compatible Schema Registry, the part a consumer uses, for the Avro tests:
register a schema under a subject, read it by id or by subject and version. Optional
basic auth; ``down`` makes it answer 503."""

from __future__ import annotations

import base64
import io
import struct
from typing import Any

import orjson
from aiohttp import web
from fastavro import parse_schema, schemaless_writer

from tests.support import LoopbackApp


class Registry(LoopbackApp):
    def __init__(self, username: str | None = None, password: str | None = None) -> None:
        super().__init__()
        self.auth = (
            "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
            if username
            else None
        )
        self.down = False
        self.requests: list[str] = []
        self._by_id: dict[int, dict[str, Any]] = {}
        self._subjects: dict[str, list[int]] = {}

    def register(
        self, subject: str, schema: dict[str, Any], references: list[dict[str, Any]] | None = None
    ) -> int:
        sid = len(self._by_id) + 1
        self._by_id[sid] = {"schema": orjson.dumps(schema).decode()}
        if references:
            self._by_id[sid]["references"] = references
        self._subjects.setdefault(subject, []).append(sid)
        return sid

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.add_routes(
            [
                web.get("/schemas/ids/{id}", self._schema_by_id),
                web.get("/subjects/{subject}/versions/{version}", self._version),
            ]
        )
        return app

    def start(self) -> Registry:
        self.serve()
        return self

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(request.path)
        if self.down:
            return web.json_response({"error_code": 50301, "message": "unavailable"}, status=503)
        if self.auth and request.headers.get("Authorization") != self.auth:
            return web.json_response({"error_code": 401, "message": "Unauthorized"}, status=401)
        result: web.StreamResponse = await handler(request)
        return result

    async def _schema_by_id(self, request: web.Request) -> web.Response:
        found = self._by_id.get(int(request.match_info["id"]))
        if found is None:
            return web.json_response(
                {"error_code": 40403, "message": "Schema not found"}, status=404
            )
        return web.json_response(found)

    async def _version(self, request: web.Request) -> web.Response:
        ids = self._subjects.get(request.match_info["subject"], [])
        version = request.match_info["version"]
        index = len(ids) - 1 if version == "latest" else int(version) - 1
        if not 0 <= index < len(ids):
            return web.json_response(
                {"error_code": 40402, "message": "Version not found"}, status=404
            )
        sid = ids[index]
        return web.json_response({"id": sid, "version": index + 1, **self._by_id[sid]})


def avro_value(
    schema: dict[str, Any],
    sid: int,
    record: dict[str, Any],
    references: list[dict[str, Any]] | None = None,
) -> bytes:
    """``record`` in the Confluent wire format: magic byte, schema id, Avro binary
    (``references``: the named schemas ``schema`` uses)."""
    named: dict[str, Any] = {}
    for ref in references or []:
        parse_schema(ref, named_schemas=named)
    out = io.BytesIO()
    out.write(struct.pack(">bI", 0, sid))
    schemaless_writer(out, parse_schema(schema, named_schemas=named), record)
    return out.getvalue()
