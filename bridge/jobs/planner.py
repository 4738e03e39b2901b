"""Planning a generation: a request and the registry in, a typed ``Plan`` out (or a refusal).

Nothing is written and no pod is asked: the planner reads registry entries through the
``LoraLookup`` it is given, and loads each template a request touches once (the plan carries
the loaded templates to the runner and the graph builder). A request may:

- name LoRAs by registry id, by name, or by owner (a character's or brand's best LoRA for the
  model's family and variant);
- fall back (``lora_policy: fallback``) when a LoRA cannot be used: it is dropped with a
  warning, and its fallback style words go at the end of the prompt; ``strict`` refuses;
- ask for a character in a video: the character's LoRA goes on the video model (direct), or
  draws a key frame that an image-to-video template animates (preprocess), or the video is
  drawn from the prompt alone (fallback) — ``character_paths.py`` says which, and why;
- name assets in its workflow (``core/ASSET`` references, Comfy API v2): each must be an asset
  this bridge holds; LoRAs are fetched onto the chosen pod and input files uploaded to it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, Protocol

from ..errors import GenerationRefused, MissingAsset, NotFound
from ..graphs.asset_refs import Placement, find_references, pod_file_name
from ..graphs.builder import KeyFrame
from ..graphs.convert import check_editor_workflow, is_ui_workflow
from ..graphs.lora_insertion import LoraRequest
from ..graphs.templates import Template, TemplateError, load_template
from ..lorafiles.families import variant_name
from ..lorafiles.sources import FetchPolicy
from . import webhooks
from .character_paths import KEY_FRAME_TEMPLATES, VIDEO_TEMPLATES, CharacterPath, verdict
from .records import AssetRecord, LoraRecord
from .requests import AssetReference, GenerationCreate, LoraRef


class LoraLookup(Protocol):
    """The registry reads planning needs (``AsyncDatabase`` is one)."""

    def best_for_owner(self, owner_kind: str, owner_id: str, family: str | None,
                       variant: str | None = None) -> Awaitable[LoraRecord | None]: ...
    def list_loras(self, **filters: Any) -> Awaitable[list[LoraRecord]]: ...
    def get_lora(self, lora_id: str) -> Awaitable[LoraRecord]: ...


class PresetLookup(Protocol):
    """The preset reads planning needs (``PresetStore`` is one)."""

    def refs(self, name: str) -> Awaitable[list[LoraRef]]: ...


class AssetLookup(Protocol):
    """The asset reads planning needs (``AssetStore`` is one)."""

    def get(self, asset_id: str) -> Awaitable[AssetRecord]: ...


@dataclass
class AssetPlan:
    """A request's ``core/ASSET`` references, resolved: where each goes in its workflow, the LoRAs the pod
    fetches and links under their names, the input files it receives (pod file name -> where the bytes
    are), and the template parameters that name an input file (parameter -> pod file name)."""

    placements: list[Placement] = field(default_factory=list)
    loras: list[LoraRequest] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


def lora_request(rec: LoraRecord, strength_model: float, strength_clip: float) -> LoraRequest:
    """A registry entry as a LoRA to apply."""
    return LoraRequest(f"lora-{rec.id}", strength_model, strength_clip, source=rec.source, sha256=rec.sha256,
                       family=rec.family, trigger_words=(rec.trigger_word,) if rec.trigger_word else ())


def _resolved(rec: LoraRecord, label: str, strength_model: float, strength_clip: float,
              kind: str | None = None) -> dict[str, Any]:
    """A registry LoRA a request resolved to, as the job record keeps it (``resolved``)."""
    return {"lora_id": rec.id, "name": rec.name, "for": label, "strength_model": strength_model,
            "strength_clip": strength_clip, "trigger_word": rec.trigger_word, **({"type": kind} if kind else {})}


def _carried(params: dict[str, Any], source: Template, target: Template) -> dict[str, Any]:
    """The request's parameters that carry over to ``target`` (the image-to-video template): those
    both templates have with the same default (prompt, seed, size, length, VAE…). A model the two
    name differently (the text-to-video vs the image-to-video UNet) stays ``target``'s own."""
    return {k: v for k, v in params.items()
            if k in target.params and k in source.params and target.params[k].default == source.params[k].default}


def append_styles(params: dict[str, Any], template: Template | None, styles: list[str], warnings: list[str]) -> None:
    """Dropped LoRAs' fallback style words at the end of the prompt (where the template has one), with a warning."""
    if styles and template is not None and "prompt" in template.params:
        params["prompt"] = ", ".join([str(params.get("prompt", template.params["prompt"].default)), *styles])
        warnings.append(f"prompt-only fallback: appended {', '.join(styles)!r} to the prompt")


