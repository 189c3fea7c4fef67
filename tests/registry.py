"""A hand-written Confluent-compatible Schema Registry, the part a consumer uses: register
a schema under a subject, read it by id or by subject and version. Optional basic auth.

The Avro tests run against a real registry (tests/real_registry.py). This one is kept
only for what a real one cannot be made to do on demand: answer 503 (``down``), stay in
the moment after a start when Karapace answers "not found" for schemas it has not read
yet while its ``/_health`` says it is not ready (``starting``), serve a registry without
a ``/_health`` page, as Confluent's (``health_page``), and hold a schema whose reference
names a subject that does not exist (a real one refuses to register it)."""

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
        self.starting = False  # every schema "not found", /_health not ready
        self.health_page = True  # False: no /_health at all (404), as Confluent's
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
                web.get("/_health", self._health),
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
        open_page = request.path == "/_health"  # as Karapace's
        if self.auth and not open_page and request.headers.get("Authorization") != self.auth:
            return web.json_response({"error_code": 401, "message": "Unauthorized"}, status=401)
        result: web.StreamResponse = await handler(request)
        return result

    async def _health(self, _: web.Request) -> web.Response:
        if not self.health_page:
            return web.json_response({"error_code": 404, "message": "Not Found"}, status=404)
        # The fields Karapace's page has that a consumer may read.
        ready = not self.starting
        status = {"schema_registry_ready": ready, "schema_registry_is_primary": ready}
        return web.json_response({"status": status, "healthy": True})

    async def _schema_by_id(self, request: web.Request) -> web.Response:
        found = None if self.starting else self._by_id.get(int(request.match_info["id"]))
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
