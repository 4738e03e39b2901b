"""What every route of the service shares: the application's keys, and the parsing of a
request's inputs against its ``RouteSpec`` (done once, before any handler runs)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ..errors import RequestInvalid
from ..lorafiles.sources import FetchPolicy
from ..openapi import RouteSpec
from ..pack_protocol import describe_validation_error, strict_json, validate_json
from ..pods.pool import PodPool
from ..settings import Settings
from .brand_store import BrandStore
from .database import AsyncDatabase
from .job_states import is_terminal
from .jobs import Generations
from .replicas import Replica
from .trainings import Trainings
from .uploads import LoraUploads

log = logging.getLogger("lora_bridge.service")

DB = web.AppKey("db", AsyncDatabase)
POOL = web.AppKey("pool", PodPool)
SETTINGS = web.AppKey("settings", Settings)
POLICY = web.AppKey("policy", FetchPolicy)
REGISTRY_POLICY = web.AppKey("registry_policy", FetchPolicy)
UPLOADS = web.AppKey("uploads", LoraUploads)
GENERATIONS = web.AppKey("generations", Generations)
TRAININGS = web.AppKey("trainings", Trainings)
REPLICA = web.AppKey("replica", Replica)
OPENAPI = web.AppKey("openapi", dict)
BRAND_STORE: web.AppKey[BrandStore | None] = web.AppKey("brand_store")


@dataclass
class Inputs:
    """A request's inputs, parsed: ``body``, ``query``, ``path`` and ``headers`` models (or None)."""

    body: Any = None
    query: Any = None
    path: Any = None
    headers: Any = None


Handler = Callable[[web.Request, Inputs], Awaitable[web.StreamResponse]]


def validate(model: type[BaseModel], data: Any, where: str) -> Any:
    """``data`` as ``model``, or ``RequestInvalid`` naming each field at fault under ``where``. A JSON body
    keeps JSON's types (``validate_json``); path, query and header values are text by nature and are
    converted (``?n=3``)."""
    try:
        return validate_json(model, data) if where == "body" else model.model_validate(data)
    except ValidationError as exc:
        raise RequestInvalid(describe_validation_error(exc, where)) from None


async def parse(request: web.Request, spec: RouteSpec) -> Inputs:
    """Parse every input of ``request`` against ``spec``'s models (``RequestInvalid`` names the field)."""
    inputs = Inputs()
    if spec.path_params is not None:
        inputs.path = validate(spec.path_params, dict(request.match_info), "path")
    if spec.query is not None:
        inputs.query = validate(spec.query, dict(request.query), "query")
    elif request.query:
        raise RequestInvalid(f"query: unknown parameter(s) {sorted(request.query)}")
    if spec.headers is not None:
        inputs.headers = validate(spec.headers, dict(request.headers), "header")
    if spec.body is not None and spec.content_type == "application/json":
        raw = await request.read()
        data = strict_json(raw) if raw.strip() else {}
        if not isinstance(data, dict):
            raise RequestInvalid("body: must be a JSON object")
        inputs.body = validate(spec.body, data, "body")
    return inputs


async def job_events(request: web.Request, job_id: str, last: int, heartbeat: float,
                     send: Callable[[int, str, dict[str, Any]], Awaitable[None]],
                     beat: Callable[[], Awaitable[None]]) -> None:
    """Send the job's events after ``last`` until it has ended, and a heartbeat after ``heartbeat`` seconds
    without one. Woken by this replica's runners and, on PostgreSQL, by other replicas' (polled every
    second where no notifications come: SQLite, or PostgreSQL's listener down). A client that hangs up
    ends the stream quietly: that is how streams end, not a fault."""
    gens, replica = request.app[GENERATIONS], request.app[REPLICA]
    loop = asyncio.get_running_loop()
    sent = loop.time()
    try:
        while True:
            change = gens.watch(job_id)
            for seq, type, data in await gens.db.events(job_id, last):
                await send(seq, type, data)
                last, sent = seq, loop.time()
            if is_terminal(await gens.db.job_status(job_id)) and not await gens.db.events(job_id, last) or gens.stopping:
                return
            poll = heartbeat if replica.listening else min(heartbeat, 1.0)
            if not await gens.wait_change(change, min(poll, max(sent + heartbeat - loop.time(), 0.0))) \
                    and loop.time() - sent >= heartbeat:
                await beat()
                sent = loop.time()
    except ConnectionResetError:
        log.debug("events of %s: the client hung up", job_id)
