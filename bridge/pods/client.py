"""Async client for one ComfyUI pod: submit a graph, stream its events, fetch its outputs.

The WebSocket is opened with a fresh ``client_id`` *before* ``POST /prompt`` so no event of
the job is missed. A dropped WebSocket is reopened with backoff and the job reconciled with
``/history/{prompt_id}``: a completion that happened while disconnected is still reported,
and no event is reported twice. Completion is confirmed through ``/history`` because outputs
can appear there after ``execution_success`` (Comfy-Org/ComfyUI #11540).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

import aiohttp

from ..errors import (
    JobFailed,
    JobInterrupted,
    PodError,
    PodUnavailable,
    PromptLost,
    PromptRejected,
)
from ..pack_protocol import ROUTE_DATASETS

# ComfyUI message type -> our event type
EVENT_TYPES = {
    "execution_start": "started", "execution_cached": "cached", "executing": "executing", "progress": "progress",
    "executed": "output", "execution_success": "success", "execution_error": "error",
    "execution_interrupted": "interrupted",
}
TERMINAL = {"success", "error", "interrupted"}


@dataclass(frozen=True)
class PodEvent:
    """One event of a job: ``queued`` (position), ``started``, ``cached`` (nodes), ``executing``
    (node), ``progress`` (node, value, max), ``preview`` (image bytes), ``output`` (node,
    output), ``success``, ``error`` (node_id, node_type, message, exception_type),
    ``interrupted``, ``reconnected`` (attempt)."""

    type: str
    data: dict[str, Any]


@dataclass(frozen=True)
class OutputFile:
    """A file a node saved (as listed in ``/history``), with its bytes once fetched."""

    node_id: str
    filename: str
    subfolder: str
    type: str
    data: bytes = b""


@dataclass
class JobResult:
    prompt_id: str
    files: list[OutputFile] = field(default_factory=list)
    events: list[PodEvent] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)  # the prompt's history outputs (node -> UI output)


EventCallback = Callable[[PodEvent], Awaitable[None] | None]
FileCallback = Callable[[OutputFile], Awaitable[None]]  # an output file, fetched as soon as its node has run
OUTPUT_KINDS = ("images", "gifs", "videos", "latents")


def _error_text(text: str) -> str:
    """The message of an error answer (the pack's ``{"error": {"type", "message"}}``, else the text)."""
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return text[:300]
    if isinstance(error, dict) and "message" in error:
        return f"{error.get('type', 'error')}: {error['message']}"
    return text[:300]


def describe_node_errors(node_errors: dict[str, Any]) -> str:
    """ComfyUI's ``node_errors`` as one readable line per failing input."""
    lines = []
    for node_id, info in node_errors.items():
        for err in info.get("errors", []):
            extra = err.get("extra_info", {}) or {}
            where = f" input '{extra['input_name']}'" if "input_name" in extra else ""
            lines.append(f"node {node_id} ({info.get('class_type', '?')}){where}: {err.get('message')}: {err.get('details', '')}".rstrip(": "))
    return "; ".join(lines)


class PodClient:
    """HTTP + WebSocket access to one ComfyUI server (``token``: bearer for the pod or its proxy)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0, reconnects: int = 6,
                 backoff: float = 0.5) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self.reconnects, self.backoff = reconnects, backoff

    async def __aenter__(self) -> "PodClient":
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use PodClient as 'async with PodClient(url) as pod:'")
        return self._session

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            async with self.session.request(method, self.url + path, **kwargs) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise PodError(f"{method} {path} on {self.url} answered {resp.status}: {_error_text(text)}")
                return json.loads(text) if text else {}
        except (aiohttp.ClientConnectionError, aiohttp.InvalidURL, asyncio.TimeoutError) as exc:
            raise PodUnavailable(f"{self.url} is unreachable: {type(exc).__name__}") from None

    async def get_json(self, path: str) -> Any:
        return await self._request("GET", path)

    async def post_json(self, path: str, body: dict[str, Any]) -> Any:
        return await self._request("POST", path, json=body)

    async def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        return await self.get_json("/object_info" + (f"/{node_class}" if node_class else ""))

    async def submit(self, graph: dict[str, Any], client_id: str, prompt_id: str | None = None) -> str:
        """``POST /prompt`` (under ``prompt_id`` where the pod takes one); returns the prompt id the pod
        uses, or raises ``PromptRejected`` naming node, input and reason."""
        request = {"prompt": graph, "client_id": client_id, **({"prompt_id": prompt_id} if prompt_id else {})}
        try:
            async with self.session.post(self.url + "/prompt", json=request) as resp:
                body: Any = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientConnectionError, aiohttp.InvalidURL, asyncio.TimeoutError) as exc:
            raise PodUnavailable(f"{self.url} is unreachable: {type(exc).__name__}") from None
        if status != 200:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            node_errors = body.get("node_errors", {}) if isinstance(body, dict) else {}
            detail = describe_node_errors(node_errors)
            message = (error.get("message") if isinstance(error, dict) else str(error)) or "prompt rejected"
            raise PromptRejected(message + (f": {detail}" if detail else ""), node_errors)
        return body["prompt_id"]

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        data = await self.get_json(f"/history/{prompt_id}")
        return data.get(prompt_id)

    async def queue_position(self, prompt_id: str) -> int | None:
        """0 when running, n when n jobs run or wait before it, None when not in the queue."""
        queue = await self.get_json("/queue")
        if any(item[1] == prompt_id for item in queue.get("queue_running", [])):
            return 0
        pending = sorted(queue.get("queue_pending", []), key=lambda item: item[0])
        for i, item in enumerate(pending):
            if item[1] == prompt_id:
                return i + len(queue.get("queue_running", []))
        return None

    async def withdraw(self, prompt_id: str) -> bool:
        """Take a prompt out of the pod's queue if it has not started; True when it is gone without having run.
        ComfyUI deletes pending prompts only and moves one from pending to running under its queue's lock, so a
        prompt is either withdrawn or runs here, never both."""
        await self.post_json("/queue", {"delete": [prompt_id]})
        if await self.queue_position(prompt_id) is not None:
            return False
        return await self.history(prompt_id) is None

    async def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        params = {"filename": filename, "subfolder": subfolder, "type": type}
        try:
            async with self.session.get(self.url + "/view", params=params) as resp:
                if resp.status != 200:
                    raise PodError(f"GET /view {filename} answered {resp.status}")
                return await resp.read()
        except (aiohttp.ClientConnectionError, aiohttp.InvalidURL, asyncio.TimeoutError) as exc:  # (``type`` is the parameter here)
            raise PodUnavailable(f"{self.url} is unreachable: {exc.__class__.__name__}") from None

    async def upload_image(self, data: bytes | Path, name: str | None = None, overwrite: bool = True) -> str:
        """Upload an input image (``POST /upload/image``); returns the name to use in graphs."""
        raw = Path(data).read_bytes() if isinstance(data, Path) else data
        form = aiohttp.FormData()
        form.add_field("image", raw, filename=name or (data.name if isinstance(data, Path) else "input.png"))
        form.add_field("overwrite", "true" if overwrite else "false")
        result = await self._request("POST", "/upload/image", data=form)
        return f"{result['subfolder']}/{result['name']}" if result.get("subfolder") else result["name"]

    async def put_dataset(self, job: str, data: bytes) -> dict[str, Any]:
        """Send a training dataset (normalized zip) into the pod's ``input/lora_bridge_datasets/<job>``."""
        return await self._request("PUT", f"{ROUTE_DATASETS}/{job}", data=data, headers={"Content-Type": "application/zip"})

    async def delete_dataset(self, job: str) -> dict[str, Any]:
        """Remove a training job's dataset and outputs from the pod."""
        return await self._request("DELETE", f"{ROUTE_DATASETS}/{job}")

    async def cancel(self, prompt_id: str) -> None:
        """Stop a running job (``/interrupt``) or drop a queued one (``/queue`` delete)."""
        if await self.queue_position(prompt_id) == 0:
            await self.post_json("/interrupt", {"prompt_id": prompt_id})
        else:
            await self.post_json("/queue", {"delete": [prompt_id]})

    async def _connect(self, client_id: str) -> aiohttp.ClientWebSocketResponse:
        ws_url = self.url.replace("http", "ws", 1) + f"/ws?clientId={client_id}"
        try:
            return await self.session.ws_connect(ws_url, timeout=aiohttp.ClientWSTimeout(ws_close=5), heartbeat=10)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise PodUnavailable(f"WebSocket to {self.url} failed: {type(exc).__name__}") from None

    async def run(self, graph: dict[str, Any], on_event: EventCallback | None = None,
                  prompt_id: str | None = None, client_id: str | None = None, follow: bool = False,
                  recorded: Iterable[tuple[str, dict[str, Any]]] = (), on_file: FileCallback | None = None) -> JobResult:
        """Submit ``graph`` and stream its events; with ``follow``, re-attach to ``prompt_id``
        instead (submitted earlier by ``client_id``: ComfyUI sends a job's events to that client),
        reporting none of the events in ``recorded`` (what the caller's log holds already, from
        before a restart) again. Each output file is fetched as soon as its node has run (the rest at the
        end) and handed to ``on_file``.

        A submission first emits ``submitting`` with the prompt id it is about to use (callers
        store it, so a crash right after the POST still finds the prompt), then ``submitted``
        with the pod's queue position; a re-attachment emits ``reattached``. Returns the output
        files; raises ``JobFailed`` (error, interruption), ``PromptRejected``, ``PromptLost``
        (followed prompt unknown to the pod) or ``PodUnavailable`` (unreachable through every reconnect).
        """
        client_id = client_id or uuid.uuid4().hex
        ws = await self._connect(client_id)
        job = _Job(self, on_event, on_file)
        for type, data in recorded:
            job.remember(type, data)
        try:
            if follow:
                if prompt_id is None:
                    raise ValueError("follow needs the prompt id")
                job.result.prompt_id = prompt_id
                position = await self.queue_position(prompt_id)
                if position is None and await self.history(prompt_id) is None:
                    raise PromptLost(f"{self.url} does not know prompt {prompt_id} (the pod restarted, or it never arrived)")
                await job.emit("reattached", {"prompt_id": prompt_id, "position": position})
                await job.reconcile()  # it may have finished while nobody listened
            else:
                prompt_id = prompt_id or str(uuid.uuid4())
                await job.emit("submitting", {"prompt_id": prompt_id, "client_id": client_id})
                prompt_id = await self.submit(graph, client_id, prompt_id)
                job.result.prompt_id = prompt_id
                await job.emit("submitted", {"prompt_id": prompt_id, "client_id": client_id,
                                             "position": await self.queue_position(prompt_id)})
            while job.terminal is None:
                try:
                    await job.consume(ws)
                except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError):
                    pass
                if job.terminal is None:
                    await ws.close()
                    ws = await self._reconnect(client_id, job)
                    await job.reconcile()
        except BaseException:
            await job.abandon()
            raise
        finally:
            await ws.close()
        return await job.finish()

    async def _reconnect(self, client_id: str, job: "_Job") -> aiohttp.ClientWebSocketResponse:
        for attempt in range(1, self.reconnects + 1):
            await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                ws = await self._connect(client_id)
            except PodUnavailable:
                continue
            await job.emit("reconnected", {"attempt": attempt})
            return ws
        raise PodUnavailable(f"lost {self.url}: WebSocket did not come back after {self.reconnects} attempts")


