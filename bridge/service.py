"""The bridge HTTP service (aiohttp): LoRA registry, generations with live progress, pods.

One JSON error shape: ``{"error": {"type", "message"}}``. With API keys configured
(``LORA_BRIDGE_API_KEYS``) every ``/v1`` route needs ``Authorization: Bearer <key>``
(constant-time comparison); with none, ``serve`` binds to loopback only and says so.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from .errors import LoraBridgeError
from .generations import TERMINAL_STATUSES, GenerationRefused, Generations, job_view
from .lorafiles.inspect import inspect_source
from .lorafiles.sources import FetchPolicy
from .lorafiles.validate import LoraValidationError
from .pod_pool import PodPool
from .registry import LORA_FIELDS, LORA_STATUSES, Database, NotFound
from .uploads import LoraUploads

log = logging.getLogger("lora_bridge.service")
MAX_BODY = 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, type: str, message: str) -> web.Response:
    return web.json_response({"error": {"type": type, "message": message}}, status=status)


@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    keys: list[str] = request.app["api_keys"]
    if keys and request.path.startswith("/v1"):
        given = request.headers.get("Authorization", "").encode()
        if not any(hmac.compare_digest(given, f"Bearer {k}".encode()) for k in keys):
            return error(401, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)")
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status == 413:
            return error(413, "too_large", f"request body over {MAX_BODY} bytes")
        if exc.status >= 400:
            return error(exc.status, "http", exc.reason)
        raise
    except NotFound as exc:
        return error(404, "not_found", str(exc))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return error(400, "bad_json", f"body is not valid JSON: {exc}")
    except (GenerationRefused, LoraValidationError, ValueError, TypeError, KeyError) as exc:
        return error(400 if not isinstance(exc, GenerationRefused) else 422, "invalid", str(exc).strip("'\""))
    except LoraBridgeError as exc:
        return error(400, type(exc).__name__, str(exc))


async def body(request: web.Request) -> dict[str, Any]:
    data = json.loads(await request.text() or "{}")
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    return data


def _lora_fields(data: dict[str, Any], partial: bool) -> dict[str, Any]:
    unknown = set(data) - set(LORA_FIELDS) - {"character_id", "brand_id"}
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}")
    fields = {k: v for k, v in data.items() if k in LORA_FIELDS}
    for kind in ("character", "brand"):
        if f"{kind}_id" in data:
            fields["owner_kind"], fields["owner_id"] = kind, str(data[f"{kind}_id"])
    if "status" in fields and fields["status"] not in LORA_STATUSES:
        raise ValueError(f"status must be one of {list(LORA_STATUSES)}")
    for key in ("name", "source", "trigger_word", "fallback_style", "family", "sha256", "owner_kind", "owner_id"):
        if key in fields and fields[key] is not None and not isinstance(fields[key], str):
            raise ValueError(f"'{key}' must be a string")
    if not partial and not fields.get("name"):
        raise ValueError("'name' is required")
    return fields


async def create_lora(request: web.Request) -> web.Response:
    fields = _lora_fields(await body(request), partial=False)
    source = fields.get("source")
    if source and not fields.get("family"):  # fill family, rank, trigger word from the header (ranged reads)
        policy: FetchPolicy = request.app["policy"]
        info = await asyncio.get_running_loop().run_in_executor(None, lambda: inspect_source(source, policy, with_hash=False))
        fields.setdefault("family", info.family)
        fields.setdefault("rank", info.rank)
        fields.setdefault("size", info.size)
        if not fields.get("trigger_word") and info.trigger_words:
            fields["trigger_word"] = info.trigger_words[0]
        fields["metadata"] = {**info.metadata, **(fields.get("metadata") or {})}
    return web.json_response(request.app["db"].add_lora(fields), status=201)


async def list_loras(request: web.Request) -> web.Response:
    q = request.query
    owner_kind = "character" if "character_id" in q else "brand" if "brand_id" in q else q.get("owner_kind")
    owner_id = q.get("character_id") or q.get("brand_id") or q.get("owner_id")
    items = request.app["db"].list_loras(owner_kind=owner_kind, owner_id=owner_id, status=q.get("status"), family=q.get("family"))
    return web.json_response({"loras": items})


async def get_lora(request: web.Request) -> web.Response:
    return web.json_response(request.app["db"].get_lora(request.match_info["id"]))


async def lora_metadata(request: web.Request) -> web.Response:
    return web.json_response(request.app["db"].get_lora(request.match_info["id"])["metadata"])


async def patch_lora(request: web.Request) -> web.Response:
    return web.json_response(request.app["db"].update_lora(request.match_info["id"], _lora_fields(await body(request), partial=True)))


async def delete_lora(request: web.Request) -> web.Response:
    request.app["db"].delete_lora(request.match_info["id"])
    return web.Response(status=204)


async def create_generation(request: web.Request) -> web.Response:
    gens: Generations = request.app["generations"]
    job_id = gens.start(await body(request))
    if request.query.get("wait") in ("1", "true"):
        while gens.db.get_job(job_id)["status"] not in TERMINAL_STATUSES:
            await gens.wait_change(job_id, 1.0)
        return web.json_response(job_view(gens.db.get_job(job_id)))
    return web.json_response({"id": job_id, "status": "queued"}, status=202)


async def get_generation(request: web.Request) -> web.Response:
    return web.json_response(job_view(request.app["db"].get_job(request.match_info["id"])))


async def generation_events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events; resumable with ``Last-Event-ID`` (or ``?last_event_id=``)."""
    gens: Generations = request.app["generations"]
    job_id = request.match_info["id"]
    gens.db.get_job(job_id)
    last = int(request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or 0)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    while True:
        for seq, type, data in gens.db.events(job_id, last):
            await resp.write(f"id: {seq}\nevent: {type}\ndata: {json.dumps(data, default=str)}\n\n".encode())
            last = seq
        if gens.db.get_job(job_id)["status"] in TERMINAL_STATUSES and not gens.db.events(job_id, last):
            break
        await gens.wait_change(job_id, 15.0)
    return resp


