"""Admin HTTP endpoint: health probes, Prometheus metrics, activation.

GET  /healthz          liveness: the event loop is turning
GET  /readyz           readiness: no component reports a problem (JSON says which)
GET  /metrics          Prometheus text format
GET  /admin/state      active or not, assignment, buffered and in-flight work
POST /admin/activate   start consuming and sending
POST /admin/deactivate stop consuming and sending, keep the position

The endpoint listens on all interfaces by default (ADMIN_HOST=0.0.0.0): probes and
Prometheus reach a pod on its own address. Reading is open; the two POSTs change what
the sink does, so they need ``Authorization: Bearer <ADMIN_TOKEN>`` (refused, 403, while
ADMIN_TOKEN is unset) and refuse anything a browser could send on a web page's behalf
(an ``Origin`` header, ``Sec-Fetch-Site`` other than ``none``, a form content type):
no page a user visits can switch the sink off.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sink.pipeline import Pipeline

STALL_S = 60.0  # a loop that has not turned for this long is stuck: let the pod restart
# What an HTML form can post without a CORS preflight.
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
Handler = Callable[[web.Request], Awaitable[web.Response]]


def _refused(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def guarded(token: str | None, handler: Handler) -> Handler:
    """``handler`` for a request that changes the sink: a token, and no browser."""
    expected = token.encode() if token is not None else None

    async def guard(request: web.Request) -> web.Response:
        fetch_site = request.headers.get("Sec-Fetch-Site", "none").lower()
        if "Origin" in request.headers or fetch_site != "none":
            return _refused(
                403,
                "refused: a browser request (Origin or Sec-Fetch-Site header); "
                "call the admin endpoint from a command line or an HTTP client",
            )
        if "Content-Type" in request.headers and request.content_type in FORM_TYPES:
            return _refused(403, f"refused: a form post ({request.content_type})")
        if expected is None:
            return _refused(
                403,
                "activation over HTTP is off: set ADMIN_TOKEN (from a Secret) and send "
                "Authorization: Bearer <token>",
            )
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # compare_digest: how long the comparison takes says nothing of the token.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            return _refused(
                401,
                "refused: send Authorization: Bearer <ADMIN_TOKEN>",
                **{"WWW-Authenticate": 'Bearer realm="clari-sink admin"'},
            )
        return await handler(request)

    return guard


def build_admin_app(pipeline: Pipeline) -> web.Application:
    health = pipeline.health
    secret = pipeline.s.admin_token
    token = secret.get_secret_value() if secret is not None else None

    async def healthz(_: web.Request) -> web.Response:
        stalled = time.monotonic() - health.loop_heartbeat
        if stalled > STALL_S:
            return web.json_response({"status": "stalled", "seconds": round(stalled)}, status=503)
        return web.json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        body = {
            "status": "ready" if health.ok else "degraded",
            "problems": health.problems(),
            "active": pipeline.active,
        }
        return web.json_response(body, status=200 if health.ok else 503)

    async def metrics(_: web.Request) -> web.Response:
        pipeline.update_gauges()  # current at scrape time, not as of the last loop turn
        data = generate_latest(pipeline.metrics.registry)
        return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def state(_: web.Request) -> web.Response:
        source = pipeline.source
        return web.json_response(
            {
                "active": pipeline.active,
                "backpressure": pipeline.backpressure,
                "assigned": sorted(f"{t}[{p}]" for t, p in (source.assignment if source else ())),
                "consumed": pipeline.intake.consumed,
                "unresolved": pipeline.tracker.unresolved(),
                "inFlight": len(pipeline.in_flight),
                "concurrency": pipeline.limit.current,
                "problems": health.problems(),
            }
        )

    async def activate(_: web.Request) -> web.Response:
        pipeline.set_active(True)
        return await state(_)

    async def deactivate(_: web.Request) -> web.Response:
        pipeline.set_active(False)
        return await state(_)

    app = web.Application()
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics),
            web.get("/admin/state", state),
            web.post("/admin/activate", guarded(token, activate)),
            web.post("/admin/deactivate", guarded(token, deactivate)),
        ]
    )
    return app


async def start_admin(pipeline: Pipeline, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(build_admin_app(pipeline), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