def _error_data(data: dict[str, Any]) -> dict[str, Any]:
    """ComfyUI's ``execution_error`` as our ``error`` event: node, class, message, exception type."""
    return {"node_id": data.get("node_id"), "node_type": data.get("node_type"),
            "message": str(data.get("exception_message", "")).strip(),
            "exception_type": data.get("exception_type"), "prompt_id": data.get("prompt_id")}


class _Job:
    """Event bookkeeping of one job: dedupe after reconnects, terminal state, results."""

    def __init__(self, client: PodClient, on_event: EventCallback | None, on_file: FileCallback | None = None) -> None:
        self.client, self.on_event, self.on_file = client, on_event, on_file
        self.fetched: set[tuple[str, str, str, str]] = set()
        self.result = JobResult("")
        self.terminal: PodEvent | None = None
        self.seen: set[str] = set()
        self.steps: dict[str, float] = {}  # node -> latest step reported
        self.fetching: list[asyncio.Task[list[OutputFile]]] = []  # files fetched while the job goes on, in node order

    @staticmethod
    def _key(type: str, data: dict[str, Any]) -> str:
        """What makes two events the same one (not when they were sent, nor the caller's own annotations)."""
        return json.dumps([type, {k: v for k, v in data.items() if k not in ("timestamp", "stage")}], sort_keys=True,
                          default=str)

    def remember(self, type: str, data: dict[str, Any]) -> None:
        """An event reported before (by an earlier process following this prompt): never report it again,
        nor a step of a node at or before the last one reported."""
        self.seen.add(self._key(type, data))
        node, value = data.get("node"), data.get("value")
        if type == "progress" and isinstance(node, str) and isinstance(value, (int, float)):
            self.steps[node] = max(self.steps.get(node, 0), value)

    async def emit(self, type: str, data: dict[str, Any]) -> None:
        key = self._key(type, data)
        event = PodEvent(type, data)
        if type in TERMINAL:  # the prompt has ended, even when an earlier process already reported how
            self.terminal = event
        if key in self.seen and type != "preview":
            return
        self.seen.add(key)
        self.result.events.append(event)
        if self.on_event is not None:
            maybe = self.on_event(event)
            if asyncio.iscoroutine(maybe):
                await maybe

    async def consume(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                if len(msg.data) > 8 and int.from_bytes(msg.data[:4], "big") == 1:
                    fmt = {1: "jpeg", 2: "png"}.get(int.from_bytes(msg.data[4:8], "big"), "jpeg")
                    await self.emit("preview", {"format": fmt, "image": msg.data[8:]})
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            payload = json.loads(msg.data)
            data = payload.get("data", {}) or {}
            if data.get("prompt_id") not in (None, self.result.prompt_id):
                continue
            if payload.get("type") == "progress_state":  # newer ComfyUIs: every active node's progress
                for node_id, state in (data.get("nodes") or {}).items():
                    if isinstance(state, dict):
                        await self.step(str(state.get("node_id") or node_id), state.get("value"), state.get("max"))
                continue
            kind = EVENT_TYPES.get(payload.get("type", ""))
            if kind is None or (kind == "executing" and data.get("node") is None):
                continue
            if kind == "progress":
                await self.step(str(data.get("node")), data.get("value"), data.get("max"))
                continue
            await self.emit(kind, _error_data(data) if kind == "error" else data)
            if kind == "output" and isinstance(data.get("output"), dict):  # fetched beside the events that follow
                self.fetching.append(asyncio.ensure_future(self.fetch(str(data.get("node")), data["output"])))
            if self.terminal is not None:
                return
        raise ConnectionError("WebSocket closed")

    async def step(self, node: str, value: Any, total: Any) -> None:
        """A ``progress`` event when ``node`` reached a later step than reported so far: ComfyUI may
        thin its step messages (and sends ``progress_state`` too); callers see steps that only
        increase, ending at the last one ComfyUI reported."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not isinstance(total, (int, float)):
            return
        if value <= self.steps.get(node, 0):
            return
        self.steps[node] = value
        await self.emit("progress", {"node": node, "value": value, "max": total, "prompt_id": self.result.prompt_id})

    async def reconcile(self) -> None:
        """After a reconnect: report a completion that happened while we were away."""
        entry = await self.client.history(self.result.prompt_id)
        status = (entry or {}).get("status", {})
        if not status.get("completed") and status.get("status_str") != "error":
            return
        for msg_type, data in status.get("messages", []):
            kind = EVENT_TYPES.get(msg_type)
            if kind in TERMINAL:
                await self.emit(kind, _error_data(data) if kind == "error" else data)
                return

    async def abandon(self) -> None:
        """Stop fetching what is still being fetched (the job failed, or its stream did)."""
        for task in self.fetching:
            task.cancel()
        await asyncio.gather(*self.fetching, return_exceptions=True)

    async def finish(self) -> JobResult:
        """The outputs of a job that succeeded (every file fetched); ``JobFailed``/``JobInterrupted`` otherwise."""
        try:
            return await self._outputs()
        finally:
            await self.abandon()  # none left running: on a failure, one that failed, or none left at all

    async def _outputs(self) -> JobResult:
        assert self.terminal is not None
        d = self.terminal.data
        if self.terminal.type == "error":
            raise JobFailed(f"node {d.get('node_id')} ({d.get('node_type')}) failed: {d.get('exception_type')}: {d.get('message')}",
                            d.get("node_id"), d.get("node_type"))
        if self.terminal.type == "interrupted":
            raise JobInterrupted(f"job {self.result.prompt_id} was interrupted on the pod")
        entry = None
        for _ in range(100):  # outputs can reach /history after execution_success
            entry = await self.client.history(self.result.prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                break
            await asyncio.sleep(0.05)
        if not entry:
            raise PodError(f"job {self.result.prompt_id} finished but never appeared in /history")
        self.result.outputs = entry.get("outputs", {})
        for files in await asyncio.gather(*self.fetching):  # in the order their nodes ran
            self.result.files.extend(files)
        for node_id, output in self.result.outputs.items():  # those it never announced (cached nodes)
            self.result.files.extend(await self.fetch(node_id, output))
        return self.result

    async def fetch(self, node_id: str, output: dict[str, Any]) -> list[OutputFile]:
        """Fetch a node's output files not fetched yet (``/view``), and hand each to ``on_file``; those files."""
        files: list[OutputFile] = []
        for kind in OUTPUT_KINDS:
            for item in output.get(kind) or []:
                if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
                    continue
                key = (node_id, item["filename"], item.get("subfolder", ""), item.get("type", "output"))
                if key in self.fetched:
                    continue
                self.fetched.add(key)
                file = OutputFile(*key, await self.client.view(*key[1:]))
                files.append(file)
                if self.on_file is not None:
                    await self.on_file(file)
        return files
