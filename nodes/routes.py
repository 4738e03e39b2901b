"""HTTP routes for the bridge, under ``/lora_bridge/`` on the pod's ComfyUI server.

``GET /lora_bridge/cache``, ``POST /lora_bridge/cache/clear``, ``POST /lora_bridge/prefetch``,
``GET /lora_bridge/loras``. When ``LORA_BRIDGE_TOKEN`` is set, every route needs
``Authorization: Bearer <token>`` (compared in constant time).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from ..bridge.errors import LoraBridgeError
from ..bridge.lorafiles.fetch import FetchError, IntegrityError
from ..bridge.lorafiles.inspect import inspect_file
from .lora_loading import load_into_memory
from .pod_state import disk_store, fetch_handle, memory_cache

Handler = Callable[[web.Request], Awaitable[web.Response]]
_summaries: dict[tuple[str, int, int], dict[str, Any]] = {}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _authorized(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.Response:
        token = os.environ.get("LORA_BRIDGE_TOKEN")
        if token:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return _error(401, "missing or wrong bearer token")
        return await handler(request)

    return wrapped


def _disk_report() -> dict[str, Any]:
    store = disk_store()
    stats = store.stats()
    entries = [{"sha256": e.sha256, "size": e.size, "names": e.names, "source": e.source, "pinned": e.pinned,
                "in_use": e.in_use, "last_used": e.last_used} for e in store.entries()]
    return {**stats.to_dict(), "items": entries}


async def get_cache(request: web.Request) -> web.Response:
    report = await asyncio.get_running_loop().run_in_executor(None, _disk_report)
    memory = memory_cache()
    return web.json_response({"disk": report, "memory": {**memory.stats().to_dict(), "items": memory.entries()}})


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length and request.content_length > 64 * 1024:
        raise web.HTTPRequestEntityTooLarge(max_size=64 * 1024, actual_size=request.content_length)
    try:
        body = await request.json() if request.can_read_body else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body


async def clear_cache(request: web.Request) -> web.Response:
    try:
        body = await _json_body(request)
    except ValueError as exc:
        return _error(400, str(exc))
    cleared: dict[str, Any] = {}
    if body.get("memory", True):
        cleared["memory"] = memory_cache().clear()
    if body.get("disk", False):
        cleared["disk"] = len(await asyncio.get_running_loop().run_in_executor(None, disk_store().evict))
    return web.json_response({"cleared": cleared})


async def prefetch(request: web.Request) -> web.Response:
    """Download into the disk cache (and optionally memory) ahead of a job; progress over the WebSocket."""
    try:
        body = await _json_body(request)
        source = body.get("source")
        if not isinstance(source, str) or not source.strip():
            raise ValueError("'source' is required")
        sha256, name = body.get("sha256") or None, body.get("name") or None
    except ValueError as exc:
        return _error(400, str(exc))
    from server import PromptServer

    client_id = body.get("client_id")

    def progress(done: int, total: int) -> None:
        PromptServer.instance.send_sync("lora_bridge.prefetch", {"source": source if "://" not in source else None,
                                                                 "sha256": sha256, "done": done, "total": total}, client_id)

    def work() -> dict[str, Any]:
        handle = fetch_handle(source.strip(), sha256, name, progress)
        in_memory = False
        if body.get("memory"):
            load_into_memory(handle)
            in_memory = True
        return {"sha256": handle.sha256, "name": handle.name, "size": handle.path.stat().st_size,
                "family": handle.family, "trigger_words": handle.trigger_words, "in_memory": in_memory}

    try:
        result = await asyncio.get_running_loop().run_in_executor(None, work)
    except IntegrityError as exc:  # not the bytes the caller said (hash, size, header)
        return _error(422, str(exc))
    except FetchError as exc:  # the download failed for good
        return _error(502, str(exc))
    except LoraBridgeError as exc:  # refused, invalid, not found
        return _error(400, str(exc))
    return web.json_response(result)


def _list_loras() -> list[dict[str, Any]]:
    import folder_paths

    out = []
    for name in folder_paths.get_filename_list("loras"):
        path = Path(folder_paths.get_full_path("loras", name) or "")
        try:
            st = path.stat()
        except OSError:
            continue
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in _summaries:
            try:
                info = inspect_file(path, with_hash=False).to_dict() if path.suffix == ".safetensors" else {}
                info.pop("metadata", None)
                _summaries[key] = info
            except LoraBridgeError as exc:
                _summaries[key] = {"error": str(exc)}
        out.append({"name": name, "size": st.st_size, **_summaries[key]})
    return out


async def list_loras(request: web.Request) -> web.Response:
    return web.json_response({"loras": await asyncio.get_running_loop().run_in_executor(None, _list_loras)})


def register_routes() -> None:
    """Add the routes to ComfyUI's server (called at node-pack import inside ComfyUI)."""
    from server import PromptServer

    routes = PromptServer.instance.routes
    routes.get("/lora_bridge/cache")(_authorized(get_cache))
    routes.post("/lora_bridge/cache/clear")(_authorized(clear_cache))
    routes.post("/lora_bridge/prefetch")(_authorized(prefetch))
    routes.get("/lora_bridge/loras")(_authorized(list_loras))
