"""``/api/v2/assets``: upload (a LoRA is inspected and registered; any other file is an input for the pods),
mint over bytes the bridge has (``from-hash``: an asset's, or a registry LoRA's), probe by hash, read
metadata and content (Range; signed short-lived URLs; S3 outputs by redirect)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path, PurePosixPath
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ...errors import BlobNotFound, HashMismatch, RequestInvalid
from ...jobs.assets import StagedBlob
from ...jobs.records import AssetRecord
from ...jobs.requests import LoraCreate
from ...jobs.uploads import StagedUpload
from ...lorafiles.inspect import inspect_file
from ...lorafiles.validate import check_extension, safe_name
from ..routing import DB, GENERATIONS, POLICY, REGISTRY, Inputs
from .jobs import LINKS, base_url
from .views import asset_view

TEXT_FIELDS = ("content_type", "file_path", "expected_hash")
MEDIA_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$")  # RFC 6838
LORA_SUFFIX = ".safetensors"


def _is_lora_path(file_path: str) -> bool:
    """Whether an upload's ``file_path`` names a LoRA (``x.safetensors`` or ``models/loras/x.safetensors``);
    other model files and pickle formats are refused (``check_extension``)."""
    path = PurePosixPath(file_path)
    if path.suffix.lower() in (LORA_SUFFIX, ".ckpt", ".pt", ".pth", ".bin"):
        check_extension(path.name)  # safetensors only: pickle files are refused by name
        if path.parent != PurePosixPath(".") and path.parent != PurePosixPath("models/loras"):
            raise RequestInvalid(f"file_path {file_path!r}: model files are LoRAs here (models/loras/<name>.safetensors)")
        return True
    return False


async def _read_form(request: web.Request) -> tuple[dict[str, str], list[str], StagedBlob]:
    """The multipart form, the file hashed and staged as it arrives (discarded if the form is refused)."""
    if not request.content_type.startswith("multipart/"):
        raise RequestInvalid("expected multipart/form-data with 'file', 'content_type' and 'file_path'")
    fields: dict[str, str] = {}
    tags: list[str] = []
    staged: StagedBlob | None = None
    try:
        async for part in await request.multipart():
            name = getattr(part, "name", None)
            if name == "file" and staged is None:
                staged = await request.app[GENERATIONS].assets.stage(part, "the upload")
            elif name in TEXT_FIELDS or name == "tags":
                text = await part.text()  # type: ignore[union-attr]
                if len(text) > 1024:
                    raise RequestInvalid(f"{name}: longer than 1024 characters")
                tags.append(text) if name == "tags" else fields.__setitem__(str(name), text)
            else:
                raise RequestInvalid(f"unknown form part {name!r} (send file, content_type, file_path, expected_hash, tags)")
        missing = [k for k in ("content_type", "file_path") if not fields.get(k)] + (["file"] if staged is None else [])
        if missing:
            raise RequestInvalid(f"missing form part(s): {', '.join(missing)}")
        if not MEDIA_TYPE.match(fields["content_type"]):  # it is sent back as a header: a media type, nothing else
            raise RequestInvalid(f"content_type {fields['content_type'][:100]!r} is not a media type (type/subtype)")
    except BaseException as exc:
        if staged is not None:
            request.app[GENERATIONS].assets.discard(staged)
        if isinstance(exc, (ValueError, AssertionError, HttpProcessingError)):  # aiohttp on a broken form; not UTF-8
            raise RequestInvalid(f"malformed multipart body ({type(exc).__name__})") from None
        raise
    assert staged is not None
    return fields, tags, staged


async def _register_lora(request: web.Request, staged: StagedBlob, file_path: str) -> tuple[str, str, bool]:
    """A LoRA upload in the registry (an entry with the same blake3 is reused): (registry id, its source, reused)."""
    db = request.app[DB]
    known = [rec for rec in await db.list_loras(blake3=staged.blake3) if rec.source]
    if known:
        request.app[GENERATIONS].assets.discard(staged)
        return known[0].id, str(known[0].source), True
    name = safe_name(PurePosixPath(file_path).name)
    info = await asyncio.get_running_loop().run_in_executor(None, lambda: inspect_file(staged.path, with_hash=False))
    info.sha256 = staged.sha256
    rec = await request.app[REGISTRY].add_uploaded(LoraCreate(name=PurePosixPath(name).stem, status="ready"),
                                                   StagedUpload(name, staged.path, info), blake3=staged.blake3)
    return rec.id, str(rec.source), False


async def upload(request: web.Request, inputs: Inputs) -> web.Response:
    """``201`` new bytes, ``200`` bytes the bridge had (a new asset over them either way); a declared hash that
    does not match is ``409 hash_mismatch`` and nothing is kept."""
    assets = request.app[GENERATIONS].assets
    fields, tags, staged = await _read_form(request)
    try:
        if fields.get("expected_hash") and fields["expected_hash"] != staged.blake3:
            raise HashMismatch(f"the bytes hash to {staged.blake3}, not the expected {fields['expected_hash']}")
        had = await assets.with_hash(staged.blake3)
        lora_id, reused = None, False
        if _is_lora_path(fields["file_path"]):
            lora_id, location, reused = await _register_lora(request, staged, fields["file_path"])
        else:
            location = await assets.keep_input(staged)
    except BaseException:
        assets.discard(staged)
        raise
    asset = await assets.add(kind="lora" if lora_id else "input", blake3=staged.blake3, sha256=staged.sha256,
                             size=staged.size, content_type=fields["content_type"], file_path=fields["file_path"],
                             tags=tags, location=location, lora_id=lora_id)
    new = not had and not reused
    return web.json_response(asset_view(asset, base_url(request), request.app[LINKS], created_new=new),
                             status=201 if new else 200)


async def _mintable(request: web.Request, digest: str) -> dict[str, Any] | AssetRecord | None:
    """What bytes with this blake3 the bridge has: an asset over them, or a registry LoRA's fields."""
    had = [a for a in await request.app[GENERATIONS].assets.with_hash(digest) if a.kind != "output"]
    if had:
        return had[0]
    rec = next((r for r in await request.app[DB].list_loras(blake3=digest) if r.source and r.status == "ready"), None)
    if rec is None:
        return None
    return {"kind": "lora", "blake3": digest, "sha256": rec.sha256, "size": rec.size or 0,
            "content_type": "application/octet-stream", "file_path": f"{rec.name}{LORA_SUFFIX}",
            "location": rec.source, "lora_id": rec.id}


