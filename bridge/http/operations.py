"""The routes operators and their tools read without a key: health, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from ..errors import DatabaseUnavailable
from ..jobs.metrics import render as render_metrics
from ..openapi import RouteSpec
from .routing import DB, GENERATIONS, OPENAPI, POOL, Handler, Inputs

log = logging.getLogger("lora_bridge.service")


async def healthz(request: web.Request, inputs: Inputs) -> web.Response:
    """Liveness with the database's reachability (503 while it cannot be reached)."""
    db = request.app[DB]
    try:
        await db.ping()
    except DatabaseUnavailable as exc:  # the reason (host, port) goes to the log, not to an unauthenticated caller
        log.warning("health check: %s", exc)
        return web.json_response({"ok": False, "replica": db.replica, "database": "unreachable"}, status=503)
    return web.json_response({"ok": True, "replica": db.replica, "database": db.backend.dialect})


async def metrics(request: web.Request, inputs: Inputs) -> web.Response:
    pods = []
    for pod in await request.app[POOL].refresh():  # cache counters as the health check last read them (at most health_ttl old)
        pods.append({"pod": pod.config.name, "state": pod.state, "healthy": pod.healthy, "queue": pod.queue,
                     "fetch_failures": pod.fetch_failures, "cache": pod.cache_stats if pod.healthy and pod.pack else None})
    db = request.app[DB]
    page = render_metrics(db.replica, await db.job_counts(), request.app[GENERATIONS].metrics, pods,
                          await db.unfinished_jobs(), time.time())
    return web.Response(text=page, content_type="text/plain")


async def openapi(request: web.Request, inputs: Inputs) -> web.Response:
    return web.json_response(request.app[OPENAPI])


R = RouteSpec
ROUTES: list[tuple[RouteSpec, Handler]] = [
    (R("GET", "/healthz", "Liveness and database reachability", auth=False,
       responses={200: "ok", 503: "the database cannot be reached"}), healthz),
    (R("GET", "/metrics", "Prometheus text", auth=False), metrics),
    (R("GET", "/openapi.json", "This document", auth=False), openapi),
]
