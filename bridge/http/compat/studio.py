"""Seed 004, the character studio: its ``lora_models`` view (camelCase, ``baseModel`` names such
as ``z-image-turbo``, ``flux``, ``one-2.2``), generations whose records carry ``loraModelId`` and
``triggerWord``, and the trainer's signed webhook that makes a LoRA ``ready``.

The webhook is signed like the bridge's own (``webhooks.py``: HMAC-SHA256 over
``"{timestamp}.{body}"`` in ``X-LoraBridge-Signature``, ``X-LoraBridge-Timestamp`` at most five
minutes old) with ``LORA_BRIDGE_TRAINER_SECRET``. Its ``s3Key`` (in ``LORA_BRIDGE_TRAINER_BUCKET``)
is read whole and inspected before the LoRA becomes ``ready``: a file that cannot be read, is not
a LoRA, or is of another family than the ``baseModel`` claimed is refused and nothing changes.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any, Literal

from aiohttp import web
from pydantic import Field, StrictBool, StrictInt, StrictStr

from ...errors import GenerationRefused, RequestInvalid, Unauthorized
from ...jobs import webhooks
from ...jobs.records import JobRecord, LoraRecord
from ...jobs.requests import OwnerId, Text
from ...lorafiles.families import BASE_MODEL_ALIASES, FAMILY_NAMES
from ...lorafiles.inspect import verify_source
from ...lorafiles.sources import parse_source
from ...openapi import RouteSpec
from ..routing import DB, POLICY, REGISTRY, SETTINGS, Handler, Inputs
from ..schemas import Closed, GenerationCreate, JobPath
from .common import PREFIX, WaitFirst, output_urls, run, template_params

if TYPE_CHECKING:  # the checker sees text; pydantic (and so the OpenAPI document) the closed list
    BaseModelName = str
else:
    BaseModelName = Literal[tuple(BASE_MODEL_ALIASES)]
TEMPLATES = {"z-image-turbo": "z_image_txt2img", "flux": "flux_txt2img", "qwen-image": "qwen_image_txt2img",
             "one-2.1": "wan21_t2v", "wan-2.1": "wan21_t2v", "one-2.2": "wan22_t2v", "wan-2.2": "wan22_t2v"}
STATUSES = {"pending": "pending", "training": "training", "validating": "training", "ready": "ready", "failed": "failed"}
S3Key = Annotated[StrictStr, Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z0-9!_.*'()/ -]+$")]


def base_model(rec: LoraRecord) -> str | None:
    """The studio's name of a LoRA's base model: the one it was registered with, else its family's first alias."""
    named = rec.metadata.get("baseModel")
    if named in BASE_MODEL_ALIASES:
        return named
    return next((alias for alias, family in BASE_MODEL_ALIASES.items() if family == rec.family), None)


def lora_model_view(rec: LoraRecord) -> dict[str, Any]:
    """A registry entry as the studio's ``lora_models`` row (``modelPath``: the S3 key)."""
    source, meta = rec.source or "", rec.metadata
    return {"id": rec.id, "characterId": rec.owner_id if rec.owner_kind == "character" else None,
            "name": rec.name, "status": STATUSES.get(rec.status, rec.status), "baseModel": base_model(rec),
            "triggerWord": rec.trigger_word, "modelPath": parse_source(source).key if source.startswith("s3://") else None,
            "modelUrl": meta.get("modelUrl"), "version": rec.version, "createdAt": rec.created,
            "updatedAt": rec.updated}


class LoraModelQuery(Closed):
    characterId: Annotated[StrictStr, Field(min_length=1, max_length=128)] | None = None
    status: Literal["pending", "training", "ready", "failed"] | None = None
    baseModel: BaseModelName | None = None


class LoraModelCreate(Closed):
    """A LoRA the trainer is about to train (``pending`` until its webhook)."""

    characterId: OwnerId
    baseModel: BaseModelName
    triggerWord: Annotated[StrictStr, Field(min_length=1, max_length=100, pattern=r"^[^,\n]+$")]
    name: Annotated[StrictStr, Field(min_length=1, max_length=200)] | None = None


