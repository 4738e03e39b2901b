"""The pod routes: the pool's pods, their caches, and which character paths the templates offer."""

from __future__ import annotations

from aiohttp import web

from ..errors import NotFound
from ..jobs.character_paths import KEY_FRAME_TEMPLATES, VIDEO_TEMPLATES, matrix
from ..openapi import RouteSpec
from ..pack_protocol import CacheClear
from ..pods.pool import PodStatus
from . import schemas as s
from .routing import POOL, Handler, Inputs


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
    return web.json_response({"pods": [p.summary() for p in await request.app[POOL].refresh(force=True)]})


async def compatibility(request: web.Request, inputs: Inputs) -> web.Response:
    return web.json_response({"video_templates": VIDEO_TEMPLATES, "key_frame_templates": KEY_FRAME_TEMPLATES,
                              "matrix": matrix()})


R = RouteSpec
ROUTES: list[tuple[RouteSpec, Handler]] = [
    (R("GET", "/v1/compatibility", "How a character reaches a video: video model x LoRA family -> direct, preprocess "
       "(key frame + image-to-video) or not possible, with the templates used"), compatibility),
    (R("GET", "/v1/pods", "Pods: health, queue, mode, cache"), list_pods),
    (R("POST", "/v1/pods/{id}/cache/clear", "Clear a pod's memory and/or disk cache", path_params=s.PodPath,
       body=CacheClear, responses={200: "cleared", 404: "no such pod", 502: "the pod refused", 503: "pod unreachable"}),
     clear_pod_cache),
    (R("GET", "/v1/cache/stats", "Cache statistics across pods"), cache_stats),
]
