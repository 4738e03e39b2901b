"""The bridge HTTP service (aiohttp): LoRA registry, generations with live progress, pods.

Each route is declared once in ``ROUTES`` with the models of its inputs (``schemas.py``):
the request is parsed into those models before the handler runs, and ``/openapi.json`` is
generated from the same declarations (the seed-compatible routes of ``compat/`` too). Errors
have one shape, ``{"error": {"type", "message"}}``, chosen by the table in ``http_errors.py``.
With API keys configured (``LORA_BRIDGE_API_KEYS``) every ``/v1`` and ``/compat`` route needs
``Authorization: Bearer <key>``, but those declared ``auth=False`` (the signed trainer webhook).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import BodyPartReader, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import (
    DatabaseUnavailable,
    NotFound,
    RequestInvalid,
)
from ..lorafiles.sources import (
    FetchPolicy,
)
from ..openapi import RouteSpec, openapi_document
from ..pack_protocol import (
    CacheClear,
    strict_json,
)
from ..pods.pool import PodPool, PodStatus
from ..settings import Settings
from ..training.dataset import DatasetLimits
from . import compat
from . import schemas as s
from .brand_store import BrandStore
from .character_paths import KEY_FRAME_TEMPLATES, VIDEO_TEMPLATES, matrix
from .database import AsyncDatabase, Database
from .http_errors import answer, error_response
from .jobs import Generations, job_view
from .metrics import render as render_metrics
from .registry import (
    check_pair,
    check_pair_sources,
    check_source_allowed,
    keep_credentials_out,
    lora_view,
    register,
)
from .replicas import Replica
from .routing import (
    BRAND_STORE,
    DB,
    GENERATIONS,
    OPENAPI,
    POLICY,
    POOL,
    REGISTRY_POLICY,
    REPLICA,
    SETTINGS,
    TRAININGS,
    UPLOADS,
    Handler,
    Inputs,
    job_events,
    parse,
    validate,
)
from .trainings import KIND as TRAINING
from .trainings import Trainings
from .uploads import LoraUploads, StagedUpload

log = logging.getLogger("lora_bridge.service")
MAX_BODY = 1024 * 1024
VERSION = "0.2.0"


@web.middleware
async def errors_and_auth(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    keys: tuple[str, ...] = request.app[SETTINGS].api_keys
    if keys and request.path.startswith(("/v1", compat.PREFIX)) and request.path not in OPEN_PATHS:
        given = request.headers.get("Authorization", "").encode()
        if not any(hmac.compare_digest(given, f"Bearer {k}".encode()) for k in keys):
            return error_response(401, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)")
    try:
        return await handler(request)
    except asyncio.CancelledError:
        raise
    except ConnectionResetError:  # the client hung up mid-answer: normal, nothing to answer (nginx's 499)
        log.debug("%s %s: the client hung up", request.method, request.path)
        return web.Response(status=499)
    except Exception as exc:  # mapped by the one error table; unknown ones are logged as bugs
        return answer(exc)


def _gens(request: web.Request) -> Generations:
    return request.app[GENERATIONS]


# -- LoRA registry ---------------------------------------------------------------------------------


async def create_lora(request: web.Request, inputs: Inputs) -> web.Response:
    return web.json_response(lora_view(await register(request, inputs.body)), status=201)


async def list_loras(request: web.Request, inputs: Inputs) -> web.Response:
    return web.json_response({"loras": [lora_view(r) for r in await request.app[DB].list_loras(**inputs.query.filters())]})


async def get_lora(request: web.Request, inputs: Inputs) -> web.Response:
    return web.json_response(lora_view(await request.app[DB].get_lora(inputs.path.id)))


async def lora_metadata(request: web.Request, inputs: Inputs) -> web.Response:
    return web.json_response((await request.app[DB].get_lora(inputs.path.id))["metadata"])


async def patch_lora(request: web.Request, inputs: Inputs) -> web.Response:
    fields = inputs.body.registry_fields()
    current = await request.app[DB].get_lora(inputs.path.id)  # 404 before anything else
    if fields.get("source"):
        await check_source_allowed(request, fields["source"])
    if fields.get("low_noise_source"):
        await check_pair_sources(request, fields)
    await keep_credentials_out(request, fields, current["metadata"])
    return web.json_response(lora_view(await request.app[DB].update_lora(inputs.path.id, fields)))


async def delete_lora(request: web.Request, inputs: Inputs) -> web.Response:
    await request.app[DB].delete_lora(inputs.path.id)
    return web.Response(status=204)


UPLOAD_PARTS = ("file", "low_noise_file")  # a single LoRA, or a Wan 2.2 pair's high- and low-noise files


async def upload_lora(request: web.Request, inputs: Inputs) -> web.Response:
    """Multipart ``file`` (+ ``low_noise_file`` for a Wan 2.2 pair) + ``UploadFields``: staged, checked
    whole, then kept and registered."""
    if not request.content_type.startswith("multipart/"):
        raise RequestInvalid("body: send multipart/form-data with a 'file' part (a .safetensors LoRA)")
    uploads: LoraUploads = request.app[UPLOADS]
    texts: dict[str, str] = {}
    staged: dict[str, StagedUpload] = {}
    try:
        try:
            async for part in await request.multipart():
                if not isinstance(part, BodyPartReader):
                    raise RequestInvalid("body: nested multipart parts are not accepted")
                if part.name in UPLOAD_PARTS and part.name not in staged:
                    staged[part.name] = await uploads.stage(part)
                elif part.name and part.name not in UPLOAD_PARTS and part.name not in texts:
                    texts[part.name] = (await part.text()).strip()
                else:
                    raise RequestInvalid(f"body: unexpected or repeated form part {part.name!r}")
        except (ValueError, RuntimeError, HttpProcessingError) as exc:  # what aiohttp raises for a malformed body
            raise RequestInvalid(f"body: malformed multipart/form-data ({exc})") from None
        if "file" not in staged:
            raise RequestInvalid("body: multipart field 'file' is required")
        lora = validate(s.UploadFields, {k: v for k, v in texts.items() if v}, "form").lora(staged["file"].filename)
        if "low_noise_file" in staged:
            check_pair({"high-noise": staged["file"].info, "low-noise": staged["low_noise_file"].info})
        sources = {name: await uploads.commit(upload) for name, upload in staged.items()}
    except BaseException:
        for upload in staged.values():
            uploads.discard(upload)
        raise
    info = staged["file"].info
    pair = {"low_noise_source": sources["low_noise_file"], "low_noise_sha256": staged["low_noise_file"].info.sha256} \
        if "low_noise_file" in staged else {}
    record = {**lora.registry_fields(), "source": sources["file"], "sha256": info.sha256, "size": info.size, "rank": info.rank,
              "family": lora.family or info.family, "variant": info.variant if lora.family in (None, info.family) else None,
              "metadata": info.metadata, **pair,
              "trigger_word": lora.trigger_word or (info.trigger_words[0] if info.trigger_words else None)}
    return web.json_response(lora_view(await request.app[DB].add_lora(record)), status=201)


# -- generations ---------------------------------------------------------------------------------


async def create_generation(request: web.Request, inputs: Inputs) -> web.Response:
    gens = _gens(request)
    job_id = await gens.start(inputs.body)
    if not inputs.query.waits:
        return web.json_response({"id": job_id, "status": "queued"}, status=202)
    return web.json_response(job_view(await gens.wait_ended(job_id)))


async def get_generation(request: web.Request, inputs: Inputs) -> web.Response:
    return web.json_response(job_view(await request.app[DB].get_job(inputs.path.id)))


def _resume_point(inputs: Inputs) -> int:
    header = inputs.headers.last_event_id if inputs.headers is not None else None
    return header if header is not None else inputs.query.last_event_id


async def generation_events(request: web.Request, inputs: Inputs) -> web.StreamResponse:
    """Server-Sent Events; resumable with ``Last-Event-ID`` (or ``?last_event_id=``); ``: heartbeat`` comments."""
    gens = _gens(request)
    job_id = inputs.path.id
    await gens.db.get_job(job_id)
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
    gens = _gens(request)
    job_id = inputs.path.id
    await gens.db.get_job(job_id)
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


async def generation_output(request: web.Request, inputs: Inputs) -> web.StreamResponse:
    job = await request.app[DB].get_job(inputs.path.id)
    outputs = job["result"].get("outputs") or []
    if not inputs.path.n < len(outputs):
        raise NotFound(f"generation {job['id']} has {len(outputs)} output(s)")
    return web.FileResponse(_gens(request).outputs_dir / job["id"] / outputs[inputs.path.n])


async def cancel_generation(request: web.Request, inputs: Inputs) -> web.Response:
    await _gens(request).cancel(inputs.path.id)
    return web.json_response(job_view(await request.app[DB].get_job(inputs.path.id)))


# -- trainings -----------------------------------------------------------------------------------


def _trainings(request: web.Request) -> Trainings:
    return request.app[TRAININGS]


def _started(job_id: str, entry: dict[str, Any]) -> web.Response:
    return web.json_response({"id": job_id, "status": "queued", "lora": lora_view(entry)}, status=202)


async def _training(request: web.Request, job_id: str) -> dict[str, Any]:
    job = await request.app[DB].get_job(job_id)
    if job["request"].get("kind") != TRAINING:
        raise NotFound(f"no training with id {job_id!r} (it is a generation)")
    return job


async def get_training(request: web.Request, inputs: Inputs) -> web.Response:
    return web.json_response(job_view(await _training(request, inputs.path.id)))


async def cancel_training(request: web.Request, inputs: Inputs) -> web.Response:
    await _training(request, inputs.path.id)
    return await cancel_generation(request, inputs)


async def create_training(request: web.Request, inputs: Inputs) -> web.Response:
    """A training whose dataset is given by URLs, S3 keys or an S3 prefix (fetched and checked first)."""
    trainings = _trainings(request)
    body: s.TrainingCreate = inputs.body
    family = trainings.check(body)  # before any dataset file is fetched
    dataset = await trainings.dataset_from_sources(body)
    return _started(*await trainings.start(body, family, dataset))


async def upload_training(request: web.Request, inputs: Inputs) -> web.Response:
    """Multipart: ``request`` (the TrainingCreate JSON) and ``dataset`` (the zip), checked whole before
    anything is stored."""
    if not request.content_type.startswith("multipart/"):
        raise RequestInvalid("body: send multipart/form-data with a 'request' part (JSON) and a 'dataset' part (zip)")
    limits = {"request": MAX_BODY, "dataset": DatasetLimits().max_bytes}
    parts: dict[str, bytes] = {}
    try:
        async for part in await request.multipart():
            if not isinstance(part, BodyPartReader) or part.name not in limits or part.name in parts:
                raise RequestInvalid(f"body: unexpected or repeated form part {getattr(part, 'name', None)!r}")
            data = bytearray()
            while chunk := await part.read_chunk(1 << 20):
                data += chunk
                if len(data) > limits[part.name]:
                    raise RequestInvalid(f"body: the {part.name} part is over {limits[part.name]} bytes")
            parts[part.name] = bytes(data)
    except (ValueError, RuntimeError, HttpProcessingError) as exc:  # what aiohttp raises for a malformed body
        raise RequestInvalid(f"body: malformed multipart/form-data ({exc})") from None
    for name in ("request", "dataset"):
        if name not in parts:
            raise RequestInvalid(f"body: multipart field {name!r} is required")
    fields = strict_json(parts["request"])
    if not isinstance(fields, dict):
        raise RequestInvalid("request: must be a JSON object")
    body: s.TrainingCreate = validate(s.TrainingCreate, fields, "request")
    if body.dataset_urls is not None or body.dataset_s3_prefix is not None:
        raise RequestInvalid("request: the dataset is the uploaded zip; leave out dataset_urls and dataset_s3_prefix")
    trainings = _trainings(request)
    family = trainings.check(body)
    dataset = await asyncio.get_running_loop().run_in_executor(None, trainings.dataset_from_zip, body, parts["dataset"])
    return _started(*await trainings.start(body, family, dataset))


# -- pods ----------------------------------------------------------------------------------------


def _pod(request: web.Request, index: int) -> PodStatus:
    pods = list(request.app[POOL].status.values())
    if index >= len(pods):
        raise NotFound(f"no pod {index}; pods are numbered 0..{len(pods) - 1}")
    return pods[index]


async def clear_pod_cache(request: web.Request, inputs: Inputs) -> web.Response:
    pod = _pod(request, inputs.path.id)
    return web.json_response({"pod": pod.config.name, **await request.app[POOL].clear_cache(pod, inputs.body)})


async def cache_stats(request: web.Request, inputs: Inputs) -> web.Response:
    """Disk and memory cache statistics of every pack pod, and their totals."""
    per_pod, sums = await request.app[POOL].cache_report()
    return web.json_response({"pods": per_pod, "total": sums["total"]})


async def list_pods(request: web.Request, inputs: Inputs) -> web.Response:
    pool: PodPool = request.app[POOL]
    return web.json_response({"pods": [p.summary() for p in await pool.refresh(force=True)]})


async def compatibility(request: web.Request, inputs: Inputs) -> web.Response:
    return web.json_response({"video_templates": VIDEO_TEMPLATES, "key_frame_templates": KEY_FRAME_TEMPLATES,
                              "matrix": matrix()})


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
    pool: PodPool = request.app[POOL]
    pods = []
    for pod in await pool.refresh():  # cache counters as the health check last read them (at most health_ttl old)
        pods.append({"pod": pod.config.name, "healthy": pod.healthy, "queue": pod.queue,
                     "fetch_failures": pod.fetch_failures, "cache": pod.cache_stats if pod.healthy and pod.pack else None})
    db = request.app[DB]
    page = render_metrics(db.replica, await db.job_counts(), _gens(request).metrics, pods)
    return web.Response(text=page, content_type="text/plain")


async def openapi(request: web.Request, inputs: Inputs) -> web.Response:
    return web.json_response(request.app[OPENAPI])


R = RouteSpec
ROUTES: list[tuple[RouteSpec, Handler]] = [
    (R("POST", "/v1/loras", "Register a LoRA (S3 key or URL; header inspected for what is left out)", body=s.LoraCreate,
       responses={201: "created", 422: "the source cannot be used"}), create_lora),
    (R("GET", "/v1/loras", "List LoRAs", query=s.LoraQuery), list_loras),
    (R("POST", "/v1/loras/upload", "Upload a .safetensors LoRA (multipart 'file' + fields) and register it",
       body=s.UploadForm, content_type="multipart/form-data",
       responses={201: "created", 413: "over the size limit", 422: "not a usable LoRA"}),
     upload_lora),
    (R("GET", "/v1/loras/{id}", "One LoRA", path_params=s.JobPath, responses={200: "LoRA", 404: "unknown"}), get_lora),
    (R("PATCH", "/v1/loras/{id}", "Update a LoRA", path_params=s.JobPath, body=s.LoraPatch,
       responses={200: "LoRA", 404: "unknown"}), patch_lora),
    (R("DELETE", "/v1/loras/{id}", "Delete a LoRA", path_params=s.JobPath, responses={204: "deleted", 404: "unknown"}),
     delete_lora),
    (R("GET", "/v1/loras/{id}/metadata", "The LoRA file's metadata", path_params=s.JobPath,
       responses={200: "metadata", 404: "unknown"}), lora_metadata),
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
    (R("POST", "/v1/trainings", "Train a LoRA on a pod from a dataset given by URLs, S3 keys or an S3 prefix: the registry "
       "entry is created in 'training' at once; events on /v1/generations/{id}/events (and /ws)", body=s.TrainingCreate,
       responses={202: "job id and LoRA entry", 400: "invalid request", 422: "refused dataset or template",
                  502: "a dataset file could not be fetched"}), create_training),
    (R("POST", "/v1/trainings/upload", "Train a LoRA from an uploaded zip (multipart 'request' JSON + 'dataset')",
       body=s.TrainingForm, content_type="multipart/form-data",
       responses={202: "job id and LoRA entry", 400: "invalid request", 422: "refused dataset or template"}), upload_training),
    (R("GET", "/v1/trainings/{id}", "Training job: state, LoRA, settings, loss, timings, cost, validation image",
       path_params=s.JobPath, responses={200: "job", 404: "unknown"}), get_training),
    (R("DELETE", "/v1/trainings/{id}", "Cancel a training (in any state; the LoRA entry fails as cancelled)",
       path_params=s.JobPath, responses={200: "job", 404: "unknown"}), cancel_training),
    (R("GET", "/v1/trainings/{id}/events", "Server-Sent Events of a training (the generations' stream)",
       path_params=s.JobPath, query=s.EventsQuery, headers=s.EventsHeaders,
       responses={200: "text/event-stream", 404: "unknown"}), generation_events),
    (R("GET", "/v1/trainings/{id}/ws", "WebSocket twin of a training's events", path_params=s.JobPath, query=s.EventsQuery,
       responses={101: "upgrade", 404: "unknown"}), generation_ws),
    (R("GET", "/v1/trainings/{id}/outputs/{n}", "A training's output n (the validation image)", path_params=s.OutputPath,
       responses={200: "file", 404: "unknown"}), generation_output),
    (R("GET", "/v1/compatibility", "How a character reaches a video: video model x LoRA family -> direct, preprocess "
       "(key frame + image-to-video) or not possible, with the templates used"), compatibility),
    (R("GET", "/v1/pods", "Pods: health, queue, mode, cache"), list_pods),
    (R("POST", "/v1/pods/{id}/cache/clear", "Clear a pod's memory and/or disk cache", path_params=s.PodPath,
       body=CacheClear, responses={200: "cleared", 404: "no such pod", 502: "the pod refused", 503: "pod unreachable"}),
     clear_pod_cache),
    (R("GET", "/v1/cache/stats", "Cache statistics across pods"), cache_stats),
    (R("GET", "/healthz", "Liveness and database reachability", auth=False,
       responses={200: "ok", 503: "the database cannot be reached"}), healthz),
    (R("GET", "/metrics", "Prometheus text", auth=False), metrics),
    (R("GET", "/openapi.json", "This document", auth=False), openapi),
]


ROUTES += compat.ROUTES
OPEN_PATHS = frozenset(spec.path for spec, _ in ROUTES if not spec.auth)  # authenticated otherwise (a signed webhook)


class AccessLog(AbstractAccessLogger):
    """One line per request without its query string (a key or a signature sent there never reaches a log)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info('%s "%s %s" %s %.3fs', request.remote, request.method, request.path, response.status, time)


