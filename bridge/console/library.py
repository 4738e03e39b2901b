"""The console's LoRA library: search and filter, a LoRA's detail (its file, key coverage, strength sweep),
upload by drag and drop, edit, delete. Every change goes through the same registry calls as the API."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..errors import LoraBridgeError
from ..http import loras as api_loras
from ..http.errors import classify
from ..http.routing import DB, GENERATIONS, REGISTRY, Inputs, validate
from ..http.schemas import JobPath
from ..jobs.previews import STRENGTHS, SWEEP_TEMPLATES, StrengthSweeps, Sweep
from ..jobs.records import LORA_STATUSES, LoraRecord
from ..jobs.requests import LoraPatch
from ..jobs.states import is_terminal
from ..lorafiles.families import FAMILY_NAMES, VARIANTS
from .render import render
from .session import PREFIX

SWEEPS = web.AppKey("console_sweeps", StrengthSweeps)
FILTERS = ("q", "owner", "family", "variant", "status", "tag")


def problem(exc: LoraBridgeError, what: str = "") -> web.Response:
    """A refusal in words (after ``what`` was refused), as a fragment the page shows where the user acted."""
    status, _ = classify(exc)
    return render("_problem.html", status=status, message=f"{what}{exc}")


def path_id(request: web.Request) -> str:
    """The ``{id}`` of the URL, checked as the API checks it."""
    return str(validate(JobPath, {"id": request.match_info["id"]}, "path").id)


def _matches(rec: LoraRecord, wanted: dict[str, str]) -> bool:
    owner = f"{rec.owner_kind or ''} {rec.owner_id or ''}".strip()
    text = " ".join(str(v) for v in (rec.name, rec.trigger_word, owner, rec.family, rec.variant, *rec.tags) if v).lower()
    return ((not wanted["q"] or all(word in text for word in wanted["q"].lower().split()))
            and (not wanted["owner"] or wanted["owner"].lower() in owner.lower())
            and all(not wanted[k] or str(getattr(rec, k) or "") == wanted[k] for k in ("family", "variant", "status")))


async def library(request: web.Request) -> web.Response:
    """The library page, or (for htmx) just its rows, filtered by the query."""
    wanted = {k: request.query.get(k, "").strip()[:200] for k in FILTERS}
    entries = [r for r in await request.app[DB].list_loras(tag=wanted["tag"] or None) if _matches(r, wanted)]
    context: dict[str, Any] = {"loras": entries, "wanted": wanted, "families": FAMILY_NAMES, "variants": VARIANTS,
               "statuses": LORA_STATUSES}
    return render("_lora_rows.html" if request.headers.get("HX-Request") else "library.html", **context)


async def _sweep_view(request: web.Request, lora: LoraRecord) -> dict[str, Any]:
    sweep: Sweep | None = await request.app[SWEEPS].store.current(lora)
    cells = []
    if sweep is not None:
        for strength, job_id in sweep.jobs:
            job = await request.app[DB].get_job(job_id)
            cells.append({"strength": strength, "job": job, "ended": is_terminal(job.status),
                          "outputs": job.result.get("outputs") or []})
    return {"lora": lora, "sweep": sweep, "cells": cells, "statuses": LORA_STATUSES, "done": all(c["ended"] for c in cells),
            "can_sweep": lora.status == "ready" and (lora.family or "") in SWEEP_TEMPLATES, "strengths": STRENGTHS}


async def detail(request: web.Request) -> web.Response:
    """One LoRA: its fields, what its file holds (read from its header now), its sweep, the edit form."""
    lora = await request.app[DB].get_lora(path_id(request))
    info, unreadable = None, None
    if lora.source:
        try:
            info = await request.app[REGISTRY].inspect(lora.source)
        except LoraBridgeError as exc:
            unreadable = str(exc)
    return render("lora.html", info=info, unreadable=unreadable, **await _sweep_view(request, lora))


async def upload(request: web.Request) -> web.Response:
    """A dropped file, checked and registered as ``POST /v1/loras/upload`` does; the new row, or the refusal."""
    try:
        answer = await api_loras.upload_lora(request, Inputs())
    except LoraBridgeError as exc:
        return problem(exc, "Not added: ")
    assert isinstance(answer, web.Response) and answer.text is not None
    lora = await request.app[DB].get_lora(json.loads(answer.text)["id"])
    return render("_uploaded.html", status=201, lora=lora)


def _patch(form: dict[str, str]) -> LoraPatch:
    owner_kind, owner_id = form.get("owner_kind", ""), form.get("owner_id", "").strip()
    fields: dict[str, Any] = {"name": form.get("name", "").strip(), "trigger_word": form.get("trigger_word", "").strip() or None,
                              "tags": [t.strip() for t in form.get("tags", "").split(",") if t.strip()]}
    if form.get("status"):
        fields["status"] = form["status"]
    if owner_kind and owner_id:
        fields.update(owner_kind=owner_kind, owner_id=owner_id)
    return validate(LoraPatch, fields, "form")


async def edit(request: web.Request) -> web.Response:
    """Change the name, owner, trigger word and tags; the updated fields, or the refusal in words."""
    lora_id = path_id(request)
    form = {k: str(v) for k, v in (await request.post()).items()}
    try:
        lora = await request.app[REGISTRY].update(lora_id, _patch(form))
    except LoraBridgeError as exc:
        return problem(exc)
    return render("_lora_fields.html", lora=lora, saved=True)


async def delete(request: web.Request) -> web.Response:
    await request.app[DB].delete_lora(path_id(request))
    return web.Response(status=204, headers={"HX-Redirect": f"{PREFIX}/loras"})


async def sweep(request: web.Request) -> web.Response:
    """``GET``: the LoRA's strength sweep as it stands (the strip polls itself until every image is in);
    ``POST``: start a new one on the fleet."""
    lora = await request.app[DB].get_lora(path_id(request))
    if request.method == "POST":
        try:
            await request.app[SWEEPS].start(lora)
        except LoraBridgeError as exc:
            return problem(exc)
    return render("_sweep.html", **await _sweep_view(request, lora))


def setup(app: web.Application, preview_params: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """Make the sweeps; the library's routes."""
    app[SWEEPS] = StrengthSweeps(app[GENERATIONS], preview_params)
    return [("GET", "/loras", library), ("POST", "/loras/upload", upload), ("GET", "/loras/{id}", detail),
            ("POST", "/loras/{id}", edit), ("POST", "/loras/{id}/delete", delete), ("GET", "/loras/{id}/sweep", sweep),
            ("POST", "/loras/{id}/sweep", sweep)]
