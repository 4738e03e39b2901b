"""The ``/v1/generations`` routes: start, read, cancel a job; its events; its outputs."""

from __future__ import annotations

from aiohttp import web

from ..errors import NotFound
from ..openapi import RouteSpec
from . import schemas as s
from .routing import DB, GENERATIONS, Handler, Inputs
from .streams import generation_events, generation_ws


async def create_generation(request: web.Request, inputs: Inputs) -> web.Response:
    gens = request.app[GENERATIONS]
    job_id = await gens.start(inputs.body)
    if not inputs.query.waits:
        return web.json_response({"id": job_id, "status": "queued"}, status=202)
    return web.json_response((await gens.hub.wait_ended(job_id)).view())


async def get_generation(request: web.Request, inputs: Inputs) -> web.Response:
    db = request.app[DB]
    job = await db.get_job(inputs.path.id)
    ahead = await db.jobs_ahead(job.id) if job.status == "queued" else None
    return web.json_response({**job.view(), **({"queue_position": ahead} if ahead is not None else {})})


async def generation_output(request: web.Request, inputs: Inputs) -> web.StreamResponse:
    """Output n from wherever its bytes are: this replica's folder (a folder all replicas share works from any
    of them), else the output's location (S3), so any replica answers."""
    gens = request.app[GENERATIONS]
    job = await request.app[DB].get_job(inputs.path.id)
    outputs = job.result.get("outputs") or []
    if not inputs.path.n < len(outputs):
        raise NotFound(f"generation {job.id} has {len(outputs)} output(s)")
    name = outputs[inputs.path.n]
    path = gens.outputs.path(job.id, name)
    if path.is_file():
        return web.FileResponse(path)
    kept = next((a for a in await gens.assets.of_job(job.id) if a.file_path == name), None)
    if kept is None:
        raise NotFound(f"output {name} of generation {job.id} is not kept anywhere this replica can read")
    return web.Response(body=await gens.assets.read(kept.location), content_type=kept.content_type)


async def cancel_generation(request: web.Request, inputs: Inputs) -> web.Response:
    await request.app[GENERATIONS].cancel(inputs.path.id)
    return web.json_response((await request.app[DB].get_job(inputs.path.id)).view())


R = RouteSpec
ROUTES: list[tuple[RouteSpec, Handler]] = [
    (R("POST", "/v1/generations", "Start a generation (template + params or workflow; LoRAs by id, owner or "
       "lora_configs; lora_policy strict|fallback; ?wait=true)", body=s.GenerationCreate, query=s.WaitQuery,
       responses={202: "job id", 200: "the ended job (wait=true)", 422: "refused (strict policy, graph)"}),
     create_generation),
    (R("GET", "/v1/generations/{id}", "Job state, applied LoRAs, warnings, pod, timings, cost, outputs",
       path_params=s.JobPath, responses={200: "job", 404: "unknown"}), get_generation),
    (R("DELETE", "/v1/generations/{id}", "Cancel (in any state; an ended job is returned as it is)",
       path_params=s.JobPath, responses={200: "job", 404: "unknown"}), cancel_generation),
    (R("GET", "/v1/generations/{id}/events", "Server-Sent Events (Last-Event-ID resumes; ': heartbeat' comments)",
       path_params=s.JobPath, query=s.EventsQuery, headers=s.EventsHeaders,
       responses={200: "text/event-stream", 404: "unknown"}), generation_events),
    (R("GET", "/v1/generations/{id}/ws", "WebSocket twin of the events", path_params=s.JobPath, query=s.EventsQuery,
       responses={101: "upgrade", 404: "unknown"}), generation_ws),
    (R("GET", "/v1/generations/{id}/outputs/{n}", "Output file n", path_params=s.OutputPath,
       responses={200: "file", 404: "unknown"}), generation_output),
]