async def generation_ws(request: web.Request) -> web.WebSocketResponse:
    """The WebSocket twin of the SSE stream: ``{"id", "event", "data"}`` messages."""
    gens: Generations = request.app["generations"]
    job_id = request.match_info["id"]
    gens.db.get_job(job_id)
    last = int(request.query.get("last_event_id") or 0)
    ws = web.WebSocketResponse(heartbeat=20)
    await ws.prepare(request)
    while not ws.closed:
        for seq, type, data in gens.db.events(job_id, last):
            await ws.send_json({"id": seq, "event": type, "data": data}, dumps=lambda o: json.dumps(o, default=str))
            last = seq
        if gens.db.get_job(job_id)["status"] in TERMINAL_STATUSES and not gens.db.events(job_id, last):
            break
        await gens.wait_change(job_id, 15.0)
    await ws.close()
    return ws


async def upload_lora(request: web.Request) -> web.Response:
    """Multipart ``file`` (+ registry fields): stored in the local store (or S3), inspected, registered."""
    reader = await request.multipart()
    fields: dict[str, Any] = {}
    stored = None
    async for part in reader:
        if part.name == "file":
            stored = await request.app["uploads"].save(part)
        elif part.name:
            fields[part.name] = (await part.text()).strip()
    if stored is None:
        raise ValueError("multipart field 'file' is required")
    fields = _lora_fields({k: v for k, v in fields.items() if v}, partial=False) if fields.get("name") else \
        _lora_fields({**fields, "name": stored["filename"]}, partial=False)
    info = stored["info"]
    record = {**fields, "source": stored["source"], "sha256": info.sha256, "size": info.size, "rank": info.rank,
              "family": fields.get("family") or info.family, "metadata": info.metadata,
              "trigger_word": fields.get("trigger_word") or (info.trigger_words[0] if info.trigger_words else None)}
    return web.json_response(request.app["db"].add_lora(record), status=201)


def _pod(request: web.Request):
    pool: PodPool = request.app["pool"]
    pods = list(pool.status.values())
    try:
        return pods[int(request.match_info["id"])]
    except (ValueError, IndexError):
        raise NotFound(f"no pod {request.match_info['id']!r}; pods are numbered 0..{len(pods) - 1}") from None


async def clear_pod_cache(request: web.Request) -> web.Response:
    pod = _pod(request)
    data = await body(request)
    async with request.app["pool"].client(pod) as client:
        result = await client.post_json("/lora_bridge/cache/clear", {"memory": data.get("memory", True), "disk": data.get("disk", False)})
    return web.json_response({"pod": pod.config.name, **result})


