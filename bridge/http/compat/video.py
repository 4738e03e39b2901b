"""Seed 000, the video backend: its generation parameters (``model_type``, ``lora_path``,
``lora_strength`` 0.0–2.0, ``image_path``) on the Wan 2.2 templates, and progress over a
WebSocket as ``progress_update`` / ``task_completed`` / ``task_failed`` messages.

``image_path`` is a source the bridge reads into an input asset and uploads to the chosen pod
with the job (the same path as a Comfy API v2 input asset), an asset id, or a file already in
the pods' input folder.

``lora_path`` is a registry name (or id), or a source (``s3://``, ``https://``, a path under
the allowed roots) that is inspected and registered on first use. A name the registry does not
know runs without a LoRA, with a warning (the seed's graceful degradation); a source that
cannot be read, or a pickle file, is refused with the reason.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

from aiohttp import web
from pydantic import Field, StrictInt, StrictStr, TypeAdapter, ValidationError, field_validator, model_validator

from ...errors import NotFound
from ...jobs.records import JobRecord
from ...jobs.requests import AssetInfo, AssetReference
from ...jobs.states import is_terminal
from ...lorafiles.sources import parse_source
from ...openapi import RouteSpec
from ...pack_protocol import FileName
from ..routing import DB, GENERATIONS, REGISTRY, SETTINGS, Handler, Inputs
from ..schemas import Closed, GenerationCreate, JobPath, LoraCreate, LoraRef
from ..streams import job_events
from .common import PREFIX, output_urls, run, template_params

MODEL_TYPES = {"t2v-A14B": "wan22_t2v", "i2v-A14B": "wan22_i2v"}
if TYPE_CHECKING:  # the checker sees text; pydantic (and so the OpenAPI document) the closed list
    ModelType = str
else:
    ModelType = Literal[tuple(MODEL_TYPES)]
IS_SOURCE = re.compile(r"^(s3|https?|file)://|^/")
STAGES = {"queued": 0, "preparing": 5, "assigned": 8, "submitted": 10, "running": 12}


class VideoRequest(Closed):
    """A generation as the video backend's ``GenerationParams`` describe it."""

    prompt: Annotated[StrictStr, Field(min_length=1, max_length=4000)]
    model_type: ModelType = Field(description="t2v-A14B (text to video) or i2v-A14B (image to video)")
    image_path: Annotated[StrictStr, Field(min_length=1, max_length=4096)] | None = Field(
        None, description="i2v: the start image: a source (s3://, https://, a path under the allowed roots) the bridge "
                          "reads and uploads to the chosen pod, a Comfy API v2 input asset's id, or a file in the pods' "
                          "input folder")
    lora_path: Annotated[StrictStr, Field(min_length=1, max_length=4096)] | None = Field(
        None, description="a registry LoRA's name or id, or a source (s3://, https://) registered on first use")
    lora_strength: Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)] = Field(1.0, description="0.0-2.0")
    negative_prompt: Annotated[StrictStr, Field(max_length=4000)] | None = None
    seed: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)] | None = None
    steps: Annotated[StrictInt, Field(ge=2, le=100)] | None = None
    guidance_scale: Annotated[float, Field(ge=0.0, le=30.0, allow_inf_nan=False)] | None = None
    num_frames: Annotated[StrictInt, Field(ge=1, le=1025)] | None = None
    fps: Annotated[StrictInt, Field(ge=1, le=60)] | None = None
    resolution: Annotated[StrictStr, Field(pattern=r"^\d{2,4}x\d{2,4}$")] | None = Field(None, description="WIDTHxHEIGHT")

    @field_validator("image_path")
    @classmethod
    def _image_path(cls, path: str | None) -> str | None:
        if path is not None and not IS_SOURCE.match(path):
            try:
                TypeAdapter(FileName).validate_python(path)
            except ValidationError:
                raise ValueError("give a source (s3://, https://) or a file name of the pods' input folder (no path)") from None
        return path

    @model_validator(mode="after")
    def _image(self) -> "VideoRequest":
        if self.model_type == "i2v-A14B" and self.image_path is None:
            raise ValueError("i2v-A14B needs 'image_path' (the start image)")
        if self.model_type == "t2v-A14B" and self.image_path is not None:
            raise ValueError("'image_path' is for i2v-A14B; t2v-A14B starts from the prompt alone")
        return self

    def params(self) -> dict[str, Any]:
        width, height = (int(v) for v in self.resolution.split("x")) if self.resolution else (None, None)
        return {"prompt": self.prompt, "negative": self.negative_prompt, "seed": self.seed, "steps": self.steps,
                "cfg": self.guidance_scale, "length": self.num_frames, "fps": self.fps, "width": width, "height": height}


