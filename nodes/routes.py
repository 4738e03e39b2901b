"""HTTP routes for the bridge, under ``/lora_bridge/`` on the pod's ComfyUI server.

Paths and payloads come from ``bridge/pack_protocol.py``; every body is parsed by its model
before anything reaches ComfyUI's server, and errors have the service's shape
``{"error": {"type", "message"}}``. When ``LORA_BRIDGE_TOKEN`` is set, every route needs
``Authorization: Bearer <token>`` (compared in constant time).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import threading
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from ..bridge import pack_protocol as protocol
from ..bridge.errors import FetchCancelled, FetchError, IntegrityError, LoraBridgeError, TooLarge
from ..bridge.lorafiles.families import made_for_another
from ..bridge.lorafiles.header import InvalidLoraFile
from ..bridge.lorafiles.inspect import inspect_file
from ..bridge.lorafiles.sources import redact_url
from ..bridge.lorafiles.validate import LoraNotFound, LoraValidationError, resolve_name
from ..bridge.openapi import RouteSpec, openapi_document
from ..bridge.settings import settings
from . import stack_presets
from .lora_loading import load_into_memory
from .model_files import ModelFileNotFound, describe_model_file
from .pod_membership import membership, tasks_remaining
from .pod_state import disk_store, fetch_handle, memory_cache, per_file_version

log = logging.getLogger("lora_bridge")
Handler = Callable[[web.Request], Awaitable[web.Response]]
MAX_BODY = 64 * 1024
_summaries: dict[tuple[str, int, int], dict[str, Any]] = {}
_details: dict[tuple[str, int, int], dict[str, Any]] = {}


class Downloads:
    """Prefetches under way: progress and retries for ``GET``, a stop flag per download for ``cancel``
    (a job's several LoRAs share its request id)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[int, dict[str, Any]] = {}
        self._next = 0

    def start(self, request_id: str | None, source: str) -> tuple[int, threading.Event]:
        stop = threading.Event()
        with self._lock:
            self._next += 1
            self._active[self._next] = {"request_id": request_id, "source": source, "done": 0, "total": 0,
                                        "retries": 0, "last_error": None, "stop": stop}
            return self._next, stop

    def update(self, token: int, **fields: Any) -> None:
        with self._lock:
            if token in self._active:
                self._active[token].update(fields)

    def retried(self, token: int, reason: str) -> None:
        with self._lock:
            if token in self._active:
                self._active[token]["retries"] += 1
                self._active[token]["last_error"] = reason

    def finish(self, token: int) -> None:
        with self._lock:
            self._active.pop(token, None)

    def cancel(self, request_id: str) -> int:
        """Stop every download of ``request_id``; how many there were."""
        with self._lock:
            stops = [e["stop"] for e in self._active.values() if e["request_id"] == request_id]
        for stop in stops:
            stop.set()
        return len(stops)

    def listing(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{k: v for k, v in e.items() if k != "stop"} for e in self._active.values()]


downloads = Downloads()


def _error(status: int, type: str, message: str) -> web.Response:
    return web.json_response({"error": {"type": type, "message": message}}, status=status)


def _guarded(handler: Handler) -> Handler:
    """Bearer check (when ``LORA_BRIDGE_TOKEN`` is set) and the error shape for refused input."""
    async def wrapped(request: web.Request) -> web.Response:
        token = settings().pod_route_token
        if token:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return _error(401, "unauthorized", "missing or wrong bearer token (LORA_BRIDGE_TOKEN)")
        try:
            return await handler(request)
        except protocol.ProtocolError as exc:
            status, kind = (413, "too_large") if isinstance(exc, TooLarge) else \
                (422, "invalid_text") if isinstance(exc, protocol.UnencodableText) else (400, "invalid_request")
            return _error(status, kind, str(exc))

    return wrapped


async def _read(request: web.Request, limit: int) -> bytes | None:
    """The whole request body, or None when it is over ``limit`` bytes (a body arrives in several
    reads: ``StreamReader.read(n)`` answers with what is buffered, not with ``n`` bytes)."""
    if request.content_length and request.content_length > limit:
        return None
    data = bytearray()
    while chunk := await request.content.read(1 << 20):
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)