async def from_hash(request: web.Request, inputs: Inputs) -> web.Response:
    body = inputs.body
    found = await _mintable(request, body.hash)
    if found is None:
        raise BlobNotFound(f"no bytes with hash {body.hash} to mint an asset from")
    if isinstance(found, AssetRecord) and (body.file_path in (None, found.file_path)) and (body.tags or []) == found.tags:
        return web.json_response(asset_view(found, base_url(request), request.app[LINKS], created_new=False))
    fields = found if isinstance(found, dict) else {
        k: getattr(found, k) for k in ("kind", "blake3", "sha256", "size", "content_type", "file_path", "location", "lora_id")}
    fields = {**fields, **({"file_path": body.file_path} if body.file_path else {}), "tags": body.tags or []}
    asset = await request.app[GENERATIONS].assets.add(**fields)
    return web.json_response(asset_view(asset, base_url(request), request.app[LINKS], created_new=False), status=201)


async def head_by_hash(request: web.Request, inputs: Inputs) -> web.Response:
    return web.Response(status=200 if await _mintable(request, inputs.path.hash) is not None else 404)


async def get_asset(request: web.Request, inputs: Inputs) -> web.Response:
    asset = await request.app[GENERATIONS].assets.get(inputs.path.id)
    return web.json_response(asset_view(asset, base_url(request), request.app[LINKS]))


async def content(request: web.Request, inputs: Inputs) -> web.StreamResponse:
    """The bytes (``Range`` answered 206, or 416); bytes in S3 by a redirect to a presigned URL."""
    asset = await request.app[GENERATIONS].assets.get(inputs.path.id)
    if asset.location.startswith("s3://"):
        bucket, _, key = asset.location.removeprefix("s3://").partition("/")
        endpoint = request.app[POLICY].s3_endpoint

        def presign() -> str:
            import boto3

            return str(boto3.client("s3", endpoint_url=endpoint).generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=3600))

        return web.Response(status=302, headers={"Location": await asyncio.get_running_loop().run_in_executor(None, presign)})
    path = Path(asset.location)
    if not path.is_file():
        raise BlobNotFound(f"the bytes of asset {asset.id} are not on this replica")
    media = asset.content_type if MEDIA_TYPE.match(asset.content_type) else "application/octet-stream"
    return web.FileResponse(path, headers={"Content-Type": media})
