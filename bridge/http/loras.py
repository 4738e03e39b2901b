"""The ``/v1/loras`` routes: the LoRA registry (register by source, upload, change, list, delete)."""

from __future__ import annotations

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import RequestInvalid
from ..jobs.uploads import StagedUpload
from ..openapi import RouteSpec
from . import schemas as s
from .routing import DB, REGISTRY, UPLOADS, Handler, Inputs, validate


async def create_lora(request: web.Request, inputs: Inputs) -> web.Response:
    return web.json_response((await request.app[REGISTRY].register(inputs.body)).view(), status=201)


async def list_loras(request: web.Request, inputs: Inputs) -> web.Response:
    return web.json_response({"loras": [r.view() for r in await request.app[DB].list_loras(**inputs.query.filters())]})


async def get_lora(request: web.Request, inputs: Inputs) -> web.Response:
    return web.json_response((await request.app[DB].get_lora(inputs.path.id)).view())


async def lora_metadata(request: web.Request, inputs: Inputs) -> web.Response:
    return web.json_response((await request.app[DB].get_lora(inputs.path.id)).metadata)


async def patch_lora(request: web.Request, inputs: Inputs) -> web.Response:
    return web.json_response((await request.app[REGISTRY].update(inputs.path.id, inputs.body)).view())


async def delete_lora(request: web.Request, inputs: Inputs) -> web.Response:
    await request.app[DB].delete_lora(inputs.path.id)
    return web.Response(status=204)


UPLOAD_PARTS = ("file", "low_noise_file")  # a single LoRA, or a Wan 2.2 pair's high- and low-noise files


async def upload_lora(request: web.Request, inputs: Inputs) -> web.Response:
    """Multipart ``file`` (+ ``low_noise_file`` for a Wan 2.2 pair) + ``UploadFields``: staged, checked
    whole, then kept and registered."""
    if not request.content_type.startswith("multipart/"):
        raise RequestInvalid("body: send multipart/form-data with a 'file' part (a .safetensors LoRA)")
    uploads = request.app[UPLOADS]
    texts: dict[str, str] = {}
    staged: dict[str, StagedUpload] = {}
    try:
        try:
            async for part in await request.multipart():
                if not isinstance(part, BodyPartReader):
                    raise RequestInvalid("body: nested multipart parts are not accepted")
                if part.name in UPLOAD_PARTS and part.name not in staged:
                    staged[part.name] = await uploads.stage(part)
                elif part.name and part.name not in UPLOAD_PARTS and part.name not in texts:
                    texts[part.name] = (await part.text()).strip()
                else:
                    raise RequestInvalid(f"body: unexpected or repeated form part {part.name!r}")
        except (ValueError, RuntimeError, HttpProcessingError) as exc:  # what aiohttp raises for a malformed body
            raise RequestInvalid(f"body: malformed multipart/form-data ({exc})") from None
        if "file" not in staged:
            raise RequestInvalid("body: multipart field 'file' is required")
        lora = validate(s.UploadFields, {k: v for k, v in texts.items() if v}, "form").lora(staged["file"].filename)
    except BaseException:
        for upload in staged.values():
            uploads.discard(upload)
        raise
    entry = await request.app[REGISTRY].add_uploaded(lora, staged["file"], staged.get("low_noise_file"))
    return web.json_response(entry.view(), status=201)


R = RouteSpec
ROUTES: list[tuple[RouteSpec, Handler]] = [
    (R("POST", "/v1/loras", "Register a LoRA (S3 key or URL; header inspected for what is left out)", body=s.LoraCreate,
       responses={201: "created", 422: "the source cannot be used"}), create_lora),
    (R("GET", "/v1/loras", "List LoRAs", query=s.LoraQuery), list_loras),
    (R("POST", "/v1/loras/upload", "Upload a .safetensors LoRA (multipart 'file' + fields) and register it",
       body=s.UploadForm, content_type="multipart/form-data",
       responses={201: "created", 413: "over the size limit", 422: "not a usable LoRA"}),
     upload_lora),
    (R("GET", "/v1/loras/{id}", "One LoRA", path_params=s.JobPath, responses={200: "LoRA", 404: "unknown"}), get_lora),
    (R("PATCH", "/v1/loras/{id}", "Update a LoRA", path_params=s.JobPath, body=s.LoraPatch,
       responses={200: "LoRA", 404: "unknown"}), patch_lora),
    (R("DELETE", "/v1/loras/{id}", "Delete a LoRA", path_params=s.JobPath, responses={204: "deleted", 404: "unknown"}),
     delete_lora),
    (R("GET", "/v1/loras/{id}/metadata", "The LoRA file's metadata", path_params=s.JobPath,
       responses={200: "metadata", 404: "unknown"}), lora_metadata),
]
