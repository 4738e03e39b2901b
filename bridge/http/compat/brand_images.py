"""Seed 002, the brand image service: ``POST /generate`` with ``brand_id`` + ``lora_weights`` or
``lora_configs``, and the four ``/lora/…`` routes, on the registry, jobs and pods of the bridge.

A brand's LoRA is its registry entry, else its file in the brand store (``brand_store.py``).
A request without ``brand_id`` runs exactly as one without LoRA; a brand whose LoRA cannot
be found or used runs without it, with the reason as a warning (the seed's fallback).
``LORA_PRELOAD_BRANDS`` loads the named brands' LoRAs into every pod's memory at start.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from aiohttp import web
from pydantic import Field, StrictInt, StrictStr, model_validator

from ...errors import LoraBridgeError, NotFound
from ...jobs.brand_store import BRAND_ID
from ...jobs.planner import lora_request
from ...jobs.records import LoraRecord
from ...openapi import RouteSpec
from ...pack_protocol import CacheClear
from ..routing import BRAND_STORE, DB, GENERATIONS, POOL, SETTINGS, Handler, Inputs
from ..schemas import Closed, GenerationCreate, LoraRef
from .common import PREFIX, WaitFirst, output_urls, run, template_params

log = logging.getLogger("lora_bridge.compat.brands")
TEMPLATE = "sd15_txt2img"  # the seed's LoRAs are trained on Stable Diffusion 1.5
BrandId = Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=BRAND_ID.pattern,
                                     description="letters, digits, '_', '.', '-' (a folder of the brand store)")]
Weight = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
PRELOADED = web.AppKey("brand_preload", dict)
PRELOADER = web.AppKey("brand_preloader", asyncio.Task)


class BrandLora(Closed):
    """One entry of ``lora_configs``."""

    brand_id: BrandId
    weight: Weight = Field(0.8, description="0.0-1.0")
    type: Annotated[StrictStr, Field(min_length=1, max_length=64)] | None = Field(
        None, description="style, product, photography… (kept on the job)")


class GenerateRequest(Closed):
    """``POST /generate`` as the brand image service takes it."""

    prompt: Annotated[StrictStr, Field(min_length=1, max_length=4000)]
    negative_prompt: Annotated[StrictStr, Field(max_length=4000)] | None = None
    width: Annotated[StrictInt, Field(ge=64, le=2048, multiple_of=8)] | None = Field(None, description="default 512")
    height: Annotated[StrictInt, Field(ge=64, le=2048, multiple_of=8)] | None = Field(None, description="default 512")
    num_inference_steps: Annotated[StrictInt, Field(ge=1, le=150)] | None = Field(None, description="default 20")
    guidance_scale: Annotated[float, Field(ge=0.0, le=30.0, allow_inf_nan=False)] | None = None
    seed: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)] | None = None
    brand_id: BrandId | None = Field(None, description="the brand whose LoRA styles the image")
    lora_weights: Weight = Field(0.8, description="strength of the brand's LoRA, 0.0-1.0")
    lora_configs: Annotated[list[BrandLora], Field(min_length=1, max_length=10)] | None = Field(
        None, description="several brand LoRAs, each with its weight (instead of brand_id)")

    @model_validator(mode="after")
    def _one_way(self) -> "GenerateRequest":
        if self.brand_id is not None and self.lora_configs is not None:
            raise ValueError("give 'brand_id' (with 'lora_weights') or 'lora_configs', not both")
        if "lora_weights" in self.model_fields_set and self.brand_id is None:
            raise ValueError("'lora_weights' is the strength of the brand_id's LoRA: give 'brand_id' with it")
        return self

    def native(self, params: dict[str, Any]) -> GenerationCreate:
        """The same job as a ``/v1/generations`` request."""
        owner: dict[str, Any] = {"brand_id": self.brand_id, "lora_strength": self.lora_weights} if self.brand_id else {}
        loras = [LoraRef(brand_id=c.brand_id, strength_model=c.weight, type=c.type) for c in self.lora_configs or []]
        return GenerationCreate(template=TEMPLATE, params=params, loras=loras or None, **owner)


class BrandPath(Closed):
    brand_id: BrandId


async def generate(request: web.Request, inputs: Inputs) -> web.Response:
    body: GenerateRequest = inputs.body
    params = template_params(request, TEMPLATE, {"prompt": body.prompt, "negative": body.negative_prompt, "width": body.width,
                                                 "height": body.height, "steps": body.num_inference_steps,
                                                 "cfg": body.guidance_scale, "seed": body.seed})
    view = (await run(request, body.native(params), inputs.query.waits)).view()
    return web.json_response({**view, "images": output_urls(view)}, status=200 if inputs.query.waits else 202)


def _entry(rec: LoraRecord) -> dict[str, Any]:
    return {"brand_id": rec.owner_id, "lora_id": rec.id, "name": rec.name, "status": rec.status,
            "base_model": rec.family, "trigger_word": rec.trigger_word, "version": rec.version, "registered": True}


async def list_loras(request: web.Request, inputs: Inputs) -> web.Response:
    """The brands' registry LoRAs, then the brand store's files not registered yet."""
    entries = [_entry(r) for r in await request.app[DB].list_loras(owner_kind="brand")]
    store = request.app[BRAND_STORE]
    if store is not None:
        known = {e["brand_id"] for e in entries}
        for brand in await asyncio.get_running_loop().run_in_executor(None, store.brands):
            if brand not in known:
                entries.append({"brand_id": brand, "lora_id": None, "name": None, "status": "available", "base_model": None,
                                "trigger_word": None, "version": None, "registered": False})
    return web.json_response({"loras": entries, "count": len(entries)})


async def lora_metadata(request: web.Request, inputs: Inputs) -> web.Response:
    """The brand's LoRA: registry fields, its file's metadata (training settings) and version."""
    brand = inputs.path.brand_id
    rec = await request.app[GENERATIONS].planner.owner_lora("brand", brand, None, None)
    if rec is None:
        raise NotFound(f"brand {brand!r} has no LoRA (in the registry or the brand store)")
    return web.json_response({**_entry(rec), "variant": rec.variant, "rank": rec.rank, "size": rec.size,
                              "sha256": rec.sha256, "metadata": rec.metadata})


async def cache_stats(request: web.Request, inputs: Inputs) -> web.Response:
    """The seed's statistics (hits, misses, evictions, hit rate) of the pods' memory caches, summed."""
    per_pod, sums = await request.app[POOL].cache_report()
    memory = sums["memory"]
    return web.json_response({"enabled": True, "size": memory["entries"], **{k: memory[k] for k in
                              ("hits", "misses", "evictions", "hit_rate")}, "pods": len(per_pod), "disk": sums["disk"],
                              "preloaded": request.app[PRELOADED]})


async def cache_clear(request: web.Request, inputs: Inputs) -> web.Response:
    """Empty every pack pod's memory cache (their disk caches stay)."""
    pool = request.app[POOL]
    cleared, failed = [], []
    for pod in await pool.refresh(force=True):
        if not (pod.healthy and pod.pack):
            continue
        try:
            result = await pool.clear_cache(pod, CacheClear(memory=True, disk=False))
            cleared.append({"pod": pod.config.name, **result["cleared"]})
        except LoraBridgeError as exc:
            failed.append({"pod": pod.config.name, "error": str(exc)})
    return web.json_response({"cleared": not failed, "pods": cleared, "failed": failed})


