"""The LoRA registry's rules for new entries, shared by every route that registers one (the
``/v1`` API, uploads, the seed-compatible routes): sources obey the pods' fetch policy, headers
are read for what a request leaves out, and views never show a source's credentials."""

from __future__ import annotations

import asyncio
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from ..errors import GenerationRefused
from ..lorafiles.families import variant_name
from ..lorafiles.inspect import LoraInfo, inspect_source
from ..lorafiles.sources import (
    carries_credentials,
    check_source,
    parse_source,
    redact_url,
)
from ..lorafiles.validate import PICKLE_EXTENSIONS, check_extension
from .routing import DB, POLICY, REGISTRY_POLICY
from .schemas import LoraCreate


def lora_view(record: dict[str, Any]) -> dict[str, Any]:
    """A registry record as the API shows it: source URLs without their query string (credentials)."""
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
    return await request.app[DB].add_lora(fields)
