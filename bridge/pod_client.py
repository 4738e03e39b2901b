"""Async client for one ComfyUI pod: submit a graph, stream its events, fetch its outputs.

The WebSocket is opened with a fresh ``client_id`` *before* ``POST /prompt`` so no event of
the job is missed; completion is confirmed through ``/history`` because outputs can appear
there after ``execution_success`` (Comfy-Org/ComfyUI #11540).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import aiohttp

from .errors import JobFailed, PodError, PromptRejected


@dataclass(frozen=True)
class PodEvent:
    """One message from ComfyUI's WebSocket that concerns our job."""

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


EventCallback = Callable[[PodEvent], Awaitable[None] | None]
TERMINAL = {"execution_success", "execution_error", "execution_interrupted"}


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
    """HTTP + WebSocket access to one ComfyUI server."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

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

    async def get_json(self, path: str) -> Any:
        async with self.session.get(self.url + path) as resp:
            if resp.status != 200:
                raise PodError(f"GET {path} on {self.url} answered {resp.status}: {(await resp.text())[:300]}")
            return await resp.json()

    async def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        return await self.get_json("/object_info" + (f"/{node_class}" if node_class else ""))

    async def submit(self, graph: dict[str, Any], client_id: str) -> str:
        """``POST /prompt``; returns the prompt id or raises ``PromptRejected`` with ComfyUI's reasons."""
        async with self.session.post(self.url + "/prompt", json={"prompt": graph, "client_id": client_id}) as resp:
            body = await resp.json(content_type=None)
            if resp.status != 200:
                error = body.get("error", {}) if isinstance(body, dict) else {}
                node_errors = body.get("node_errors", {}) if isinstance(body, dict) else {}
                detail = describe_node_errors(node_errors)
                message = error.get("message", "prompt rejected") + (f": {detail}" if detail else "")
                raise PromptRejected(message, node_errors)
            return body["prompt_id"]

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        data = await self.get_json(f"/history/{prompt_id}")
        return data.get(prompt_id)

    async def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        params = {"filename": filename, "subfolder": subfolder, "type": type}
        async with self.session.get(self.url + "/view", params=params) as resp:
            if resp.status != 200:
                raise PodError(f"GET /view {filename} answered {resp.status}")
            return await resp.read()

    async def _wait_history(self, prompt_id: str, attempts: int = 50) -> dict[str, Any]:
        for _ in range(attempts):
            entry = await self.history(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                return entry
            await asyncio.sleep(0.1)
        raise PodError(f"job {prompt_id} finished but never appeared in /history")

    async def run(self, graph: dict[str, Any], on_event: EventCallback | None = None) -> JobResult:
        """Submit ``graph``, stream its events to ``on_event``, and return its output files."""
        client_id = uuid.uuid4().hex
        ws_url = self.url.replace("http", "ws", 1) + f"/ws?clientId={client_id}"
        async with self.session.ws_connect(ws_url, timeout=aiohttp.ClientWSTimeout(ws_close=10), heartbeat=20) as ws:
            prompt_id = await self.submit(graph, client_id)
            result = JobResult(prompt_id)
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue  # binary frames are previews
                payload = json.loads(msg.data)
                data = payload.get("data", {})
                if data.get("prompt_id", prompt_id) != prompt_id:
                    continue
                event = PodEvent(payload.get("type", ""), data)
                result.events.append(event)
                if on_event is not None:
                    maybe = on_event(event)
                    if asyncio.iscoroutine(maybe):
                        await maybe
                if event.type in TERMINAL:
                    break
            else:
                raise PodError(f"WebSocket to {self.url} closed before job {prompt_id} finished")
        last = result.events[-1]
        if last.type == "execution_error":
            d = last.data
            raise JobFailed(
                f"node {d.get('node_id')} ({d.get('node_type')}) failed: {d.get('exception_type')}: {d.get('exception_message', '').strip()}",
                d.get("node_id"), d.get("node_type"),
            )
        if last.type == "execution_interrupted":
            raise JobFailed(f"job {prompt_id} was interrupted")
        entry = await self._wait_history(prompt_id)
        for node_id, output in entry.get("outputs", {}).items():
            for item in output.get("images", []) + output.get("gifs", []) + output.get("videos", []):
                data = await self.view(item["filename"], item.get("subfolder", ""), item.get("type", "output"))
                result.files.append(OutputFile(node_id, item["filename"], item.get("subfolder", ""), item.get("type", "output"), data))
        return result
