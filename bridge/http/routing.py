"""What every route of the front doors shares: the application's keys (the job core's parts), and
the parsing of a request's inputs against its ``RouteSpec`` (done once, before any handler runs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ..errors import RequestInvalid
from ..jobs.brand_store import BrandStore
from ..jobs.database import AsyncDatabase
from ..jobs.fleet import Fleet
from ..jobs.registry import Registry
from ..jobs.runner import Generations
from ..jobs.trainings import Trainings
from ..jobs.uploads import LoraUploads
from ..lorafiles.sources import FetchPolicy
from ..openapi import RouteSpec
from ..pack_protocol import describe_validation_error, strict_json, validate_json
from ..pods.pool import PodPool
from ..settings import Settings

DB = web.AppKey("db", AsyncDatabase)
POOL = web.AppKey("pool", PodPool)
FLEET = web.AppKey("fleet", Fleet)
SETTINGS = web.AppKey("settings", Settings)
POLICY = web.AppKey("policy", FetchPolicy)
REGISTRY = web.AppKey("registry", Registry)
UPLOADS = web.AppKey("uploads", LoraUploads)
GENERATIONS = web.AppKey("generations", Generations)
TRAININGS = web.AppKey("trainings", Trainings)
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