class TrainerWebhook(Closed):
    """What the trainer posts when a training ends."""

    loraModelId: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    status: Literal["completed", "failed"]
    s3Key: S3Key | None = Field(None, description="completed: the LoRA's key in LORA_BRIDGE_TRAINER_BUCKET")
    s3Url: Annotated[StrictStr, Field(max_length=2048, pattern=r"^https?://")] | None = None
    baseModel: BaseModelName | None = Field(None, description="the base model trained on (checked against the file)")
    triggerWord: Annotated[StrictStr, Field(min_length=1, max_length=100)] | None = None
    error: Text | None = None


class StudioGeneration(Closed):
    """A studio generation: the character's ready LoRA of ``baseModel`` is used when it has one."""

    characterId: OwnerId
    prompt: Annotated[StrictStr, Field(min_length=1, max_length=4000)]
    baseModel: BaseModelName
    loraEnabled: StrictBool = True
    loraStrength: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = Field(1.0, description="0.0-1.0")
    width: Annotated[StrictInt, Field(ge=16, le=4096, multiple_of=16)] | None = None
    height: Annotated[StrictInt, Field(ge=16, le=4096, multiple_of=16)] | None = None
    seed: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)] | None = None
    steps: Annotated[StrictInt, Field(ge=1, le=100)] | None = None


def generation_view(job: JobRecord) -> dict[str, Any]:
    """A job as the studio's generation record: ``input`` with ``loraModelId`` and ``triggerWord`` once
    the character's LoRA is in the graph (a LoRA dropped on the way is not named)."""
    view, request = job.view(), job.request
    owner, applied = f"character {request.get('character_id')}", {a["name"] for a in job.result.get("applied", [])}
    used = next((r for r in view.get("resolved", []) if r["for"] == owner and f"lora-{r['lora_id']}" in applied), None)
    lora = {"loraModelId": used["lora_id"], "triggerWord": used["trigger_word"]} if used else {}
    return {"id": view["id"], "status": view["status"], "input": {"prompt": request.get("params", {}).get("prompt"),
            "characterId": request.get("character_id"), **lora}, "outputs": output_urls(view),
            "warnings": view.get("warnings", []), "error": view.get("error"), "createdAt": view["created"],
            "updatedAt": view["updated"]}


async def list_models(request: web.Request, inputs: Inputs) -> web.Response:
    q: LoraModelQuery = inputs.query
    family = BASE_MODEL_ALIASES[q.baseModel] if q.baseModel else None
    rows = await request.app[DB].list_loras(owner_kind="character" if q.characterId else None, owner_id=q.characterId,
                                            family=family)
    views = [lora_model_view(r) for r in rows]
    return web.json_response([v for v in views if q.status is None or v["status"] == q.status])


async def get_model(request: web.Request, inputs: Inputs) -> web.Response:
    return web.json_response(lora_model_view(await request.app[DB].get_lora(inputs.path.id)))


async def create_model(request: web.Request, inputs: Inputs) -> web.Response:
    body: LoraModelCreate = inputs.body
    rec = await request.app[DB].add_lora({
        "name": body.name or f"{body.baseModel}-character-{body.characterId}", "owner_kind": "character",
        "owner_id": str(body.characterId), "status": "pending", "family": BASE_MODEL_ALIASES[body.baseModel],
        "trigger_word": body.triggerWord, "metadata": {"baseModel": body.baseModel}})
    return web.json_response(lora_model_view(rec), status=201)


def _check_signature(request: web.Request, raw: bytes) -> None:
    secret = request.app[SETTINGS].trainer_secret
    if not secret:
        raise Unauthorized("the trainer webhook needs LORA_BRIDGE_TRAINER_SECRET to be configured")
    if not webhooks.verify_signature(secret, request.headers.get(webhooks.TIMESTAMP_HEADER, ""), raw,
                                     request.headers.get(webhooks.SIGNATURE_HEADER, "")):
        raise Unauthorized(f"bad or stale signature ({webhooks.SIGNATURE_HEADER}, {webhooks.TIMESTAMP_HEADER})")