async def _body(request: web.Request, model: type[protocol._Closed]) -> Any:
    raw = await _read(request, MAX_BODY)
    if raw is None:
        raise protocol.PayloadTooLarge(f"body over {MAX_BODY} bytes")
    return protocol.parse_payload(model, raw)


def _disk_report() -> dict[str, Any]:
    store = disk_store()
    entries = [{"sha256": e.sha256, "size": e.size, "names": e.names, "source": e.source, "pinned": e.pinned,
                "in_use": e.in_use, "last_used": e.last_used} for e in store.entries()]
    return {**store.stats().to_dict(), "items": entries}


async def get_cache(request: web.Request) -> web.Response:
    report = await asyncio.get_running_loop().run_in_executor(None, _disk_report)
    memory = memory_cache()
    return web.json_response({"disk": report, "memory": {**memory.stats().to_dict(), "items": memory.entries()}})


async def clear_cache(request: web.Request) -> web.Response:
    body: protocol.CacheClear = await _body(request, protocol.CacheClear)
    cleared: dict[str, Any] = {}
    if body.memory:
        cleared["memory"] = memory_cache().clear()
    if body.disk:
        cleared["disk"] = len(await asyncio.get_running_loop().run_in_executor(None, disk_store().evict))
    return web.json_response({"cleared": cleared})


async def prefetch(request: web.Request) -> web.Response:
    """Download into the disk cache (and optionally memory) ahead of a job; progress over the WebSocket."""
    body: protocol.PrefetchRequest = await _body(request, protocol.PrefetchRequest)
    from server import PromptServer

    token, stop = downloads.start(body.request_id, redact_url(body.source) if "://" in body.source else body.source)

    def progress(done: int, total: int) -> None:
        downloads.update(token, done=done, total=total)
        if body.client_id:
            PromptServer.instance.send_sync(protocol.PREFETCH_EVENT, {"request_id": body.request_id, "sha256": body.sha256,
                                                                      "done": done, "total": total}, body.client_id)

    def retry(attempt: int, reason: str, delay: float) -> None:
        downloads.retried(token, reason)
        if body.client_id:
            PromptServer.instance.send_sync(protocol.PREFETCH_EVENT, {"request_id": body.request_id, "retry": attempt,
                                                                      "reason": reason, "delay": round(delay, 1)},
                                            body.client_id)

    def work() -> dict[str, Any]:
        handle = fetch_handle(body.source, body.sha256, body.name, progress, cancel=stop.is_set, on_retry=retry)
        if body.memory:
            load_into_memory(handle)
        return {"sha256": handle.sha256, "name": handle.name, "size": handle.path.stat().st_size,
                "family": handle.family, "trigger_words": handle.trigger_words, "in_memory": body.memory}

    try:
        result = await asyncio.get_running_loop().run_in_executor(None, work)
    except FetchCancelled as exc:
        return _error(409, "cancelled", str(exc))
    except IntegrityError as exc:  # not the bytes the caller said (hash, size, header)
        return _error(422, "integrity", str(exc))
    except FetchError as exc:  # the download failed for good
        return _error(502, "fetch_failed", str(exc))
    except LoraBridgeError as exc:  # refused, invalid, not found
        return _error(400, "refused", str(exc))
    finally:
        downloads.finish(token)
    return web.json_response(result)


async def list_prefetches(request: web.Request) -> web.Response:
    return web.json_response({"downloads": downloads.listing()})


async def cancel_prefetch(request: web.Request) -> web.Response:
    body: protocol.PrefetchCancel = await _body(request, protocol.PrefetchCancel)
    return web.json_response({"request_id": body.request_id, "cancelled": downloads.cancel(body.request_id)})


