"""The ``/v1/trainings`` routes: train a LoRA on a pod from a dataset (by sources, or an uploaded zip)."""

from __future__ import annotations

import asyncio

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import NotFound, RequestInvalid
from ..jobs.records import JobRecord, LoraRecord
from ..jobs.trainings import KIND as TRAINING
from ..openapi import RouteSpec
from ..pack_protocol import strict_json
from ..training.dataset import DatasetLimits
from . import schemas as s
from .generations import cancel_generation, generation_output
from .routing import DB, TRAININGS, Handler, Inputs, validate
from .streams import generation_events, generation_ws

MAX_REQUEST_PART = 1024 * 1024


def _started(job_id: str, entry: LoraRecord) -> web.Response:
    return web.json_response({"id": job_id, "status": "queued", "lora": entry.view()}, status=202)


async def _training(request: web.Request, job_id: str) -> JobRecord:
    job = await request.app[DB].get_job(job_id)
    if job.kind != TRAINING:
        raise NotFound(f"no training with id {job_id!r} (it is a generation)")
    return job


async def get_training(request: web.Request, inputs: Inputs) -> web.Response:
    return web.json_response((await _training(request, inputs.path.id)).view())


async def cancel_training(request: web.Request, inputs: Inputs) -> web.Response:
    await _training(request, inputs.path.id)
    return await cancel_generation(request, inputs)


async def create_training(request: web.Request, inputs: Inputs) -> web.Response:
    """A training whose dataset is given by URLs, S3 keys or an S3 prefix (fetched and checked first)."""
    trainings = request.app[TRAININGS]
    body: s.TrainingCreate = inputs.body
    family = trainings.check(body)  # before any dataset file is fetched
    dataset = await trainings.dataset_from_sources(body)
    return _started(*await trainings.start(body, family, dataset))


async def upload_training(request: web.Request, inputs: Inputs) -> web.Response:
    """Multipart: ``request`` (the TrainingCreate JSON) and ``dataset`` (the zip), checked whole before
    anything is stored."""
    if not request.content_type.startswith("multipart/"):
        raise RequestInvalid("body: send multipart/form-data with a 'request' part (JSON) and a 'dataset' part (zip)")
    limits = {"request": MAX_REQUEST_PART, "dataset": DatasetLimits().max_bytes}
    parts: dict[str, bytes] = {}
    try:
        async for part in await request.multipart():
            if not isinstance(part, BodyPartReader) or part.name not in limits or part.name in parts:
                raise RequestInvalid(f"body: unexpected or repeated form part {getattr(part, 'name', None)!r}")
            data = bytearray()
            while chunk := await part.read_chunk(1 << 20):
                data += chunk
                if len(data) > limits[part.name]:
                    raise RequestInvalid(f"body: the {part.name} part is over {limits[part.name]} bytes")
            parts[part.name] = bytes(data)
    except (ValueError, RuntimeError, HttpProcessingError) as exc:  # what aiohttp raises for a malformed body
        raise RequestInvalid(f"body: malformed multipart/form-data ({exc})") from None
    for name in ("request", "dataset"):
        if name not in parts:
            raise RequestInvalid(f"body: multipart field {name!r} is required")
    fields = strict_json(parts["request"])
    if not isinstance(fields, dict):
        raise RequestInvalid("request: must be a JSON object")
    body: s.TrainingCreate = validate(s.TrainingCreate, fields, "request")
    if body.dataset_urls is not None or body.dataset_s3_prefix is not None:
        raise RequestInvalid("request: the dataset is the uploaded zip; leave out dataset_urls and dataset_s3_prefix")
    trainings = request.app[TRAININGS]
    family = trainings.check(body)
    dataset = await asyncio.get_running_loop().run_in_executor(None, trainings.dataset_from_zip, body, parts["dataset"])
    return _started(*await trainings.start(body, family, dataset))


R = RouteSpec
ROUTES: list[tuple[RouteSpec, Handler]] = [
    (R("POST", "/v1/trainings", "Train a LoRA on a pod from a dataset given by URLs, S3 keys or an S3 prefix: the registry "
       "entry is created in 'training' at once; events on /v1/generations/{id}/events (and /ws)", body=s.TrainingCreate,
       responses={202: "job id and LoRA entry", 400: "invalid request", 422: "refused dataset or template",
                  502: "a dataset file could not be fetched"}), create_training),
    (R("POST", "/v1/trainings/upload", "Train a LoRA from an uploaded zip (multipart 'request' JSON + 'dataset')",
       body=s.TrainingForm, content_type="multipart/form-data",
       responses={202: "job id and LoRA entry", 400: "invalid request", 422: "refused dataset or template"}), upload_training),
    (R("GET", "/v1/trainings/{id}", "Training job: state, LoRA, settings, loss, timings, cost, validation image",
       path_params=s.JobPath, responses={200: "job", 404: "unknown"}), get_training),
    (R("DELETE", "/v1/trainings/{id}", "Cancel a training (in any state; the LoRA entry fails as cancelled)",
       path_params=s.JobPath, responses={200: "job", 404: "unknown"}), cancel_training),
    (R("GET", "/v1/trainings/{id}/events", "Server-Sent Events of a training (the generations' stream)",
       path_params=s.JobPath, query=s.EventsQuery, headers=s.EventsHeaders,
       responses={200: "text/event-stream", 404: "unknown"}), generation_events),
    (R("GET", "/v1/trainings/{id}/ws", "WebSocket twin of a training's events", path_params=s.JobPath, query=s.EventsQuery,
       responses={101: "upgrade", 404: "unknown"}), generation_ws),
    (R("GET", "/v1/trainings/{id}/outputs/{n}", "A training's output n (the validation image)", path_params=s.OutputPath,
       responses={200: "file", 404: "unknown"}), generation_output),
]