@dataclass
class Plan:
    """What a request becomes before it runs: the LoRAs to apply, warnings, final parameters."""

    request: GenerationCreate
    loras: list[LoraRequest]
    params: dict[str, Any]
    family: str | None
    warnings: list[str] = field(default_factory=list)
    template: Template | None = None  # the request's, or its image-to-video counterpart on the preprocess path
    path: CharacterPath | None = None  # a character in a video: how it got there, and why
    path_reason: str | None = None
    key_frame: KeyFrame | None = None
    key_frame_style: str | None = None  # the key-frame LoRA's fallback style words, should the key frame fall through
    resolved: list[dict[str, Any]] = field(default_factory=list)  # the registry LoRAs the request resolved to
    assets: AssetPlan | None = None  # the workflow's core/ASSET references (Comfy API v2)

    def record(self) -> dict[str, Any]:
        """What the job record keeps of the plan from the start."""
        path = {"path": self.path, "path_reason": self.path_reason} if self.path else {}
        return {"warnings": self.warnings, "resolved": self.resolved, **path, **({"family": self.family} if self.family else {})}

    def first_events(self) -> list[tuple[str, dict[str, Any]]]:
        """The events a job planned so starts with: queued, its character path, its warnings."""
        path = [("path", {"path": self.path, "reason": self.path_reason})] if self.path else []
        return [("queued", {}), *path, *(("warning", {"message": w}) for w in self.warnings)]


@dataclass
class Resolution:
    """What a request's LoRA references resolve to: the LoRAs to apply, the warnings, the fallback
    style words of those dropped, and the registry entries chosen (``resolved`` on the job record)."""

    loras: list[LoraRequest]
    warnings: list[str]
    styles: list[str]
    resolved: list[dict[str, Any]]


_Wanted = tuple[LoraRecord | None, str, float, float, dict[str, float], str | None]