def _summary(path: Path) -> dict[str, Any]:
    """A loras file's inspection without its metadata and hash (the listing's entry)."""
    try:
        info = inspect_file(path, with_hash=False).to_dict() if path.suffix == ".safetensors" else {}
    except LoraBridgeError as exc:
        return {"error": str(exc)}
    info.pop("metadata", None)
    return info


def _list_loras(query: protocol.LoraListQuery) -> dict[str, Any]:
    import folder_paths

    model = describe_model_file(query.model_folder, query.model_name) if query.model_folder and query.model_name else None
    out = []
    for name in folder_paths.get_filename_list("loras"):
        try:
            summary, st = per_file_version(_summaries, Path(folder_paths.get_full_path("loras", name) or ""), _summary)
        except OSError:
            continue
        item = {"name": name, "size": st.st_size, **summary}
        if model is not None:
            item["fits_model"] = None if "family" not in item else not made_for_another(
                item["family"], item.get("variant"), model["family"], model["variant"])
        out.append(item)
    return {"loras": out, **({"model": model} if model else {})}


async def list_loras(request: web.Request) -> web.Response:
    query = protocol.parse_path(protocol.LoraListQuery, request.query, "query")
    try:
        listing = await asyncio.get_running_loop().run_in_executor(None, _list_loras, query)
    except ModelFileNotFound as exc:
        return _error(404, "not_found", str(exc))
    return web.json_response(listing)


def _lora_details(name: str) -> dict[str, Any]:
    """Everything the pack knows of one loras file: the summary, its metadata and SHA-256 (a full read, cached)."""
    import folder_paths

    name = resolve_name(name, folder_paths.get_filename_list("loras"))
    details, st = per_file_version(_details, Path(folder_paths.get_full_path("loras", name) or ""),
                                   lambda path: inspect_file(path, with_hash=True).to_dict())
    return {"name": name, "size": st.st_size, **details, "source": name}


async def lora_info(request: web.Request) -> web.Response:
    query = protocol.parse_path(protocol.LoraInfoQuery, request.query, "query")
    try:
        return web.json_response(await asyncio.get_running_loop().run_in_executor(None, _lora_details, query.name))
    except LoraNotFound as exc:
        return _error(404, "not_found", str(exc))
    except LoraValidationError as exc:  # '..', an absolute path, a pickle file
        return _error(400, "invalid_request", str(exc))
    except InvalidLoraFile as exc:
        return _error(422, "invalid_lora", str(exc))


async def model_info(request: web.Request) -> web.Response:
    query = protocol.parse_path(protocol.ModelInfoQuery, request.query, "query")
    try:
        return web.json_response(await asyncio.get_running_loop().run_in_executor(
            None, describe_model_file, query.folder, query.name))
    except ModelFileNotFound as exc:
        return _error(404, "not_found", str(exc))


def _job_folder(request: web.Request) -> str:
    return protocol.parse_path(protocol.DatasetPath, request.match_info).job


def _training_dirs(job: str) -> tuple[Path, Path]:
    """The job's dataset folder (under ``input/``) and its output folder (under ``output/``)."""
    import folder_paths

    return (Path(folder_paths.get_input_directory()) / protocol.TRAINING_DATASETS / job,
            Path(folder_paths.get_output_directory()) / protocol.TRAINING_OUTPUTS / job)


async def put_dataset(request: web.Request) -> web.Response:
    """A training dataset (zip of images + captions) checked whole, then extracted into the job's input folder."""
    from ..bridge.training.dataset import DatasetInvalid, DatasetLimits, extract

    job = _job_folder(request)
    limit = DatasetLimits().max_bytes
    data = await _read(request, limit)
    if data is None:
        return _error(413, "too_large", f"dataset over {limit} bytes")
    folder = _training_dirs(job)[0]
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        dataset = await asyncio.get_running_loop().run_in_executor(None, extract, data, folder)
    except DatasetInvalid as exc:
        return _error(422, "invalid_dataset", str(exc))
    return web.json_response({"folder": f"{protocol.TRAINING_DATASETS}/{job}", **dataset.summary()})


