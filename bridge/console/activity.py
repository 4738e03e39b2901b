"""The console's jobs and trainings: a live list (filtered by owner, LoRA and state), a job's detail with its
LoRAs, path, pod, timings, cost and outputs, and a training's progress, ETA, loss curve and validation image.
Progress reaches the page over the job's own event stream (``/ui/jobs/{id}/events``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..http import generations as api_generations
from ..http.routing import DB, Inputs, validate
from ..http.schemas import EventsHeaders, EventsQuery, JobPath, OutputPath
from ..http.streams import generation_events
from ..jobs.records import JobEvent, JobRecord
from ..jobs.states import JobState, is_terminal
from ..jobs.trainings import KIND as TRAINING
from .charts import loss_chart
from .library import path_id
from .render import render
from .session import PREFIX, see_other

RECENT = 200  # the jobs a list looks through (newest first)
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov")


@dataclass(frozen=True)
class Progress:
    """Where a running job is: the step of the node it runs, and the ETA that step rate gives."""

    value: int
    max: int
    node: str | None
    stage: str | None
    eta_s: float | None

    @property
    def percent(self) -> int:
        return int(100 * self.value / self.max) if self.max else 0


def progress_of(job: JobRecord, events: list[JobEvent]) -> Progress | None:
    """The latest step of ``job`` from its events (None before its first step)."""
    step = next((e.data for e in reversed(events) if e.type == "progress"), None)
    node = next((e.data.get("node") for e in reversed(events) if e.type in ("executing", "progress")), None)
    if step is None:
        return Progress(0, 0, node, None, None) if node else None
    value, most = int(step.get("value") or 0), int(step.get("max") or 0)
    started = job.result.get("started_at")
    eta = (time.time() - started) / value * (most - value) if started and value and most >= value else None
    return Progress(value, most, node, step.get("stage"), eta)


def _owner(job: JobRecord) -> str:
    request = job.request
    for kind in ("character", "brand"):
        if request.get(f"{kind}_id") is not None:
            return f"{kind} {request[f'{kind}_id']}"
    return ""


def _loras(job: JobRecord) -> list[dict[str, Any]]:
    return list(job.result.get("resolved") or [])


def _wanted(job: JobRecord, wanted: dict[str, str]) -> bool:
    lora = wanted["lora"].lower()
    return ((not wanted["state"] or job.status == wanted["state"])
            and (not wanted["owner"] or wanted["owner"].lower() in _owner(job).lower())
            and (not lora or any(lora in f"{r.get('lora_id')} {r.get('name')}".lower() for r in _loras(job))))


async def _rows(request: web.Request, kind: str, wanted: dict[str, str]) -> list[dict[str, Any]]:
    db = request.app[DB]
    jobs = [j for j in await db.recent_jobs(RECENT) if j.kind == kind and _wanted(j, wanted)]
    rows = []
    for job in jobs:
        running = not is_terminal(job.status)
        rows.append({"job": job, "owner": _owner(job), "loras": _loras(job), "running": running,
                     "progress": progress_of(job, await db.events(job.id)) if running else None})
    return rows


async def jobs(request: web.Request) -> web.Response:
    """The live list of generations (the rows alone for htmx, which refreshes them while any runs)."""
    wanted = {k: request.query.get(k, "").strip()[:200] for k in ("state", "owner", "lora")}
    rows = await _rows(request, "generation", wanted)
    context: dict[str, Any] = {"rows": rows, "wanted": wanted, "states": [s.value for s in JobState], "live": any(r["running"] for r in rows)}
    return render("_job_rows.html" if request.headers.get("HX-Request") else "jobs.html", **context)


def _outputs(job: JobRecord, base: str) -> list[dict[str, Any]]:
    return [{"url": f"{base}/outputs/{n}", "name": name, "video": str(name).lower().endswith(VIDEO_SUFFIXES)}
            for n, name in enumerate(job.result.get("outputs") or [])]


async def job(request: web.Request) -> web.Response:
    """One job: request, LoRAs and strengths, warnings, path, pod, timings, cost, outputs; live while it runs."""
    db = request.app[DB]
    record = await db.get_job(path_id(request))
    if record.kind == TRAINING:
        return see_other(f"{PREFIX}/trainings/{record.id}")
    events = await db.events(record.id)
    return render("job.html", job=record, result=record.result, owner=_owner(record), events=events,
                  progress=progress_of(record, events), ended=is_terminal(record.status),
                  outputs=_outputs(record, request.path.rstrip("/")))


async def trainings(request: web.Request) -> web.Response:
    wanted = {k: request.query.get(k, "").strip()[:200] for k in ("state", "owner", "lora")}
    rows = await _rows(request, TRAINING, wanted)
    return render("trainings.html", rows=rows, live=any(r["running"] for r in rows))


async def training(request: web.Request) -> web.Response:
    """One training: progress with ETA, the loss curve, the validation image, the LoRA it made."""
    db = request.app[DB]
    record = await db.get_job(path_id(request))
    events = await db.events(record.id)
    losses = next((e.data.get("loss") or [] for e in reversed(events) if e.type == "loss"), [])
    lora_id = next((e.data["lora_id"] for e in events if e.data.get("lora_id")), None)
    base = f"{PREFIX}/jobs/{record.id}"
    return render("training.html", job=record, result=record.result, events=events, progress=progress_of(record, events),
                  ended=is_terminal(record.status), chart=loss_chart(losses), lora_id=lora_id, outputs=_outputs(record, base))


async def events(request: web.Request) -> web.StreamResponse:
    """The job's Server-Sent Events, as ``/v1/generations/{id}/events`` sends them, for the console's pages."""
    inputs = Inputs(path=validate(JobPath, dict(request.match_info), "path"), query=validate(EventsQuery, {}, "query"),
                    headers=validate(EventsHeaders, dict(request.headers), "header"))
    return await generation_events(request, inputs)


async def output(request: web.Request) -> web.StreamResponse:
    """Output n of a job (a generation's image or video, a training's validation image)."""
    inputs = Inputs(path=validate(OutputPath, dict(request.match_info), "path"))
    return await api_generations.generation_output(request, inputs)


def routes() -> list[tuple[str, str, Any]]:
    return [("GET", "/jobs", jobs), ("GET", "/jobs/{id}", job), ("GET", "/jobs/{id}/events", events),
            ("GET", "/jobs/{id}/outputs/{n}", output), ("GET", "/trainings", trainings), ("GET", "/trainings/{id}", training)]