async def cache_stats(request: web.Request) -> web.Response:
    """Disk and memory cache statistics of every pack pod, and their totals."""
    pool: PodPool = request.app["pool"]
    per_pod, totals = [], {"hits": 0, "misses": 0, "evictions": 0, "entries": 0, "bytes": 0}
    for pod in await pool.refresh(force=True):
        if not (pod.healthy and pod.pack):
            continue
        async with pool.client(pod) as client:
            cache = await client.get_json("/lora_bridge/cache")
        stats = {part: {k: v for k, v in cache[part].items() if k != "items"} for part in ("disk", "memory")}
        per_pod.append({"pod": pod.config.name, **stats})
        for part in ("disk", "memory"):
            for key in totals:
                totals[key] += stats[part].get(key, 0)
    lookups = totals["hits"] + totals["misses"]
    return web.json_response({"pods": per_pod, "total": {**totals, "hit_rate": round(totals["hits"] / lookups, 4) if lookups else 0.0}})


async def generation_output(request: web.Request) -> web.StreamResponse:
    job = request.app["db"].get_job(request.match_info["id"])
    outputs = job["result"].get("outputs") or []
    n = int(request.match_info["n"])
    if not 0 <= n < len(outputs):
        raise NotFound(f"generation {job['id']} has {len(outputs)} output(s)")
    return web.FileResponse(request.app["generations"].outputs_dir / job["id"] / outputs[n])


async def cancel_generation(request: web.Request) -> web.Response:
    await request.app["generations"].cancel(request.match_info["id"])
    return web.json_response(job_view(request.app["db"].get_job(request.match_info["id"])))


async def list_pods(request: web.Request) -> web.Response:
    pool: PodPool = request.app["pool"]
    return web.json_response({"pods": [s.summary() for s in await pool.refresh(force=True)]})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def metrics(request: web.Request) -> web.Response:
    pool: PodPool = request.app["pool"]
    lines = ["# TYPE lora_bridge_pod_healthy gauge"]
    for s in pool.status.values():
        lines.append(f'lora_bridge_pod_healthy{{pod="{s.config.name}"}} {int(s.healthy)}')
    lines.append("# TYPE lora_bridge_pod_queue gauge")
    lines += [f'lora_bridge_pod_queue{{pod="{s.config.name}"}} {s.queue}' for s in pool.status.values()]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


OPENAPI = {
    "openapi": "3.0.3",
    "info": {"title": "comfyui-lora-bridge", "version": "0.1.0"},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "security": [{"bearer": []}],
    "paths": {
        "/v1/loras": {"get": {"summary": "List LoRAs (filters: character_id, brand_id, status, family)", "responses": {"200": {"description": "LoRAs"}}},
                      "post": {"summary": "Register a LoRA (S3 key or URL; header inspected)", "responses": {"201": {"description": "created"}, "400": {"description": "invalid"}}}},
        "/v1/loras/{id}": {"get": {"summary": "One LoRA", "responses": {"200": {"description": "LoRA"}, "404": {"description": "unknown"}}},
                           "patch": {"summary": "Update a LoRA", "responses": {"200": {"description": "LoRA"}}},
                           "delete": {"summary": "Delete a LoRA", "responses": {"204": {"description": "deleted"}}}},
        "/v1/loras/{id}/metadata": {"get": {"summary": "The LoRA file's metadata", "responses": {"200": {"description": "metadata"}}}},
        "/v1/generations": {"post": {"summary": "Start a generation (template+params or workflow; LoRAs by id, owner or lora_configs; lora_policy strict|fallback; ?wait=true)",
                                     "responses": {"202": {"description": "job id"}, "200": {"description": "result (wait=true)"}, "422": {"description": "strict policy refused"}}}},
        "/v1/generations/{id}": {"get": {"summary": "Job status, applied LoRAs, warnings, pod, timings, cost, outputs", "responses": {"200": {"description": "job"}}},
                                 "delete": {"summary": "Cancel", "responses": {"200": {"description": "job"}}}},
        "/v1/generations/{id}/events": {"get": {"summary": "Server-Sent Events (Last-Event-ID resumes)", "responses": {"200": {"description": "text/event-stream"}}}},
        "/v1/generations/{id}/ws": {"get": {"summary": "WebSocket twin of the events", "responses": {"101": {"description": "upgrade"}}}},
        "/v1/loras/upload": {"post": {"summary": "Upload a .safetensors LoRA (multipart 'file' + fields) and register it", "responses": {"201": {"description": "created"}}}},
        "/v1/pods/{id}/cache/clear": {"post": {"summary": "Clear a pod's memory and/or disk cache", "responses": {"200": {"description": "cleared"}}}},
        "/v1/cache/stats": {"get": {"summary": "Cache statistics across pods", "responses": {"200": {"description": "stats"}}}},
        "/v1/generations/{id}/outputs/{n}": {"get": {"summary": "Output file n", "responses": {"200": {"description": "file"}}}},
        "/v1/pods": {"get": {"summary": "Pods: health, queue, mode, cache", "responses": {"200": {"description": "pods"}}}},
        "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "ok"}}}},
        "/metrics": {"get": {"summary": "Prometheus text", "security": [], "responses": {"200": {"description": "metrics"}}}},
    },
}