async def preload_brands(app: web.Application, brands: tuple[str, ...], every: float = 5.0) -> None:
    """Load each brand's LoRA into the memory of every pack pod, trying pods not reached yet
    again every ``every`` seconds; what is done is in ``/lora/cache/stats`` (``preloaded``)."""
    gens, pool, done = app[GENERATIONS], app[POOL], app[PRELOADED]
    pending = {brand: set(pool.status) for brand in brands}
    while pending:
        for brand, pods in list(pending.items()):
            try:
                rec = await gens.planner.owner_lora("brand", brand, None, None)
            except LoraBridgeError as exc:
                log.warning("preload of brand %s: %s", brand, exc)
                continue
            if rec is None or rec.status != "ready" or not rec.source:
                log.error("preload of brand %s: no ready LoRA in the registry or the brand store", brand)
                del pending[brand]
                continue
            for pod in await pool.refresh():
                if pod.config.url not in pods or not pod.healthy:
                    continue
                if pod.pack:
                    try:
                        await pool.preload(pod, lora_request(rec, 1.0, 1.0))
                    except LoraBridgeError as exc:
                        log.warning("preload of brand %s on %s: %s", brand, pod.config.name, exc)
                        continue
                    done.setdefault(brand, []).append(pod.config.name)
                pods.discard(pod.config.url)
            if not pods:
                del pending[brand]
        if pending:
            await asyncio.sleep(every)


async def start_preload(app: web.Application) -> None:
    brands = app[SETTINGS].preload_brands
    if brands:
        app[PRELOADER] = asyncio.ensure_future(preload_brands(app, brands))


async def stop_preload(app: web.Application) -> None:
    task = app.get(PRELOADER)
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


R = RouteSpec
ROUTES: list[tuple[RouteSpec, Handler]] = [
    (R("POST", f"{PREFIX}/generate", "[seed 002] Generate an image, styled by a brand's LoRA (brand_id + lora_weights "
       "0.0-1.0, or lora_configs); answers when done unless ?wait=false", body=GenerateRequest, query=WaitFirst,
       responses={200: "the ended job and its image URLs", 202: "job id (wait=false)", 400: "invalid request"}), generate),
    (R("GET", f"{PREFIX}/lora/list", "[seed 002] Brand LoRAs: registered, and the brand store's not registered yet"),
     list_loras),
    (R("GET", f"{PREFIX}/lora/{{brand_id}}/metadata", "[seed 002] A brand's LoRA: version, base model, file metadata",
       path_params=BrandPath, responses={200: "metadata", 404: "the brand has no LoRA"}), lora_metadata),
    (R("GET", f"{PREFIX}/lora/cache/stats", "[seed 002] Hits, misses, evictions and hit rate of the pods' memory caches"),
     cache_stats),
    (R("POST", f"{PREFIX}/lora/cache/clear", "[seed 002] Clear the pods' memory caches"), cache_clear),
]
