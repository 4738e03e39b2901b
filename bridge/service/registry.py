"""The LoRA registry's rules for new entries, shared by every route that registers one (the
``/v1`` API, uploads, the seed-compatible routes): sources obey the pods' fetch policy, headers
are read for what a request leaves out, and a source whose URL carries credentials (a presigned
URL) is copied into the bridge's LoRA store once and registered by that copy, so no signature or
token is ever stored."""

from __future__ import annotations

import asyncio
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from ..errors import GenerationRefused, IntegrityError
from ..lorafiles.families import variant_name
from ..lorafiles.inspect import LoraInfo, inspect_source
from ..lorafiles.sources import (
    carries_credentials,
    check_source,
    parse_source,
    redact_url,
)
from ..lorafiles.validate import PICKLE_EXTENSIONS, check_extension
from .routing import DB, POLICY, REGISTRY_POLICY, UPLOADS
from .schemas import LoraCreate


def lora_view(record: dict[str, Any]) -> dict[str, Any]:
    """A registry record as the API shows it: source URLs without their query string (credentials; entries
    stored before sources with credentials were copied may still hold such a URL)."""
    return {**record, **{key: redact_url(record[key]) for key in ("source", "low_noise_source")
                         if record.get(key) and carries_credentials(record[key])}}


async def check_source_allowed(request: web.Request, source: str) -> None:
    """The same source policy the pods apply, at registration: a source they would refuse (a host,
    a bucket, a pickle file) is refused now."""
    policy = request.app[REGISTRY_POLICY]
    parsed = parse_source(source)
    name = PurePosixPath(urlsplit(parsed.uri).path if parsed.kind == "http" else parsed.key or str(parsed.path)).name
    if PurePosixPath(name).suffix.lower() in PICKLE_EXTENSIONS:
        check_extension(name, policy.allow_pickle)  # pickle files are refused by name, before any byte is read
    await asyncio.get_running_loop().run_in_executor(None, lambda: check_source(parsed, policy))


async def inspect(request: web.Request, source: str) -> LoraInfo:
    """The header of a registered source (ranged reads), under the service's fetch policy."""
    policy = request.app[POLICY]
    return await asyncio.get_running_loop().run_in_executor(None, lambda: inspect_source(source, policy, with_hash=False))


def check_pair(infos: dict[str, LoraInfo]) -> None:
    """A Wan 2.2 expert pair (expert -> its file's header): both Wan 2.x of one size, else refused naming which."""
    for expert, info in infos.items():
        if info.family != "wan":
            raise GenerationRefused(f"a Wan 2.2 pair's {expert} file is {variant_name(info.family, info.variant)}, not Wan 2.x")
    high, low = infos.values()
    if high.variant != low.variant:
        raise GenerationRefused(f"the pair's files are of two sizes: high-noise {high.variant}, low-noise {low.variant}")


async def check_pair_sources(request: web.Request, fields: dict[str, Any]) -> None:
    """A pair registered by source: the low-noise file allowed too, both headers inspected."""
    await check_source_allowed(request, fields["low_noise_source"])
    check_pair({"high-noise": await inspect(request, fields["source"]),
                "low-noise": await inspect(request, fields["low_noise_source"])})


async def keep_credentials_out(request: web.Request, fields: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
    """Replace each source whose URL carries credentials by a copy in the bridge's LoRA store (read once
    with that URL, under the pods' fetch policy, hashed as it arrives; a given SHA-256 must match). The
    URL itself goes nowhere: the entry records where the copy came from without its query string
    (``metadata.<field>_origin``, added to ``metadata``: the entry's own when a change leaves it out). The copy
    also outlives the URL's expiry."""
    uploads = request.app[UPLOADS]
    for key, sha_key in (("source", "sha256"), ("low_noise_source", "low_noise_sha256")):
        url = fields.get(key)
        if not url or not carries_credentials(url):
            continue
        staged = await asyncio.get_running_loop().run_in_executor(None, uploads.stage_source, url, request.app[POLICY])
        if fields.get(sha_key) and fields[sha_key].lower() != staged.info.sha256:
            uploads.discard(staged)
            raise IntegrityError(f"{key}: the file's SHA-256 is {staged.info.sha256}, not the {sha_key} given")
        fields[key], fields[sha_key] = await uploads.commit(staged), staged.info.sha256
        base = fields["metadata"] if "metadata" in fields else metadata
        fields["metadata"] = {**(base or {}), f"{key}_origin": redact_url(url)}


async def register(request: web.Request, body: LoraCreate) -> dict[str, Any]:
    """Register a LoRA by source: the source checked against the pods' policy, a pair's files both
    inspected, and what the request leaves out (family, variant, rank, trigger word) read from the header."""
    fields = body.registry_fields()
    source = fields.get("source")
    if source:
        await check_source_allowed(request, source)
    if fields.get("low_noise_source"):
        await check_pair_sources(request, fields)
    if source and not fields.get("family"):  # fill family, rank, trigger word from the header (ranged reads)
        info = await inspect(request, source)
        fields.setdefault("family", info.family)
        fields.setdefault("variant", info.variant)
        fields.setdefault("rank", info.rank)
        fields.setdefault("size", info.size)
        if not fields.get("trigger_word") and info.trigger_words:
            fields["trigger_word"] = info.trigger_words[0]
        fields["metadata"] = {**info.metadata, **(fields.get("metadata") or {})}
    await keep_credentials_out(request, fields)
    return await request.app[DB].add_lora(fields)
