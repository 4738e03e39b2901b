"""The pod routes: the fleet (pods joining, renewing, draining), their caches, and which character paths the
templates offer."""

from __future__ import annotations

from aiohttp import web

from ..errors import NotFound
from ..jobs.character_paths import KEY_FRAME_TEMPLATES, VIDEO_TEMPLATES, matrix
from ..openapi import RouteSpec
from ..pack_protocol import POD_ANNOUNCE, POD_HEARTBEAT, POD_PATH, CacheClear, PodAnnouncement
from ..pods.pool import PodStatus
from . import schemas as s
from .routing import FLEET, POOL, Handler, Inputs


def _pod(request: web.Request, id: str) -> PodStatus:
    pods = list(request.app[POOL].status.values())
    pod = request.app[POOL].by_id(id) if not id.isdigit() else pods[int(id)] if int(id) < len(pods) else None
    if pod is None:
        raise NotFound(f"no pod {id!r} (GET /v1/pods lists them)")
    return pod


async def clear_pod_cache(request: web.Request, inputs: Inputs) -> web.Response:
    pod = _pod(request, inputs.path.id)
    return web.json_response({"pod": pod.config.name, **await request.app[POOL].clear_cache(pod, inputs.body)})


async def cache_stats(request: web.Request, inputs: Inputs) -> web.Response:
    """Disk and memory cache statistics of every pack pod, and their totals."""
    per_pod, sums = await request.app[POOL].cache_report()
    return web.json_response({"pods": per_pod, "total": sums["total"]})


async def list_pods(request: web.Request, inputs: Inputs) -> web.Response:
    fleet = request.app[FLEET]
    records = await fleet.sync()
    await request.app[POOL].refresh(force=True)
    return web.json_response({"pods": [fleet.view(r) for r in records]})


async def add_pod(request: web.Request, inputs: Inputs) -> web.Response:
    fleet = request.app[FLEET]
    record = await fleet.add(inputs.body, "api")
    await request.app[POOL].refresh()
    return web.json_response(fleet.view(record), status=201)


async def announce(request: web.Request, inputs: Inputs) -> web.Response:
    fleet = request.app[FLEET]
    record = await fleet.add(inputs.body, "announced")
    return web.json_response({"id": record.id, "heartbeat_s": record.heartbeat_s})


async def heartbeat(request: web.Request, inputs: Inputs) -> web.Response:
    record = await request.app[FLEET].heartbeat(inputs.path.id)
    return web.json_response({"id": record.id, "draining": record.draining})


async def remove_pod(request: web.Request, inputs: Inputs) -> web.Response:
    fleet = request.app[FLEET]
    record = await fleet.drain(inputs.path.id if not inputs.path.id.isdigit() else _pod(request, inputs.path.id).config.id)
    return web.json_response(fleet.view(record), status=202)


async def compatibility(request: web.Request, inputs: Inputs) -> web.Response:
    return web.json_response({"video_templates": VIDEO_TEMPLATES, "key_frame_templates": KEY_FRAME_TEMPLATES,
                              "matrix": matrix()})


R = RouteSpec
ROUTES: list[tuple[RouteSpec, Handler]] = [
    (R("GET", "/v1/compatibility", "How a character reaches a video: video model x LoRA family -> direct, preprocess "
       "(key frame + image-to-video) or not possible, with the templates used"), compatibility),
    (R("GET", "/v1/pods", "The fleet: each pod's id, state (ready, busy, draining, lost), origin, labels, queue, "
       "mode, cache"), list_pods),
    (R("POST", "/v1/pods", "Add a pod at run time (every replica routes to it); a pod that is there already is "
       "updated and no longer drains", body=PodAnnouncement,
       responses={201: "added", 400: "invalid body, or token_ref names no variable on the bridge"}), add_pod),
    (R("POST", POD_ANNOUNCE, "A pod announces itself (its node pack, with LORA_BRIDGE_REGISTRATION_TOKEN); it "
       "renews with heartbeats", body=PodAnnouncement, fleet=True, responses={200: "joined", 400: "invalid body",
                                                                              401: "wrong token"}), announce),
    (R("POST", POD_HEARTBEAT, "A pod renews its membership; three missed heartbeats make it lost",
       path_params=s.PodPath, fleet=True, responses={200: "renewed", 404: "unknown pod: announce again"}), heartbeat),
    (R("DELETE", POD_PATH, "Drain a pod: no new jobs, those waiting in its queue move to other pods, the running "
       "one finishes; removed once idle", path_params=s.PodPath, fleet=True,
       responses={202: "draining", 404: "no such pod"}), remove_pod),
    (R("POST", "/v1/pods/{id}/cache/clear", "Clear a pod's memory and/or disk cache", path_params=s.PodPath,
       body=CacheClear, responses={200: "cleared", 404: "no such pod", 502: "the pod refused", 503: "pod unreachable"}),
     clear_pod_cache),
    (R("GET", "/v1/cache/stats", "Cache statistics across pods"), cache_stats),
]
