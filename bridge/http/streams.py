"""A job's events over HTTP: Server-Sent Events and their WebSocket twin, both reading the job core's
event log through its hub (``jobs/hub.py``), resumable by sequence number."""

from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable

from aiohttp import web

from ..jobs.records import JobEvent
from .routing import GENERATIONS, SETTINGS, Inputs

log = logging.getLogger("lora_bridge.service")


async def job_events(request: web.Request, job_id: str, last: int, heartbeat: float,
                     send: Callable[[int, str, dict[str, Any]], Awaitable[None]],
                     beat: Callable[[], Awaitable[None]]) -> None:
    """Send the job's events after ``last`` until it has ended, and a heartbeat after ``heartbeat`` seconds
    without one. A client that hangs up ends the stream quietly: that is how streams end, not a fault."""
    try:
        async for event in request.app[GENERATIONS].hub.follow(job_id, last, heartbeat):
            if event is None:
                await beat()
            elif isinstance(event, JobEvent):
                await send(*event)
    except ConnectionResetError:
        log.debug("events of %s: the client hung up", job_id)


def _resume_point(inputs: Inputs) -> int:
    header = inputs.headers.last_event_id if inputs.headers is not None else None
    return header if header is not None else inputs.query.last_event_id


async def generation_events(request: web.Request, inputs: Inputs) -> web.StreamResponse:
    """Server-Sent Events; resumable with ``Last-Event-ID`` (or ``?last_event_id=``); ``: heartbeat`` comments."""
    job_id = inputs.path.id
    await request.app[GENERATIONS].db.get_job(job_id)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)

    async def send(seq: int, type: str, data: dict[str, Any]) -> None:
        await resp.write(f"id: {seq}\nevent: {type}\ndata: {json.dumps(data, default=str)}\n\n".encode())

    async def beat() -> None:
        await resp.write(b": heartbeat\n\n")

    await job_events(request, job_id, _resume_point(inputs), request.app[SETTINGS].stream_heartbeat_s, send, beat)
    return resp


async def generation_ws(request: web.Request, inputs: Inputs) -> web.WebSocketResponse:
    """The WebSocket twin of the SSE stream: ``{"id", "event", "data"}`` messages (pings keep it alive)."""
    job_id = inputs.path.id
    await request.app[GENERATIONS].db.get_job(job_id)
    heartbeat = request.app[SETTINGS].stream_heartbeat_s
    ws = web.WebSocketResponse(heartbeat=heartbeat)
    await ws.prepare(request)

    async def send(seq: int, type: str, data: dict[str, Any]) -> None:
        await ws.send_json({"id": seq, "event": type, "data": data}, dumps=lambda o: json.dumps(o, default=str))

    async def beat() -> None:
        if ws.closed:
            raise ConnectionResetError("client went away")

    await job_events(request, job_id, _resume_point(inputs), heartbeat, send, beat)
    await ws.close()
    return ws