class Planner:
    """Turns requests into plans against the registry (``lookup``); refusals raise ``LoraBridgeError``s."""

    def __init__(self, lookup: LoraLookup, policy: FetchPolicy, webhook_secret: str | None,
                 discover_brand: Callable[[str], Awaitable[LoraRecord | None]] | None = None,
                 assets: AssetLookup | None = None, presets: PresetLookup | None = None) -> None:
        self.lookup, self.policy, self.webhook_secret = lookup, policy, webhook_secret
        self.discover_brand = discover_brand  # a brand without a registry LoRA yet: its file in the brand store
        self.assets, self.presets = assets, presets

    async def place_assets(self, workflow: dict[str, Any] | None, params: dict[str, Any]) -> AssetPlan | None:
        """The request's asset references resolved (None without any): in its workflow, and in its template
        parameters (input files only). ``MissingAsset`` names every id that is malformed, unknown, or not a
        file a graph can load (an output, a LoRA whose registry entry is gone or not ready, a LoRA as a
        template parameter)."""
        refs = find_references(workflow) if workflow is not None else []
        named = {name: value.info.id for name, value in params.items() if isinstance(value, AssetReference)}
        if not refs and not named:
            return None
        found, missing = AssetPlan(), []

        async def resolve(asset_id: str | None, lora_allowed: bool) -> tuple[AssetRecord, LoraRecord | None] | None:
            try:
                if asset_id is None or self.assets is None:
                    raise NotFound("malformed")
                asset = await self.assets.get(asset_id)
                rec = await self.lookup.get_lora(asset.lora_id) if asset.kind == "lora" and asset.lora_id else None
            except NotFound:
                return None
            unusable = asset.kind == "output" or (asset.kind == "lora" and (
                not lora_allowed or rec is None or rec.status != "ready" or not rec.source))
            return None if unusable else (asset, rec)

        for ref in refs:
            got = await resolve(ref.asset_id, lora_allowed=True)
            if got is None:
                missing.append(ref.asset_id or f"(malformed reference at node {ref.node} input '{ref.input}')")
                continue
            asset, rec = got
            kind = "lora" if rec is not None else "input"
            name = pod_file_name(kind, asset.blake3, asset.file_path)
            found.placements.append(Placement(ref.node, ref.input, asset.id, kind, name))
            if rec is not None:
                found.loras.append(replace(lora_request(rec, 1.0, 1.0), name=name, linked=True))
            else:
                found.inputs[name] = asset.location
        for param, asset_id in named.items():
            got = await resolve(asset_id, lora_allowed=False)
            if got is None:
                missing.append(f"{asset_id} (parameter '{param}')")
                continue
            name = pod_file_name("input", got[0].blake3, got[0].file_path)
            found.params[param], found.inputs[name] = name, got[0].location
        if missing:
            raise MissingAsset(f"unresolvable core/ASSET reference(s): {', '.join(missing)}", missing)
        return found

    async def preset_refs(self, name: str | None) -> list[LoraRef]:
        """The LoRAs of the registry preset a request names (none without one); a missing preset is refused."""
        if name is None:
            return []
        if self.presets is not None:
            with contextlib.suppress(NotFound):
                return await self.presets.refs(name)
        raise GenerationRefused(f"preset {name!r} not found (PUT /v1/presets/{{name}} saves one)")

    async def owner_lora(self, kind: str, owner: str, family: str | None, variant: str | None) -> LoraRecord | None:
        """The owner's best registry LoRA; a brand with none yet is looked up in the brand store."""
        rec = await self.lookup.best_for_owner(kind, owner, family, variant)  # another family's is refused later, named
        if rec is None and kind == "brand" and self.discover_brand is not None:
            rec = await self.discover_brand(owner)
        return rec

    async def _wanted(self, request: GenerationCreate, family: str | None, variant: str | None) -> list[_Wanted]:
        """Each LoRA the request names, looked up: (entry or None, label, strengths, per-expert strengths, type)."""
        wanted: list[_Wanted] = []
        for ref in [*await self.preset_refs(request.preset), *request.lora_refs]:
            owner, rec = ref.owner, None
            if owner is not None:
                rec = await self.owner_lora(*owner, family, variant)
            elif ref.name is not None:
                named = await self.lookup.list_loras(name=ref.name)
                rec = next((r for r in named if r.status == "ready"), named[0] if named else None)
            else:
                assert ref.lora_id is not None
                with contextlib.suppress(NotFound):
                    rec = await self.lookup.get_lora(ref.lora_id)
            label = " ".join(owner) if owner else f"named {ref.name!r}" if ref.name else str(ref.lora_id)
            clip = ref.strength_model if ref.strength_clip is None else ref.strength_clip
            wanted.append((rec, label, ref.strength_model, clip, {}, ref.type))
        for kind in ("character", "brand"):
            owner_id = getattr(request, f"{kind}_id")
            if owner_id is not None:
                rec = await self.owner_lora(kind, str(owner_id), family, variant)
                wanted.append((rec, f"{kind} {owner_id}", request.lora_strength, request.lora_strength,
                               {str(k): v for k, v in (request.expert_strengths or {}).items()}, None))
        return wanted

    @staticmethod
    def _unusable(rec: LoraRecord | None, label: str, family: str | None, variant: str | None,
                  experts: dict[str, str] | None) -> str | None:
        """Why an entry cannot be applied to this model, or None."""
        if rec is None:
            return f"LoRA {label} not found" + (f" for base model {family}" if family else "")
        if rec.status != "ready":
            return f"LoRA {rec.id} ({rec.name}) is {rec.status}, not ready"
        if (family and rec.family not in (None, "unknown", family)) or (variant and rec.variant and rec.variant != variant):
            return (f"LoRA {rec.id} ({rec.name}) is {variant_name(rec.family or 'unknown', rec.variant)}; "
                    f"the model is {variant_name(family or rec.family or 'unknown', variant)}")
        if not rec.source:
            return f"LoRA {rec.id} ({rec.name}) has no source"
        if rec.low_noise_source and not experts:
            return (f"LoRA {rec.id} ({rec.name}) is a Wan 2.2 expert pair; the graph does not say which "
                    f"model is which expert (use a wan22 template)")
        return None

    async def resolve_loras(self, request: GenerationCreate, family: str | None, variant: str | None = None,
                            experts: dict[str, str] | None = None) -> Resolution:
        """The LoRAs to apply, the warnings, the fallback style words of the LoRAs dropped, and the
        registry entries chosen. ``experts`` (a two-expert template's expert -> loader node) places
        each LoRA on its experts."""
        found = Resolution([], [], [], [])
        for rec, label, sm, sc, per_expert, lora_type in await self._wanted(request, family, variant):
            reason = self._unusable(rec, label, family, variant, experts)
            if reason:
                if request.lora_policy == "strict":
                    raise GenerationRefused(reason)
                found.warnings.append(reason + "; generating without it")
                if rec and rec.fallback_style:
                    found.styles.append(rec.fallback_style)
                continue
            assert rec is not None
            found.resolved.append(_resolved(rec, label, sm, sc, lora_type))
            if not experts:
                found.loras.append(lora_request(rec, sm, sc))
                continue
            pair = bool(rec.low_noise_source)  # each file on its own expert; a single file on those named (default all)
            for expert in list(experts) if pair else list(request.experts or experts):
                lora = lora_request(rec, per_expert.get(expert, sm), sc)
                if pair and expert == "low_noise":
                    lora = replace(lora, source=rec.low_noise_source, sha256=rec.low_noise_sha256)
                found.loras.append(replace(lora, source_nodes=(experts[expert],)))
        return found

    async def character_path(self, request: GenerationCreate, family: str | None, variant: str | None,
                             video: dict[str, Any]) -> tuple[CharacterPath, str, KeyFrame | None, LoraRecord | None]:
        """How the request's character gets into its video (``video``: the template's values): direct,
        preprocess (with the key frame to draw, its prompt and seed the video's, and the key frame's
        registry LoRA) or fallback, with the reason."""
        rec = await self.lookup.best_for_owner("character", str(request.character_id), family, variant)
        if rec is None or rec.status != "ready" or not rec.source:
            why = "has no LoRA" if rec is None else f"has no ready LoRA with a source ({rec.id} is {rec.status})"
            return "fallback", f"character {request.character_id} {why}", None, None
        v = verdict(family or "unknown", variant, rec.family, rec.variant)
        if v.path is None:
            return "fallback", f"LoRA {rec.id} ({rec.name}): {v.reason}", None, None
        if v.path == "direct":
            return "direct", v.reason, None, None
        assert rec.family is not None
        frame_params: dict[str, Any] = {**{k: video[k] for k in ("prompt", "seed") if k in video}, **request.key_frame_params}
        frame = KeyFrame(load_template(KEY_FRAME_TEMPLATES[rec.family]), frame_params,
                         [lora_request(rec, request.lora_strength, request.lora_strength)])
        return "preprocess", v.reason, frame, rec

    def check_request(self, request: GenerationCreate) -> None:
        """What is refused before any lookup: an unsigned or disallowed webhook, an editor workflow's shape."""
        if request.webhook_url:
            if not self.webhook_secret:
                raise GenerationRefused("webhooks need LORA_BRIDGE_WEBHOOK_SECRET to be configured (they are signed)")
            webhooks.check_webhook_url(request.webhook_url, self.policy)
        if request.workflow is not None and is_ui_workflow(request.workflow):
            check_editor_workflow(request.workflow)  # what needs the pod's node list is checked on the pod

    async def plan(self, request: GenerationCreate) -> Plan:
        """Check a request and plan it (raises ``LoraBridgeError`` subclasses: answered 4xx)."""
        self.check_request(request)
        assets = await self.place_assets(request.workflow, request.params)
        params = {**request.params, **(assets.params if assets else {})}
        family, variant = request.family, request.variant
        template = load_template(request.template) if request.template is not None else None
        if template is not None and template.kind != "generation":
            raise TemplateError(f"template '{template.name}' trains a LoRA: start it with POST /v1/trainings")
        if template is not None:
            template.render(**params)  # parameter errors now, as 400s
            family, variant = family or template.family, variant or template.variant
        path, path_reason, key_frame, frame_lora = None, None, None, None
        if template is not None and template.name in VIDEO_TEMPLATES and request.character_id is not None:
            values = {name: params.get(name, p.default) for name, p in template.params.items()}
            path, path_reason, key_frame, frame_lora = await self.character_path(request, family, variant, values)
        if template is not None and key_frame is not None:  # the character draws the key frame, image-to-video animates it
            video, template = template, load_template(VIDEO_TEMPLATES[template.name])
            params = _carried(params, video, template)
            key_frame.template.render(**key_frame.params)  # parameter errors now, as 400s
            found = await self.resolve_loras(request.model_copy(update={"character_id": None}), family, variant,
                                             template.experts)
            assert frame_lora is not None
            found.resolved.append(_resolved(frame_lora, f"character {request.character_id}", request.lora_strength,
                                            request.lora_strength))
        else:
            found = await self.resolve_loras(request, family, variant, template.experts if template else None)
        append_styles(params, template, found.styles, found.warnings)
        return Plan(request, found.loras, params, family, found.warnings, template, path, path_reason, key_frame,
                    frame_lora.fallback_style if frame_lora else None, found.resolved, assets)

    async def without_key_frame(self, plan: Plan, reason: str) -> Plan:
        """The preprocess path fell through (its key-frame LoRA could not be fetched): the video template,
        prompt only, as the fallback path (the key-frame LoRA's style words appended)."""
        fallback = await self.plan(plan.request.model_copy(update={"character_id": None}))
        fallback.request, fallback.path, fallback.path_reason = plan.request, "fallback", f"{reason}; the key frame is not drawn"
        fallback.warnings = plan.warnings + [f"{reason}; generating the video from the prompt only"]
        append_styles(fallback.params, fallback.template, [plan.key_frame_style] if plan.key_frame_style else [],
                      fallback.warnings)
        return fallback