async def delete_dataset(request: web.Request) -> web.Response:
    """Remove a training job's dataset and outputs from the pod (whatever of them exists)."""
    import shutil

    removed = []
    for folder in _training_dirs(_job_folder(request)):
        for path in (folder, folder.with_name(f".{folder.name}.partial")):
            if path.exists():
                await asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, path)
                removed.append(str(path.relative_to(path.parents[1])))
    return web.json_response({"removed": removed})


async def get_presets(request: web.Request) -> web.Response:
    presets = await asyncio.get_running_loop().run_in_executor(None, stack_presets.list_presets)
    return web.json_response({"presets": presets})


async def put_preset(request: web.Request) -> web.Response:
    """Save an Apply LoRA Stack's rows under a name (replacing a preset of that name)."""
    name = protocol.parse_path(protocol.PresetPath, request.match_info).name
    body = await _body(request, protocol.PresetBody)
    saved = await asyncio.get_running_loop().run_in_executor(None, stack_presets.save_preset, name, body.loras)
    return web.json_response(saved)


async def delete_preset(request: web.Request) -> web.Response:
    name = protocol.parse_path(protocol.PresetPath, request.match_info).name
    if not await asyncio.get_running_loop().run_in_executor(None, stack_presets.delete_preset, name):
        return _error(404, "not_found", f"no preset named {name!r}")
    return web.json_response({"removed": name})


async def drain(request: web.Request) -> web.Response:
    """Take no more jobs (the bridge is told), then wait up to ``wait_s`` until the queue is empty."""
    query = protocol.parse_path(protocol.DrainQuery, request.query, "query")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, membership.drain)
    deadline = loop.time() + query.wait_s
    while (remaining := tasks_remaining()) and loop.time() < deadline:
        await asyncio.sleep(0.25)
    return web.json_response({"draining": True, "remaining": remaining, "idle": remaining == 0})


async def resume(request: web.Request) -> web.Response:
    """Call a drain off: the pod takes jobs again."""
    await asyncio.get_running_loop().run_in_executor(None, membership.resume)
    return await drain_state(request)


async def drain_state(request: web.Request) -> web.Response:
    remaining = tasks_remaining()
    return web.json_response({"draining": membership.draining.is_set(), "remaining": remaining, "idle": remaining == 0})