async def trainer_webhook(request: web.Request, inputs: Inputs) -> web.Response:
    """A training ended: ``failed`` records the error; ``completed`` verifies the file, then ``ready``."""
    _check_signature(request, await request.read())
    body: TrainerWebhook = inputs.body
    db = request.app[DB]
    rec = await db.get_lora(body.loraModelId)  # unknown: 404, nothing changes
    if body.status == "failed":
        meta = {**rec.metadata, "error": body.error or "the trainer reported a failure"}
        return web.json_response(lora_model_view(await db.update_lora(rec.id, {"status": "failed", "metadata": meta})))
    if body.s3Key is None:
        raise RequestInvalid("body.s3Key: a completed training needs the LoRA's S3 key")
    bucket = request.app[SETTINGS].trainer_bucket
    if not bucket:
        raise GenerationRefused("trainer webhooks need LORA_BRIDGE_TRAINER_BUCKET (the bucket of the s3Key)")
    if ".." in body.s3Key.split("/") or body.s3Key.startswith("/"):
        raise RequestInvalid("body.s3Key: must be a key inside the bucket (no '..', no leading '/')")
    source = f"s3://{bucket}/{body.s3Key}"
    await request.app[REGISTRY].check_source_allowed(source)
    policy = request.app[POLICY]
    info = await asyncio.get_running_loop().run_in_executor(None, verify_source, source, policy)
    claimed = body.baseModel or base_model(rec)
    family = BASE_MODEL_ALIASES[claimed] if claimed else rec.family
    if family and info.family != family:
        raise GenerationRefused(f"{body.s3Key} is a {FAMILY_NAMES.get(info.family, info.family)} LoRA, not "
                                f"{FAMILY_NAMES.get(family, family)} (baseModel {claimed}); the LoRA stays {rec.status}")
    meta = {**rec.metadata, **info.metadata, "s3Key": body.s3Key, **({"baseModel": claimed} if claimed else {}),
            **({"modelUrl": body.s3Url} if body.s3Url else {})}
    fields = {"status": "ready", "source": source, "sha256": info.sha256, "size": info.size, "rank": info.rank,
              "family": info.family, "variant": info.variant, "metadata": meta,
              "trigger_word": body.triggerWord or rec.trigger_word or (info.trigger_words[0] if info.trigger_words else None)}
    return web.json_response(lora_model_view(await db.update_lora(rec.id, fields)))


async def generate(request: web.Request, inputs: Inputs) -> web.Response:
    body: StudioGeneration = inputs.body
    template = TEMPLATES[body.baseModel]
    params = template_params(request, template, {"prompt": body.prompt, "width": body.width, "height": body.height,
                                                 "seed": body.seed, "steps": body.steps})
    owner = {"character_id": body.characterId, "lora_strength": body.loraStrength} if body.loraEnabled else {}
    job = await run(request, GenerationCreate(template=template, params=params, **owner), inputs.query.waits)
    return web.json_response(generation_view(job), status=200 if inputs.query.waits else 202)


async def get_generation(request: web.Request, inputs: Inputs) -> web.Response:
    return web.json_response(generation_view(await request.app[DB].get_job(inputs.path.id)))


R = RouteSpec
ROUTES: list[tuple[RouteSpec, Handler]] = [
    (R("GET", f"{PREFIX}/studio/lora-models", "[seed 004] LoRA models (camelCase; baseModel names)", query=LoraModelQuery),
     list_models),
    (R("POST", f"{PREFIX}/studio/lora-models", "[seed 004] A LoRA about to be trained (pending until the trainer's webhook)",
       body=LoraModelCreate, responses={201: "created", 400: "invalid request"}), create_model),
    (R("GET", f"{PREFIX}/studio/lora-models/{{id}}", "[seed 004] One LoRA model", path_params=JobPath,
       responses={200: "LoRA model", 404: "unknown"}), get_model),
    (R("POST", f"{PREFIX}/studio/lora-webhook", "[seed 004] The trainer's signed webhook: the LoRA's file is verified and "
       "becomes ready, or the training's failure is recorded", body=TrainerWebhook, auth=False,
       responses={200: "the LoRA model", 401: "bad signature", 404: "unknown LoRA",
                  422: "the file is not a LoRA of the claimed base model", 502: "the file could not be read"}),
     trainer_webhook),
    (R("POST", f"{PREFIX}/studio/generations", "[seed 004] Generate with the character's ready LoRA (trigger word first); "
       "the record has loraModelId and triggerWord", body=StudioGeneration, query=WaitFirst,
       responses={200: "the ended generation", 202: "queued (wait=false)", 400: "invalid request"}), generate),
    (R("GET", f"{PREFIX}/studio/generations/{{id}}", "[seed 004] A generation record", path_params=JobPath,
       responses={200: "generation", 404: "unknown"}), get_generation),
]
