"""A client for the bridge service's own API, shared by the CLI, the demo and the tests.

``BridgeClient`` calls the service (JSON in and out, multipart uploads) and follows a job's
Server-Sent Events through ``parse_sse``; ``ProgressPrinter`` shows job or pod events on a
terminal. Standard library only, so it runs anywhere the CLI does.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from .errors import LoraBridgeError
from .settings import Settings


class ServiceError(LoraBridgeError):
    """The service answered with an error (``status``, ``type``), or could not be reached (status 0)."""

    def __init__(self, status: int, type: str, message: str) -> None:
        super().__init__(f"{status} {type}: {message}" if status else message)
        self.status, self.type = status, type


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes

    @property
    def data(self) -> Any:
        """The JSON body (None when empty or not JSON)."""
        return json.loads(self.body) if self.body and self.content_type == "application/json" else None


@dataclass(frozen=True)
class SseEvent:
    id: int
    event: str
    data: dict[str, Any]


def parse_sse(lines: Iterable[bytes]) -> Iterator[SseEvent]:
    """Events of a ``text/event-stream`` (``id``, ``event``, ``data`` fields; comments such as heartbeats skipped)."""
    fields: dict[str, str] = {}
    for raw in lines:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if "data" in fields:
                yield SseEvent(int(fields.get("id", 0)), fields.get("event", "message"), json.loads(fields["data"]))
            fields = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(":")
            fields[key] = value[1:] if value.startswith(" ") else value


def multipart(fields: dict[str, str], file_field: str, filename: str, content: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type."""
    boundary = uuid.uuid4().hex
    parts = [(f'name="{k}"', v.encode()) for k, v in fields.items()]
    parts.append((f'name="{file_field}"; filename="{filename}"', content))
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; {h}\r\n\r\n".encode() + v + b"\r\n" for h, v in parts)
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class BridgeClient:
    """The service at ``url`` (``LORA_BRIDGE_URL``), with ``api_key`` (``LORA_BRIDGE_API_KEY``) as bearer."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 600.0) -> None:
        self.url, self.api_key, self.timeout = url.rstrip("/"), api_key, timeout

    @classmethod
    def from_settings(cls, settings: Settings) -> "BridgeClient":
        return cls(settings.service_url, settings.service_api_key)

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                headers: dict[str, str] | None = None, auth: bool = True) -> Response:
        """One call; HTTP errors are returned as responses, an unreachable service raises ``ServiceError``."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if auth and self.api_key:
            hdrs["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return Response(resp.status, resp.headers.get_content_type(), resp.read())
        except urllib.error.HTTPError as err:
            return Response(err.code, err.headers.get_content_type(), err.read())
        except urllib.error.URLError as err:
            raise ServiceError(0, "unreachable", f"bridge service at {self.url} unreachable: {err.reason}") from None

    def json(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON call; an error answer raises ``ServiceError`` with the service's type and message."""
        resp = self.request(method, path, body)
        if resp.status >= 400:
            error = (resp.data or {}).get("error", {}) if resp.content_type == "application/json" else {}
            raise ServiceError(resp.status, error.get("type", "http"), error.get("message", resp.body[:200].decode(errors="replace")))
        return resp.data

    def upload(self, filename: str, content: bytes, fields: dict[str, str]) -> dict[str, Any]:
        """``POST /v1/loras/upload``: register a LoRA file with registry fields."""
        body, content_type = multipart(fields, "file", filename, content)
        resp = self.request("POST", "/v1/loras/upload", raw=body, headers={"Content-Type": content_type})
        if resp.status >= 400:
            error = (resp.data or {}).get("error", {})
            raise ServiceError(resp.status, error.get("type", "http"), error.get("message", ""))
        return resp.data

    def train(self, request: dict[str, Any], dataset_zip: bytes | None = None) -> dict[str, Any]:
        """Start a training: ``POST /v1/trainings/upload`` with the zip, or ``POST /v1/trainings`` (dataset by URLs)."""
        if dataset_zip is None:
            return self.json("POST", "/v1/trainings", request)
        body, content_type = multipart({"request": json.dumps(request)}, "dataset", "dataset.zip", dataset_zip)
        resp = self.request("POST", "/v1/trainings/upload", raw=body, headers={"Content-Type": content_type})
        if resp.status >= 400:
            error = (resp.data or {}).get("error", {})
            raise ServiceError(resp.status, error.get("type", "http"), error.get("message", ""))
        return resp.data

    def events(self, job_id: str, last_event_id: int = 0) -> Iterator[SseEvent]:
        """A job's events from ``last_event_id`` on, until the job has ended (Server-Sent Events)."""
        headers = {"Last-Event-ID": str(last_event_id)}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(f"{self.url}/v1/generations/{job_id}/events", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as stream:
                yield from parse_sse(stream)
        except urllib.error.HTTPError as err:
            raise ServiceError(err.code, "http", err.read()[:300].decode(errors="replace")) from None


class ProgressPrinter:
    """Job progress on stderr (or ``stream``): pod, node, sampling steps, warnings; one line on a TTY."""

    def __init__(self, label: str = "", stream: Any = None) -> None:
        self.label = f"[{label}] " if label else ""
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()

    def __call__(self, type: str, d: dict[str, Any]) -> None:
        text = {
            "assigned": lambda: f"pod {d['pod']} ({d['mode']} mode, attempt {d['attempt']})",
            "failover": lambda: f"pod {d['pod']} failed ({d['reason']}); moving the job",
            "submitted": lambda: f"queued on the pod (position {d.get('position')})",
            "warning": lambda: f"warning: {d['message']}",
            "started": lambda: "started",
            "executing": lambda: f"node {d.get('node')}",
            "progress": lambda: f"node {d.get('node')} step {d.get('value')}/{d.get('max')} "
                                f"[{'#' * int(20 * d['value'] / max(d['max'], 1)):<20}]",
            "reconnected": lambda: f"reconnected (attempt {d['attempt']})",
            "fetch_retry": lambda: f"the pod retries downloading {d['source']} (retry {d['retries']}: {d.get('reason')})",
            "resumed": lambda: "the bridge restarted; job resumed",
            "dataset": lambda: f"dataset on pod {d.get('pod')}: {d.get('images')} images",
            "loss": lambda: f"trained; final loss {d.get('final'):.4f}",
            "stored": lambda: f"LoRA stored (sha256 {str(d.get('sha256'))[:12]}…, {d.get('family')})",
            "validating": lambda: "validating: a sample generation with the new LoRA",
            "validated": lambda: f"validated: {d.get('image')}",
            "succeeded": lambda: "done", "success": lambda: "done on the pod",
            "failed": lambda: f"failed: {d.get('message')}", "cancelled": lambda: "cancelled",
            "interrupted": lambda: f"interrupted: {d.get('message')}",
        }.get(type)
        if text is None:
            return
        line = self.label + text()
        if self.tty and type in ("progress", "executing"):
            print(f"\r\033[K{line}", end="", file=self.stream, flush=True)
        else:
            print(("\r\033[K" if self.tty else "") + line, file=self.stream, flush=True)