ROUTES: list[tuple[RouteSpec, Handler]] = [
    (RouteSpec("GET", protocol.ROUTE_CACHE, "Disk and memory caches: stats and items"), get_cache),
    (RouteSpec("POST", protocol.ROUTE_CACHE_CLEAR, "Clear the memory and/or unpinned, unused disk files",
               body=protocol.CacheClear), clear_cache),
    (RouteSpec("POST", protocol.ROUTE_PREFETCH, "Download a LoRA ahead of a job (progress over the WebSocket)",
               body=protocol.PrefetchRequest,
               responses={200: "fetched", 409: "cancelled", 422: "wrong hash or not safetensors", 502: "download failed"}),
     prefetch),
    (RouteSpec("GET", protocol.ROUTE_PREFETCH, "Downloads under way: progress, retries, last error"), list_prefetches),
    (RouteSpec("POST", protocol.ROUTE_PREFETCH_CANCEL, "Stop the downloads started under a request id",
               body=protocol.PrefetchCancel), cancel_prefetch),
    (RouteSpec("GET", protocol.ROUTE_LORAS, "Files in the loras folders with their inspection summary; with a model "
               "file, its family and whether each LoRA was made for it", query=protocol.LoraListQuery,
               responses={200: "OK", 400: "invalid query", 404: "no such model file"}), list_loras),
    (RouteSpec("GET", protocol.ROUTE_LORA_INFO, "One LoRA file inspected whole: format, family, ranks, alphas, "
               "trigger words, metadata, SHA-256", query=protocol.LoraInfoQuery,
               responses={200: "OK", 400: "invalid name or a pickle file", 404: "no such file",
                          422: "not a readable .safetensors LoRA"}),
     lora_info),
    (RouteSpec("GET", protocol.ROUTE_MODEL_INFO, "A model file's family and variant (detected as ComfyUI loads it)",
               query=protocol.ModelInfoQuery, responses={200: "OK", 400: "invalid query", 404: "no such model file"}),
     model_info),
    (RouteSpec("PUT", f"{protocol.ROUTE_DATASETS}/{{job}}", "A training job's dataset (zip of images with .txt captions), "
               "checked and extracted into input/lora_bridge_datasets/<job>", path_params=protocol.DatasetPath,
               responses={200: "extracted", 400: "invalid job name", 413: "too large", 422: "not a usable dataset"}),
     put_dataset),
    (RouteSpec("POST", protocol.ROUTE_DRAIN, "Take no more jobs (the bridge moves those waiting here), then wait up to "
               "wait_s for the queue to empty: a preStop hook", query=protocol.DrainQuery,
               responses={200: "draining; idle says whether the queue emptied in time", 400: "invalid query"}), drain),
    (RouteSpec("GET", protocol.ROUTE_DRAIN, "Whether the pod drains, and the prompts it still has"), drain_state),
    (RouteSpec("DELETE", protocol.ROUTE_DRAIN, "Call a drain off: the pod takes jobs again (and announces itself "
               "to its bridge anew)"), resume),
    (RouteSpec("GET", protocol.ROUTE_PRESETS, "LoRA stack presets saved on this pod (name, rows, when saved)"),
     get_presets),
    (RouteSpec("PUT", f"{protocol.ROUTE_PRESETS}/{{name}}", "Save an Apply LoRA Stack's rows under a name (replaces "
               "a preset of that name)", path_params=protocol.PresetPath, body=protocol.PresetBody,
               responses={200: "saved", 400: "invalid name or rows", 413: "too large"}), put_preset),
    (RouteSpec("DELETE", f"{protocol.ROUTE_PRESETS}/{{name}}", "Remove a LoRA stack preset",
               path_params=protocol.PresetPath, responses={200: "removed", 400: "invalid name", 404: "no such preset"}),
     delete_preset),
    (RouteSpec("DELETE", f"{protocol.ROUTE_DATASETS}/{{job}}", "Remove a training job's dataset and outputs",
               path_params=protocol.DatasetPath, responses={200: "removed", 400: "invalid job name"}), delete_dataset),
]


def openapi() -> dict[str, Any]:
    """The pod routes' OpenAPI document (from the protocol's models)."""
    return openapi_document("comfyui-lora-bridge pod routes", "1", [spec for spec, _ in ROUTES])


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi())


async def get_node_roles(request: web.Request) -> web.Response:
    """The pack's node ids by role, for the editor's views (nothing that ``/object_info`` does not tell)."""
    return web.json_response(protocol.NODE_ROLES)


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _warn_if_exposed() -> None:
    """An open pod on a non-loopback address is reachable by anyone on its network: say so."""
    try:
        from comfy.cli_args import args
    except ImportError:
        return
    hosts = [h.strip() for h in str(getattr(args, "listen", "127.0.0.1")).split(",")]
    if not settings().pod_route_token and not all(_loopback(h) for h in hosts):
        log.warning("lora_bridge: ComfyUI listens on %s without LORA_BRIDGE_TOKEN: anyone who reaches it can use the "
                    "/lora_bridge/ routes (set LORA_BRIDGE_TOKEN; see SECURITY.md)", ", ".join(hosts))


def register_routes() -> None:
    """Add the routes to ComfyUI's server (called at node-pack import inside ComfyUI)."""
    from server import PromptServer

    routes = PromptServer.instance.routes
    for spec, handler in ROUTES:
        routes.route(spec.method, spec.path)(_guarded(handler))
    routes.get(protocol.ROUTE_OPENAPI)(get_openapi)
    routes.get(protocol.ROUTE_NODES)(get_node_roles)
    _warn_if_exposed()
