"""Job core records as Comfy API v2 objects: ``Job`` (status, progress snapshot, outputs, error, urls),
``Output`` and ``Asset`` with short-lived content URLs the bridge signs and serves."""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import datetime, timezone
from typing import Any

from ...jobs.records import AssetRecord, JobEvent, JobRecord

PREFIX = "/api/v2"
URL_TTL_S = 3600
STATUS = {"queued": "queued", "preparing": "queued", "submitted": "queued", "running": "running",
          "succeeded": "succeeded", "failed": "failed", "cancelled": "canceled", "interrupted": "canceled"}
OUTPUT_TYPES = {"image": "image", "video": "video", "audio": "audio", "text": "text"}


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat()


class ContentLinks:
    """Signed, expiring content URLs: ``…/content?expires=<unix>&signature=<hmac>`` open the bytes without the
    bearer key until they expire. Signed with the service's API keys, so every replica accepts them."""

    def __init__(self, api_keys: tuple[str, ...]) -> None:
        self.key = hashlib.sha256("\n".join(("comfy-v2-content", *sorted(api_keys))).encode()).digest()

    def signature(self, asset_id: str, expires: int) -> str:
        return hmac.new(self.key, f"{asset_id}:{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, base: str, asset_id: str) -> tuple[str, str]:
        """A fresh content URL and when it expires (ISO 8601)."""
        expires = int(time.time()) + URL_TTL_S
        url = f"{base}{PREFIX}/assets/{asset_id}/content?expires={expires}&signature={self.signature(asset_id, expires)}"
        return url, str(iso(expires))

    def valid(self, asset_id: str, expires: int, signature: str) -> bool:
        return expires >= time.time() and hmac.compare_digest(signature.encode(), self.signature(asset_id, expires).encode())


def asset_view(asset: AssetRecord, base: str, links: ContentLinks, created_new: bool | None = None) -> dict[str, Any]:
    url, url_expires = links.url(base, asset.id)
    view = {"id": asset.id, "hash": asset.blake3, "size_bytes": asset.size, "content_type": asset.content_type,
            "file_path": asset.file_path, "created_at": iso(asset.created), "url": url, "url_expires_at": url_expires,
            "tags": asset.tags, "job_id": asset.job_id}
    return view if created_new is None else {**view, "created_new": created_new}


def output_view(asset: AssetRecord, base: str, links: ContentLinks) -> dict[str, Any]:
    url, url_expires = links.url(base, asset.id)
    return {"node_id": asset.node_id or "", "name": asset.file_path or asset.id,
            "type": OUTPUT_TYPES.get(asset.content_type.split("/")[0], "file"), "content_type": asset.content_type,
            "size_bytes": asset.size, "id": asset.id, "hash": asset.blake3, "url": url, "url_expires_at": url_expires,
            "job_id": asset.job_id}


class ProgressTracker:
    """A job's progress snapshot, built from its events (node-count and sampler-step weighted): complete in
    itself, so one snapshot re-syncs a client."""

    def __init__(self, workflow: dict[str, Any] | None) -> None:
        graph = workflow if isinstance(workflow, dict) and "nodes" not in workflow else {}
        self.classes = {str(k): str(v.get("class_type")) for k, v in graph.items() if isinstance(v, dict)}
        self.done: set[str] = set()
        self.current: str | None = None
        self.step: int | None = None
        self.steps: int | None = None
        self.started = self.finished = False

    def feed(self, event: JobEvent) -> bool:
        """Take one event; whether the snapshot changed."""
        data = event.data
        if event.type == "executing" and isinstance(data.get("node"), str):
            if self.current is not None:
                self.done.add(self.current)
            self.current, self.step, self.steps = data["node"], None, None
        elif event.type == "cached" and isinstance(data.get("nodes"), list):
            self.done |= {str(n) for n in data["nodes"]}
        elif event.type == "progress" and isinstance(data.get("value"), (int, float)):
            self.current = str(data.get("node", self.current))
            self.step, self.steps = int(data["value"]), int(data.get("max") or 0) or None
        elif event.type == "running":
            self.started = True
        elif event.type == "succeeded":
            self.finished = True
        else:
            return False
        self.started = True
        return True

    def snapshot(self) -> dict[str, Any] | None:
        if not self.started:
            return None
        total = max(len(self.classes), len(self.done) + (self.current is not None), 1)
        fraction = (self.step / self.steps) if self.step is not None and self.steps else 0.0
        value = 1.0 if self.finished else min((len(self.done) + fraction) / total, 0.999)
        message = None
        if self.current is not None:
            message = f"{self.classes.get(self.current, self.current)}" + (f" {self.step}/{self.steps}" if self.steps else "")
        return {"value": round(value, 4), "nodes_done": total if self.finished else len(self.done), "nodes_total": total,
                "current_node": None if self.finished else self.current,
                "current_node_class": None if self.finished or self.current is None else self.classes.get(self.current),
                "step": self.step, "steps": self.steps, "message": None if self.finished else message}


def job_error(job: JobRecord, events: list[JobEvent]) -> dict[str, Any] | None:
    """A failed job's ``error``: the pod's node failure where there was one, else the bridge's reason."""
    if job.status != "failed":
        return None
    node = next((e.data for e in reversed(events) if e.type == "error"), None)
    reason = str(job.result.get("error") or job.result.get("reason") or "the job failed")
    if node is not None:
        return {"code": "node_execution_error", "message": reason, "node_id": node.get("node_id"),
                "class_type": node.get("node_type"), "traceback": None}
    code = "invalid_workflow" if "invalid graph" in reason or "rejected" in reason else "job_failed"
    return {"code": code, "message": reason, "node_id": None, "class_type": None, "traceback": None}


def queue_position(job: JobRecord, events: list[JobEvent], ahead: int) -> int | None:
    """Jobs before this one: at the bridge (``ahead``) while it waits for a pod, then in its pod's queue."""
    if job.status == "queued":
        return ahead
    if job.status not in ("preparing", "submitted"):
        return None
    position = next((e.data.get("position") for e in reversed(events) if e.type == "submitted"), None)
    return position if isinstance(position, int) and not isinstance(position, bool) else 0


def job_view(job: JobRecord, events: list[JobEvent], outputs: list[AssetRecord], base: str, links: ContentLinks,
             retention_s: float, canceling: bool = False, ahead: int = 0) -> dict[str, Any]:
    tracker = ProgressTracker(job.request.get("workflow"))
    for event in events:
        tracker.feed(event)
    started = job.result.get("started_at")
    finished = job.result.get("finished_at")
    status = STATUS.get(job.status, job.status)
    if canceling and status not in ("succeeded", "failed", "canceled"):
        status = "canceling"
    metrics = {"queue_ms": int(((started or finished or time.time()) - job.created) * 1000),
               "execution_ms": int(((finished or time.time()) - started) * 1000) if started else None}
    url = f"{base}{PREFIX}/jobs/{job.id}"
    return {"id": job.id, "status": status, "created_at": iso(job.created), "started_at": iso(started),
            "completed_at": iso(finished) if status in ("succeeded", "failed", "canceled") else None,
            "expires_at": iso(job.created + retention_s), "queue_position": queue_position(job, events, ahead),
            "progress": tracker.snapshot(), "outputs": [output_view(a, base, links) for a in outputs],
            "error": job_error(job, events), "metrics": metrics, "metadata": job.request.get("labels") or {},
            "urls": {"self": url, "events": f"{url}/events", "cancel": f"{url}/cancel"}}