_LORA_BODY = {"type": "object", "additionalProperties": False, "properties": {
    "name": {"type": "string"}, "character_id": {"type": "string"}, "brand_id": {"type": "string"},
    "owner_kind": {"type": "string"}, "owner_id": {"type": "string"}, "version": {"type": "integer"},
    "status": {"type": "string", "enum": list(LORA_STATUSES)}, "family": {"type": "string"},
    "trigger_word": {"type": "string"}, "fallback_style": {"type": "string"}, "source": {"type": "string"},
    "sha256": {"type": "string"}, "size": {"type": "integer"}, "rank": {"type": "integer"}, "metadata": {"type": "object"}}}
_GENERATION_BODY = {"type": "object", "properties": {
    "template": {"type": "string"}, "params": {"type": "object"}, "workflow": {"type": "object"},
    "character_id": {"type": ["string", "integer"]}, "brand_id": {"type": ["string", "integer"]},
    "loras": {"type": "array", "items": {"type": "object", "required": ["lora_id"], "properties": {
        "lora_id": {"type": "string"}, "strength_model": {"type": "number"}, "strength_clip": {"type": "number"}}}},
    "lora_policy": {"type": "string", "enum": ["fallback", "strict"]}, "lora_strength": {"type": "number"},
    "apply_mode": {"type": "string", "enum": ["hotswap", "merge"]}, "webhook_url": {"type": "string"}}}


def _spec() -> dict[str, Any]:
    """OPENAPI with path parameters and request bodies filled in."""
    spec = json.loads(json.dumps(OPENAPI))
    for path, ops in spec["paths"].items():
        names = [p[1:-1] for p in path.split("/") if p.startswith("{")]
        for method, op in ops.items():
            if names:
                op["parameters"] = [{"name": n, "in": "path", "required": True,
                                     "schema": {"type": "integer" if n == "n" else "string"}} for n in names]
            schema = {("/v1/loras", "post"): _LORA_BODY, ("/v1/loras/{id}", "patch"): _LORA_BODY,
                      ("/v1/generations", "post"): _GENERATION_BODY}.get((path, method))
            if schema:
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    return spec


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(_spec())


def create_app(db: Database, pool: PodPool, outputs_dir: Path, api_keys: list[str], policy: FetchPolicy,
               uploads: LoraUploads, rate_per_hour: float = 0.0, webhook_secret: str | None = None,
               output_bucket: str | None = None) -> web.Application:
    app = web.Application(middlewares=[errors_and_auth], client_max_size=MAX_BODY)
    app["db"], app["pool"], app["api_keys"], app["policy"], app["uploads"] = db, pool, api_keys, policy, uploads
    app["generations"] = Generations(db, pool, outputs_dir, rate_per_hour, webhook_secret, policy, output_bucket)

    async def on_startup(app: web.Application) -> None:
        app["generations"].resume_unfinished()

    app.on_startup.append(on_startup)
    r = app.router
    r.add_post("/v1/loras", create_lora)
    r.add_get("/v1/loras", list_loras)
    r.add_get("/v1/loras/{id}", get_lora)
    r.add_patch("/v1/loras/{id}", patch_lora)
    r.add_delete("/v1/loras/{id}", delete_lora)
    r.add_get("/v1/loras/{id}/metadata", lora_metadata)
    r.add_post("/v1/generations", create_generation)
    r.add_get("/v1/generations/{id}", get_generation)
    r.add_delete("/v1/generations/{id}", cancel_generation)
    r.add_get("/v1/generations/{id}/events", generation_events)
    r.add_get("/v1/generations/{id}/ws", generation_ws)
    r.add_post("/v1/loras/upload", upload_lora)
    r.add_post("/v1/pods/{id}/cache/clear", clear_pod_cache)
    r.add_get("/v1/cache/stats", cache_stats)
    r.add_get(r"/v1/generations/{id}/outputs/{n:\d+}", generation_output)
    r.add_get("/v1/pods", list_pods)
    r.add_get("/healthz", healthz)
    r.add_get("/metrics", metrics)
    r.add_get("/openapi.json", openapi)
    return app
