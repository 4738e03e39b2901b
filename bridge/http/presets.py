"""The ``/v1/presets`` routes: LoRA stacks saved in the registry under a name, for ``preset`` in a request."""

from __future__ import annotations

from aiohttp import web

from ..openapi import RouteSpec
from . import schemas as s
from .routing import GENERATIONS, Handler, Inputs


async def put_preset(request: web.Request, inputs: Inputs) -> web.Response:
    saved = await request.app[GENERATIONS].presets.put(inputs.path.name, inputs.body.loras, inputs.body.description)
    return web.json_response(saved.view())


async def list_presets(request: web.Request, inputs: Inputs) -> web.Response:
    return web.json_response({"presets": [p.view() for p in await request.app[GENERATIONS].presets.all()]})


async def get_preset(request: web.Request, inputs: Inputs) -> web.Response:
    return web.json_response((await request.app[GENERATIONS].presets.get(inputs.path.name)).view())


async def delete_preset(request: web.Request, inputs: Inputs) -> web.Response:
    await request.app[GENERATIONS].presets.delete(inputs.path.name)
    return web.Response(status=204)


R = RouteSpec
ROUTES: list[tuple[RouteSpec, Handler]] = [
    (R("GET", "/v1/presets", "LoRA stack presets (a request's loras saved under a name)"), list_presets),
    (R("PUT", "/v1/presets/{name}", "Save a LoRA stack under a name (replaces one of that name); a generation request "
       "applies it with 'preset'", path_params=s.PresetPath, body=s.PresetPut, responses={200: "saved"}), put_preset),
    (R("GET", "/v1/presets/{name}", "One preset", path_params=s.PresetPath, responses={200: "preset", 404: "unknown"}),
     get_preset),
    (R("DELETE", "/v1/presets/{name}", "Remove a preset", path_params=s.PresetPath,
       responses={204: "removed", 404: "unknown"}), delete_preset),
]
