"""The Comfy API v2 front door (``/api/v2``): the contract Comfy Cloud, serverless deployments and
``comfy-api-proxy`` serve and the official ``comfy-sdk`` calls, over the same job core as ``/v1``.

A v2 job is a generation job (durable, on any replica, routed, retried, cancellable, counted in
``/metrics``) whose workflow may name assets where files go; outputs are assets too. Bearer auth
with the service's API keys; ``/api/v2/health`` and signed content URLs are open. Errors use the
v2 envelope (``envelope.py``).
"""

from __future__ import annotations

import hmac
from typing import Awaitable, Callable

from aiohttp import web

from ...errors import Unauthorized
from ...jobs.idempotency import IdempotencyKeys
from ...openapi import RouteSpec
from ..routing import DB, GENERATIONS, POOL, SETTINGS, Handler, Inputs
from . import assets, jobs
from . import schemas as s
from .envelope import answer
from .views import PREFIX, ContentLinks

LINKS, KEYS = jobs.LINKS, jobs.KEYS


async def health(request: web.Request, inputs: Inputs) -> web.Response:
    """The bridge and its database answer; how many pods are ready."""
    await request.app[DB].ping()
    pods = list(request.app[POOL].status.values())
    ready = sum(p.healthy for p in pods)
    return web.json_response({"status": "healthy" if ready else "degraded", "pods": {"ready": ready, "total": len(pods)}})


R = RouteSpec
J = {201: "Job", 422: "invalid_workflow, workflow_format_ui, missing_asset, idempotency_key_reuse",
     409: "idempotency_conflict", 429: "queue_full (Retry-After)"}
ROUTES: list[tuple[RouteSpec, Handler]] = [
    (R("GET", f"{PREFIX}/health", "Comfy API v2: the service answers; pods ready", auth=False), health),
    (R("POST", f"{PREFIX}/jobs", "Comfy API v2: submit an API-format workflow (core/ASSET references where files go; "
       "Idempotency-Key replays)", body=s.JobCreate, headers=s.IdempotencyHeaders, responses=J), jobs.submit),
    (R("GET", f"{PREFIX}/jobs", "Comfy API v2: jobs, newest first (limit, status, cursor, metadata[key]=value)",
       query=s.JobListQuery), jobs.list_jobs),
    (R("GET", f"{PREFIX}/jobs/{{id}}", "Comfy API v2: a job (status, progress, outputs, error, urls)",
       path_params=s.JobPath, responses={200: "Job", 404: "not_found"}), jobs.get_job),
    (R("POST", f"{PREFIX}/jobs/{{id}}/cancel", "Comfy API v2: cancel (idempotent)", path_params=s.JobPath,
       responses={200: "Job", 404: "not_found"}), jobs.cancel_job),
    (R("GET", f"{PREFIX}/jobs/{{id}}/events", "Comfy API v2: live events (SSE: status, progress, output, log)",
       path_params=s.JobPath, responses={200: "text/event-stream", 404: "not_found"}), jobs.job_events),
    (R("POST", f"{PREFIX}/assets", "Comfy API v2: upload an asset (a LoRA is inspected and registered)",
       body=s.AssetForm, content_type="multipart/form-data",
       responses={201: "Asset (new bytes)", 200: "Asset (bytes the bridge had)", 409: "hash_mismatch", 413: "too_large",
                  422: "invalid_asset"}), assets.upload),
    (R("POST", f"{PREFIX}/assets/from-hash", "Comfy API v2: mint an asset over bytes the bridge has (an asset's or a "
       "registry LoRA's)", body=s.FromHash, responses={201: "Asset", 200: "Asset (identical)", 404: "blob_not_found"}),
     assets.from_hash),
    (R("HEAD", f"{PREFIX}/assets/by-hash/{{hash}}", "Comfy API v2: whether the bridge has bytes with this hash",
       path_params=s.HashPath, responses={200: "present", 404: "absent"}), assets.head_by_hash),
    (R("GET", f"{PREFIX}/assets/{{id}}", "Comfy API v2: asset metadata with a fresh content URL", path_params=s.AssetPath,
       responses={200: "Asset", 404: "not_found"}), assets.get_asset),
    (R("GET", f"{PREFIX}/assets/{{id}}/content", "Comfy API v2: the bytes (Range; a signed URL needs no key; S3 by "
       "redirect)", path_params=s.AssetPath, query=s.ContentQuery,
       responses={200: "bytes", 206: "a range", 302: "presigned S3 URL", 404: "not_found", 416: "range"}), assets.content),
]
OPEN = frozenset(spec.path for spec, _ in ROUTES if not spec.auth)


def setup(app: web.Application) -> None:
    """The door's parts: signed content links and the idempotency keys."""
    app[LINKS] = ContentLinks(app[SETTINGS].api_keys)
    app[KEYS] = IdempotencyKeys(app[GENERATIONS].db)


def _signed(request: web.Request) -> bool:
    """A content URL whose signature is valid and unexpired (it opens the bytes without the key)."""
    parts = request.path.split("/")
    try:
        expires, signature = int(request.query["expires"]), request.query["signature"]
    except (KeyError, ValueError):
        return False
    return len(parts) == 6 and parts[5] == "content" and request.app[LINKS].valid(parts[4], expires, signature)


async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Auth and errors of the door: ``Authorization: Bearer <key>`` when keys are configured (but on open
    routes and signed content URLs), every failure in the v2 envelope."""
    try:
        keys: tuple[str, ...] = request.app[SETTINGS].api_keys
        if keys and request.path not in OPEN and not _signed(request):
            given = request.headers.get("Authorization", "").encode()
            if not any(hmac.compare_digest(given, f"Bearer {k}".encode()) for k in keys):
                raise Unauthorized("missing or wrong API key (Authorization: Bearer <key>)")
        return await handler(request)
    except ConnectionResetError:  # the client hung up mid-answer: nothing to answer
        return web.Response(status=499)
    except Exception as exc:
        return answer(exc)
