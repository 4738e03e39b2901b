"""The console's pods: health, queue, draining state, what each holds in its memory and disk caches, and a
button that clears a cache (``POST /v1/pods/{id}/cache/clear``'s call)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import LoraBridgeError, NotFound, RequestInvalid
from ..http.routing import DB, FLEET, POOL, validate
from ..http.schemas import PodPath
from ..pack_protocol import CacheClear
from .library import problem
from .render import render


async def _pods(request: web.Request) -> list[dict[str, Any]]:
    fleet, pool = request.app[FLEET], request.app[POOL]
    records = await fleet.sync()
    await pool.refresh(force=True)
    pods = []
    for record in records:
        status, contents, unreadable = pool.by_id(record.id), None, None
        if status is not None and status.healthy and status.pack:
            try:
                contents = await pool.cache_contents(status)
            except LoraBridgeError as exc:
                unreadable = str(exc)
        pods.append({"view": fleet.view(record), "contents": contents, "unreadable": unreadable})
    return pods


async def _page(request: web.Request, template: str) -> web.Response:
    """``template`` with every pod, and the registry LoRA of each cached file (by SHA-256) where there is one."""
    known = {rec.sha256: rec for rec in await request.app[DB].list_loras() if rec.sha256}
    return render(template, pods=await _pods(request), known=known)


async def pods(request: web.Request) -> web.Response:
    """Every pod of the fleet with its caches (the list alone for htmx, which refreshes it)."""
    return await _page(request, "_pod_list.html" if request.headers.get("HX-Request") else "pods.html")


async def clear(request: web.Request) -> web.Response:
    """Clear a pod's memory cache (``what=memory``) or its unused disk files (``what=disk``); the list again."""
    pod_id = validate(PodPath, dict(request.match_info), "path").id
    what = (await request.post()).get("what")
    status = request.app[POOL].by_id(pod_id)
    try:
        if status is None:
            raise NotFound(f"no pod {pod_id!r} in this replica's fleet")
        if what not in ("memory", "disk"):
            raise RequestInvalid(f"form: what must be memory or disk, not {what!r}")
        await request.app[POOL].clear_cache(status, CacheClear(memory=what == "memory", disk=what == "disk"))
    except LoraBridgeError as exc:
        return problem(exc)
    return await _page(request, "_pod_list.html")


def routes() -> list[tuple[str, str, Any]]:
    return [("GET", "/pods", pods), ("POST", "/pods/{id}/cache/clear", clear)]