async def _lora_ref(request: web.Request, body: VideoRequest) -> LoraRef | None:
    """``lora_path`` as a reference: by id or name, or a source registered (once) and referenced by id."""
    path = body.lora_path
    if path is None:
        return None
    if not IS_SOURCE.match(path):
        try:
            return LoraRef(lora_id=(await request.app[DB].get_lora(path)).id, strength_model=body.lora_strength)
        except (NotFound, ValueError):
            return LoraRef(name=path, strength_model=body.lora_strength)
    known = [r for r in await request.app[DB].list_loras(source=path) if r.status == "ready"]
    if known:
        return LoraRef(lora_id=known[0].id, strength_model=body.lora_strength)
    name = parse_source(path).display.rsplit("/", 1)[-1][:200] or "lora"  # the registry's own path: policy, header
    rec = await request.app[REGISTRY].register(LoraCreate(name=name, source=path, status="ready"))
    return LoraRef(lora_id=rec.id, strength_model=body.lora_strength)


async def _start_image(request: web.Request, path: str | None) -> str | AssetReference | None:
    """``image_path`` as the template's ``image``: a source read into an input asset (uploaded to the chosen pod
    with the job), an asset id as its reference, else the pods' own input file name."""
    if path is None:
        return None
    if IS_SOURCE.match(path):
        await request.app[REGISTRY].check_source_allowed(path)
        asset = await request.app[GENERATIONS].assets.input_from_source(path, request.app[REGISTRY].registry_policy)
        return AssetReference(type="core/ASSET", info=AssetInfo(id=asset.id))
    try:
        asset = await request.app[GENERATIONS].assets.get(path)
    except NotFound:
        return path
    return AssetReference(type="core/ASSET", info=AssetInfo(id=asset.id))


async def generate(request: web.Request, inputs: Inputs) -> web.Response:
    body: VideoRequest = inputs.body
    template = MODEL_TYPES[body.model_type]
    ref = await _lora_ref(request, body)
    params = {**body.params(), "image": await _start_image(request, body.image_path)}
    native = GenerationCreate(template=template, params=template_params(request, template, params),
                              loras=[ref] if ref else None)
    job = await run(request, native, wait=False)
    return web.json_response({"task_id": job.id, "status": job.status, "websocket": f"{PREFIX}/video/ws/{job.id}"},
                             status=202)


def task_view(job: JobRecord) -> dict[str, Any]:
    """A job as the video backend reports a task."""
    view = job.view()
    return {"task_id": view["id"], "status": view["status"], "outputs": output_urls(view), "error": view.get("error"),
            "warnings": view.get("warnings", []), "applied": view.get("applied", []), "reason": view.get("reason")}


async def get_task(request: web.Request, inputs: Inputs) -> web.Response:
    return web.json_response(task_view(await request.app[DB].get_job(inputs.path.id)))


def progress_message(job_id: str, type: str, data: dict[str, Any], last: int) -> dict[str, Any]:
    """One event of the job as the video backend's progress message (``progress`` never goes back)."""
    if type == "progress" and isinstance(data.get("max"), (int, float)) and data["max"]:
        percent = 12 + int(86 * float(data.get("value", 0)) / float(data["max"]))
    else:
        percent = STAGES.get(type, last)
    message = {"preparing": "loading LoRA", "assigned": f"on pod {data.get('pod')}", "warning": data.get("message")}.get(
        type, type.replace("_", " "))
    return {"type": "progress_update", "task_id": job_id, "stage": type, "progress": max(last, min(percent, 99)),
            "message": message}


async def ws(request: web.Request, inputs: Inputs) -> web.WebSocketResponse:
    """The task's progress as the video backend sends it, then its end; the socket closes after."""
    job_id = inputs.path.id
    await request.app[DB].get_job(job_id)
    heartbeat = request.app[SETTINGS].stream_heartbeat_s
    socket = web.WebSocketResponse(heartbeat=heartbeat)
    await socket.prepare(request)
    last = 0

    async def send(seq: int, type: str, data: dict[str, Any]) -> None:
        nonlocal last
        if is_terminal(type):
            return
        message = progress_message(job_id, type, data, last)
        last = message["progress"]
        await socket.send_str(json.dumps(message, default=str))

    async def beat() -> None:
        if socket.closed:
            raise ConnectionResetError("client went away")

    try:
        await job_events(request, job_id, 0, heartbeat, send, beat)
        job = await request.app[DB].get_job(job_id)
        if is_terminal(job.status):
            end = task_view(job)
            kind = "task_completed" if job.status == "succeeded" else "task_failed"
            await socket.send_str(json.dumps({"type": kind, **end, "progress": 100 if kind == "task_completed" else last}))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    await socket.close()
    return socket


R = RouteSpec
ROUTES: list[tuple[RouteSpec, Handler]] = [
    (R("POST", f"{PREFIX}/video/generate", "[seed 000] Start a Wan 2.2 video (model_type t2v-A14B / i2v-A14B) with an "
       "optional LoRA (lora_path, lora_strength 0.0-2.0); progress on the WebSocket", body=VideoRequest,
       responses={202: "task id and its WebSocket", 400: "invalid request", 422: "the LoRA source cannot be used"}),
     generate),
    (R("GET", f"{PREFIX}/video/tasks/{{id}}", "[seed 000] A task's state, outputs and error", path_params=JobPath,
       responses={200: "task", 404: "unknown"}), get_task),
    (R("GET", f"{PREFIX}/video/ws/{{id}}", "[seed 000] Progress messages (progress_update, then task_completed or "
       "task_failed)", path_params=JobPath, responses={101: "upgrade", 404: "unknown"}), ws),
]
