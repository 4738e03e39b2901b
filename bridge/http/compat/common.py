"""What the seed-compatible routes share: their prefix, the parameters fixed per template, and
jobs started on the native job core (``Generations``) from a translated request."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import Field

from ...jobs.records import JobRecord
from ..routing import GENERATIONS, SETTINGS
from ..schemas import GenerationCreate, WaitQuery

PREFIX = "/compat"


class WaitFirst(WaitQuery):
    """``?wait=``: these routes answer when the job has ended unless told not to (the teams' services are synchronous)."""

    wait: Literal["true", "false", "1", "0"] = Field("true", description="answer when the job has ended (false: 202 at once)")


def template_params(request: web.Request, template: str, given: dict[str, Any]) -> dict[str, Any]:
    """The request's parameters over those ``LORA_BRIDGE_COMPAT_DEFAULTS`` fixes for ``template`` (left-out ones dropped)."""
    fixed = request.app[SETTINGS].compat_defaults.get(template, {})
    return {**fixed, **{k: v for k, v in given.items() if v is not None}}


def output_urls(view: dict[str, Any]) -> list[str]:
    """Where a job's outputs are served (the native route); ``view``: the job as ``JobRecord.view`` shows it."""
    return [f"/v1/generations/{view['id']}/outputs/{n}" for n in range(len(view.get("outputs") or []))]


async def run(request: web.Request, native: GenerationCreate, wait: bool) -> JobRecord:
    """Start ``native`` as any ``/v1/generations`` job; its record, once ended when ``wait``."""
    gens = request.app[GENERATIONS]
    job_id = await gens.start(native)
    return await gens.hub.wait_ended(job_id) if wait else await gens.db.get_job(job_id)