def _bind(spec: RouteSpec, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def route(request: web.Request) -> web.StreamResponse:
        return await handler(request, await parse(request, spec))

    return route


def create_app(db: Database, pool: PodPool, outputs_dir: Path, settings: Settings, policy: FetchPolicy,
               uploads: LoraUploads) -> web.Application:
    """The service; ``on_startup`` claims and resumes unfinished jobs, ``on_shutdown`` detaches from running
    ones and lets go of their leases (``replicas.py``)."""
    app = web.Application(middlewares=[errors_and_auth], client_max_size=MAX_BODY)
    app[DB] = adb = AsyncDatabase(db)
    app[POOL], app[SETTINGS], app[POLICY], app[UPLOADS] = pool, settings, policy, uploads
    # registered sources obey the pods' policy; the service's own folders (uploads, a local brand store) are allowed roots
    own = (uploads.local_dir, *(() if settings.brand_store is None or "://" in settings.brand_store
                                else (Path(settings.brand_store),)))
    app[REGISTRY_POLICY] = dataclasses.replace(policy, local_roots=(*policy.local_roots, *own))
    store = BrandStore(settings.brand_store, adb, app[REGISTRY_POLICY]) if settings.brand_store else None
    app[BRAND_STORE] = store
    app[compat.PRELOADED] = {}
    app[GENERATIONS] = gens = Generations(adb, pool, outputs_dir, settings, policy)
    gens.discover_brand = store.discover if store else None
    app[TRAININGS] = trainings = Trainings(gens, uploads)
    app[OPENAPI] = openapi_document("comfyui-lora-bridge", VERSION, [spec for spec, _ in ROUTES])

    async def resume(jobs: list[dict[str, Any]]) -> None:
        await gens.resume(jobs)
        await trainings.resume(jobs)

    app[REPLICA] = replica = Replica(adb, resume, gens.let_go, lambda: set(gens.tasks), gens.signal)

    async def on_startup(app: web.Application) -> None:
        await replica.start()
        await compat.start_preload(app)

    async def on_shutdown(app: web.Application) -> None:
        await compat.stop_preload(app)
        await gens.detach_all()
        await replica.stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    for spec, handler in ROUTES:
        app.router.add_route(spec.method, spec.path, _bind(spec, handler))
    return app
