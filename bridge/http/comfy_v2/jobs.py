"""``/api/v2/jobs``: submit an API-format workflow as a job of the job core, poll it, list, cancel, and follow
its live events (SSE: ``status``, ``progress``, ``preview``, ``output``, ``log``)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from typing import Any

from aiohttp import web

from ...errors import NotFound
from ...graphs.convert import is_ui_workflow
from ...jobs.hub import Preview
from ...jobs.idempotency import IdempotencyKeys
from ...jobs.prechecks import validate_on_pod
from ...jobs.records import GENERATION, JobRecord
from ...jobs.requests import GenerationCreate
from ...jobs.states import is_terminal
from ..routing import GENERATIONS, SETTINGS, Inputs
from .envelope import WorkflowFormatUi
from .views import STATUS, ContentLinks, ProgressTracker, iso, job_view, output_view

log = logging.getLogger("lora_bridge.service")
LINKS = web.AppKey("comfy_v2_links", ContentLinks)
KEYS = web.AppKey("comfy_v2_idempotency", IdempotencyKeys)


def base_url(request: web.Request) -> str:
    """The origin the client reached us on (links in answers point back to it)."""
    return f"{request.scheme}://{request.host}"


async def _job(request: web.Request, job_id: str) -> JobRecord:
    job = await request.app[GENERATIONS].db.get_job(job_id)
    if job.kind != GENERATION:
        raise NotFound(f"no job {job_id}")
    return job


async def _view(request: web.Request, job: JobRecord, canceling: bool = False) -> dict[str, Any]:
    gens = request.app[GENERATIONS]
    ahead = await gens.db.jobs_ahead(job.id) if job.status == "queued" else 0
    return job_view(job, await gens.db.events(job.id), await gens.assets.of_job(job.id), base_url(request),
                    request.app[LINKS], request.app[SETTINGS].job_retention_s, canceling, ahead)


async def submit(request: web.Request, inputs: Inputs) -> web.Response:
    """Checked at once (graph format, asset references, the graph against a pod's node list, LoRA families);
    ``201`` means stored and queued. An ``Idempotency-Key`` replays the first answer for the same body."""
    body = inputs.body
    if is_ui_workflow(body.workflow):
        raise WorkflowFormatUi("this is a graph-editor (UI-format) workflow: export it in API format, or send it to "
                               "POST /v1/generations, which converts it")
    gens = request.app[GENERATIONS]
    key = inputs.headers.idempotency_key
    keys = request.app[KEYS]
    if key is not None:
        replayed = await keys.claim(key, hashlib.sha256(json.dumps(body.model_dump(), sort_keys=True).encode()).hexdigest())
        if replayed is not None:
            response = web.json_response(await _view(request, await _job(request, replayed)), status=201)
            response.headers["Idempotency-Replayed"] = "true"
            return response
    try:
        await validate_on_pod(gens.pool, body.workflow)
        job_id = await gens.start(GenerationCreate(workflow=body.workflow, lora_policy="strict", labels=body.metadata))
    except BaseException:
        if key is not None:
            await keys.release(key)
        raise
    if key is not None:
        await keys.bind(key, job_id)
    return web.json_response(await _view(request, await _job(request, job_id)), status=201)


async def list_jobs(request: web.Request, inputs: Inputs) -> web.Response:
    query, gens = inputs.query, request.app[GENERATIONS]
    jobs: list[dict[str, Any]] = []
    cursor = query.cursor
    while len(jobs) < query.limit:
        page = await gens.db.recent_jobs(query.limit * 2, cursor)
        if not page:
            cursor = None
            break
        for job in page:
            cursor = job.id
            labels = job.request.get("labels") or {}
            if job.kind != GENERATION or any(labels.get(k) != v for k, v in query.labels.items()):
                continue
            if query.statuses and STATUS.get(job.status, job.status) not in query.statuses:
                continue
            jobs.append({"id": job.id, "status": STATUS.get(job.status, job.status), "created_at": job.created,
                         "metadata": labels, "urls": {"self": f"{base_url(request)}/api/v2/jobs/{job.id}"}})
            if len(jobs) == query.limit:
                break
    for item in jobs:
        item["created_at"] = iso(item["created_at"])
    return web.json_response({"jobs": jobs, **({"next_cursor": cursor} if cursor and len(jobs) == query.limit else {})})


async def get_job(request: web.Request, inputs: Inputs) -> web.Response:
    return web.json_response(await _view(request, await _job(request, inputs.path.id)))


async def cancel_job(request: web.Request, inputs: Inputs) -> web.Response:
    """Idempotent: a job that has ended is returned as it ended; else it is cancelled (a running prompt is
    interrupted on its pod) and returned ``canceled`` (``canceling`` while the pod has not confirmed)."""
    job = await _job(request, inputs.path.id)
    if not is_terminal(job.status):
        await request.app[GENERATIONS].cancel(job.id)
        job = await _job(request, job.id)
    return web.json_response(await _view(request, job, canceling=not is_terminal(job.status)))


async def job_events(request: web.Request, inputs: Inputs) -> web.StreamResponse:
    """Live push, not a replayable log: on connect the current ``status``, latest ``progress`` and ``preview``,
    then each change; ``output`` for each output before the terminal ``status``, which ends the stream."""
    job = await _job(request, inputs.path.id)
    gens = request.app[GENERATIONS]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)

    async def send(event: str, data: Any) -> None:
        await resp.write(f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n".encode())

    tracker = ProgressTracker(job.request.get("workflow"))
    past = await gens.db.events(job.id)
    for old in past:
        tracker.feed(old)
    status = STATUS.get(job.status, job.status)

    async def preview(frame: Preview) -> None:
        await send("preview", {"node_id": tracker.current or "", "content_type": f"image/{frame.format}",
                               "data_base64": base64.b64encode(frame.image).decode()})

    try:
        await send("status", {"status": status, "queue_position": None})
        if (snapshot := tracker.snapshot()) is not None:
            await send("progress", snapshot)
        if is_terminal(job.status):
            return resp
        async for event in gens.hub.follow(job.id, past[-1].seq if past else 0, request.app[SETTINGS].stream_heartbeat_s,
                                           previews=True):
            if event is None:
                await resp.write(b": keepalive\n\n")
                continue
            if isinstance(event, Preview):
                await preview(event)
                continue
            if tracker.feed(event) and event.type != "succeeded" and (snapshot := tracker.snapshot()) is not None:
                await send("progress", snapshot)
            if event.type in ("warning", "error"):
                await send("log", {"level": event.type, "message": str(event.data.get("message", ""))})
            elif event.type == "output_saved":
                asset = await gens.assets.get(str(event.data.get("asset_id")))
                await send("output", output_view(asset, base_url(request), request.app[LINKS]))
            new = STATUS.get(event.type)
            if new is None or new == status:
                continue
            if new == "succeeded" and (snapshot := tracker.snapshot()) is not None:
                await send("progress", snapshot)
            status = new
            await send("status", {"status": status, "queue_position": None})
    except ConnectionResetError:
        log.debug("v2 events of %s: the client hung up", job.id)
    return resp
