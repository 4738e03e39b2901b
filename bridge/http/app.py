"""The bridge's HTTP front doors over the job core (aiohttp): the ``/v1`` API and the seed-compatible routes.

Each route is declared once, in its module's ``ROUTES``, with the models of its inputs
(``schemas.py``): the request is parsed into those models before the handler runs, and
``/openapi.json`` is generated from the same declarations. Errors have one shape,
``{"error": {"type", "message"}}``, chosen by the table in ``errors.py``. With API keys configured
(``LORA_BRIDGE_API_KEYS``) every ``/v1`` and ``/compat`` route needs ``Authorization: Bearer <key>``,
but those declared ``auth=False`` (health, metrics, the signed trainer webhook). The Comfy API v2
door (``/api/v2``, ``comfy_v2/``) has its own auth rules and error envelope.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
from pathlib import Path
from typing import Awaitable, Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .. import console
from ..jobs.brand_store import BrandStore
from ..jobs.database import AsyncDatabase, Database
from ..jobs.fleet import Fleet
from ..jobs.records import JobRecord
from ..jobs.registry import Registry
from ..jobs.replicas import Replica
from ..jobs.runner import Generations
from ..jobs.trainings import Trainings
from ..jobs.uploads import LoraUploads
from ..lorafiles.sources import FetchPolicy
from ..openapi import RouteSpec, openapi_document
from ..pods.pool import PodPool
from ..settings import Settings
from . import comfy_v2, compat, generations, loras, operations, pods, presets, trainings
from .errors import answer, error_response
from .routing import (
    BRAND_STORE,
    DB,
    FLEET,
    GENERATIONS,
    OPENAPI,
    POLICY,
    POOL,
    REGISTRY,
    SETTINGS,
    TRAININGS,
    UPLOADS,
    Handler,
    parse,
)

log = logging.getLogger("lora_bridge.service")
MAX_BODY = 1024 * 1024
VERSION = "0.2.0"
ROUTES: list[tuple[RouteSpec, Handler]] = [*loras.ROUTES, *presets.ROUTES, *generations.ROUTES, *trainings.ROUTES, *pods.ROUTES,
                                           *operations.ROUTES, *compat.ROUTES, *comfy_v2.ROUTES]
OPEN_PATHS = frozenset(spec.path for spec, _ in ROUTES if not spec.auth)  # authenticated otherwise (a signed webhook)
FLEET_ROUTES = frozenset((spec.method, spec.path) for spec, _ in ROUTES if spec.fleet)  # pods call them too


def _credentials(request: web.Request) -> tuple[str, ...]:
    """The bearer tokens a route accepts: the API keys, and the registration token on the routes pods call."""
    settings: Settings = request.app[SETTINGS]
    resource = request.match_info.route.resource
    template = resource.canonical if resource is not None else request.path
    fleet = (request.method, template) in FLEET_ROUTES and settings.registration_token
    return (*settings.api_keys, *((settings.registration_token,) if fleet else ()))


@web.middleware
async def errors_and_auth(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    if request.path.startswith(comfy_v2.PREFIX + "/"):
        return await comfy_v2.guard(request, handler)  # the Comfy API v2 door: its own envelope
    keys = _credentials(request)
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
    """The service; ``on_startup`` joins the pods ``pool`` was made with to the shared fleet (``fleet.py``), then
    claims and resumes unfinished jobs; ``on_shutdown`` detaches from running ones and lets go of their leases
    (``replicas.py``)."""
    app = web.Application(middlewares=[errors_and_auth], client_max_size=MAX_BODY)
    app[DB] = adb = AsyncDatabase(db)
    app[POOL], app[SETTINGS], app[POLICY], app[UPLOADS] = pool, settings, policy, uploads
    configured = [p.config for p in pool.status.values()]  # the pods given at start join the shared fleet
    app[FLEET] = fleet = Fleet(adb, pool, settings)
    # registered sources obey the pods' policy; the service's own folders (uploads, a local brand store) are allowed roots
    own = (uploads.local_dir, *(() if settings.brand_store is None or "://" in settings.brand_store
                                else (Path(settings.brand_store),)))
    registry_policy = dataclasses.replace(policy, local_roots=(*policy.local_roots, *own))
    app[REGISTRY] = Registry(adb, policy, registry_policy, uploads)
    store = BrandStore(settings.brand_store, adb, registry_policy) if settings.brand_store else None
    app[BRAND_STORE] = store
    app[compat.PRELOADED] = {}
    app[GENERATIONS] = gens = Generations(adb, pool, outputs_dir, settings, policy)
    gens.planner.discover_brand = store.discover if store else None
    app[TRAININGS] = training_runs = Trainings(gens, uploads)
    comfy_v2.setup(app)
    console.setup(app, settings)
    app[OPENAPI] = openapi_document("comfyui-lora-bridge", VERSION, [spec for spec, _ in ROUTES])

    async def resume(jobs: list[JobRecord]) -> None:
        await gens.resume(jobs)
        await training_runs.resume(jobs)

    replica = Replica(adb, gens.hub, resume, gens.let_go, lambda: set(gens.tasks))

    async def on_startup(app: web.Application) -> None:
        await fleet.start(configured)
        await replica.start()
        await compat.start_preload(app)

    async def on_shutdown(app: web.Application) -> None:
        await compat.stop_preload(app)
        await gens.detach_all()
        await replica.stop()
        await fleet.stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    for spec, handler in ROUTES:
        app.router.add_route(spec.method, spec.path, _bind(spec, handler))
    return app
