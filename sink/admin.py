"""Admin HTTP endpoint: health probes, Prometheus metrics, activation.

GET  /healthz          liveness: the event loop is turning
GET  /readyz           readiness: no component reports a problem (JSON says which)
GET  /metrics          Prometheus text format
GET  /admin/state      active or not, assignment, buffered and in-flight work
POST /admin/activate   start consuming and sending
POST /admin/deactivate stop consuming and sending, keep the position
"""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sink.pipeline import Pipeline

STALL_S = 60.0  # a loop that has not turned for this long is stuck: let the pod restart


def build_admin_app(pipeline: Pipeline) -> web.Application:
    health = pipeline.health

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
                "consumed": pipeline.consumed,
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
            web.post("/admin/activate", activate),
            web.post("/admin/deactivate", deactivate),
        ]
    )
    return app


async def start_admin(pipeline: Pipeline, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(build_admin_app(pipeline), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
