"""Generation jobs: planned from the registry (with fallback), run on the pool, driven through
the state machine of ``job_states.py``, persisted as they go.

Guarantees:

- **A job always ends.** Every path out of a runner (success, a refusal, a pod error, an
  exception nobody expected, a cancel) ends in a terminal state with its reason.
- **Nothing known is lost.** The prompt id is stored *before* the prompt is sent; pod,
  applied/skipped LoRAs, trigger words and warnings as soon as they are known; the start of
  execution as a timestamp, so GPU-seconds and cost count across restarts.
- **Stopping is not cancelling.** A graceful stop (or a crash) leaves jobs running on their
  pods; the next start re-attaches by prompt id, or runs again what never reached a pod. A
  job that cannot be resumed fails with the reason; start-up never fails because of one job.
- **Cancel works in every state**: a queued or preparing job stops (its pod-side LoRA
  downloads too), a prompt pending in the pod's queue is removed, a running one interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Awaitable, Callable

from pydantic import ValidationError

from ..errors import (
    GenerationRefused,
    JobInterrupted,
    LoraBridgeError,
    NotFound,
    PodError,
    PromptLost,
)
from ..graphs.builder import KeyFrame
from ..graphs.convert import check_editor_workflow, is_ui_workflow
from ..graphs.key_frame import stage_of
from ..graphs.lora_insertion import InsertionReport, LoraRequest
from ..graphs.templates import Template, TemplateError, load_template
from ..lorafiles.families import variant_name
from ..lorafiles.sources import FetchPolicy
from ..pack_protocol import describe_validation_error
from ..pods.client import OutputFile, PodEvent
from ..pods.generation import run_generation
from ..pods.pool import PodPool, PrefetchFailed
from ..settings import Settings
from . import webhooks
from .character_paths import (
    KEY_FRAME_TEMPLATES,
    VIDEO_TEMPLATES,
    CharacterPath,
    verdict,
)
from .database import AsyncDatabase
from .job_states import JobState, is_terminal
from .metrics import JobMetrics
from .schemas import GenerationCreate

log = logging.getLogger("lora_bridge.jobs")
INTERNAL_RESULT_FIELDS = ("client_id",)
RUNNING_EVENTS = {"started", "executing", "progress", "cached", "output"}
GENERATION = "generation"  # a job record's request kind, when it has none (trainings.py: "training")


class OutputsNotSaved(LoraBridgeError):
    """The pod produced the outputs, but they could not be stored or uploaded."""


def _carried(params: dict[str, Any], source: Template, target: Template) -> dict[str, Any]:
    """The request's parameters that carry over to ``target`` (the image-to-video template): those
    both templates have with the same default (prompt, seed, size, length, VAE…). A model the two
    name differently (the text-to-video vs the image-to-video UNet) stays ``target``'s own."""
    return {k: v for k, v in params.items()
            if k in target.params and k in source.params and target.params[k].default == source.params[k].default}


def lora_request(rec: dict[str, Any], strength_model: float, strength_clip: float) -> LoraRequest:
    """A registry entry as a LoRA to apply."""
    return LoraRequest(f"lora-{rec['id']}", strength_model, strength_clip, source=rec["source"], sha256=rec["sha256"],
                       family=rec["family"], trigger_words=(rec["trigger_word"],) if rec["trigger_word"] else ())


def _resolved(rec: dict[str, Any], label: str, strength_model: float, strength_clip: float,
              kind: str | None = None) -> dict[str, Any]:
    """A registry LoRA a request resolved to, as the job record keeps it (``resolved``)."""
    return {"lora_id": rec["id"], "name": rec["name"], "for": label, "strength_model": strength_model,
            "strength_clip": strength_clip, "trigger_word": rec["trigger_word"], **({"type": kind} if kind else {})}


def _append_styles(params: dict[str, Any], template: Template | None, styles: list[str], warnings: list[str]) -> None:
    """Dropped LoRAs' fallback style words at the end of the prompt (where the template has one), with a warning."""
    if styles and template is not None and "prompt" in template.params:
        params["prompt"] = ", ".join([str(params.get("prompt", template.params["prompt"].default)), *styles])
        warnings.append(f"prompt-only fallback: appended {', '.join(styles)!r} to the prompt")


def job_view(job: dict[str, Any]) -> dict[str, Any]:
    """A job as the API shows it (internal fields left out)."""
    result = {k: v for k, v in job["result"].items() if k not in INTERNAL_RESULT_FIELDS}
    return {"id": job["id"], "status": job["status"], "pod": job["pod"], "prompt_id": job["prompt_id"],
            "created": job["created"], "updated": job["updated"], **result}


@dataclass
class Plan:
    """What a request becomes before it runs: the LoRAs to apply, warnings, final parameters."""

    request: GenerationCreate
    loras: list[LoraRequest]
    params: dict[str, Any]
    family: str | None
    warnings: list[str] = field(default_factory=list)
    template: str | None = None  # the request's, or its image-to-video counterpart on the preprocess path
    path: CharacterPath | None = None  # a character in a video: how it got there, and why
    path_reason: str | None = None
    key_frame: KeyFrame | None = None
    key_frame_style: str | None = None  # the key-frame LoRA's fallback style words, should the key frame fall through
    resolved: list[dict[str, Any]] = field(default_factory=list)  # the registry LoRAs the request resolved to

    def record(self) -> dict[str, Any]:
        """What the job record keeps of the plan from the start."""
        path = {"path": self.path, "path_reason": self.path_reason} if self.path else {}
        return {"warnings": self.warnings, "resolved": self.resolved, **path}


@dataclass
class Resolution:
    """What a request's LoRA references resolve to: the LoRAs to apply, the warnings, the fallback
    style words of those dropped, and the registry entries chosen (``resolved`` on the job record)."""

    loras: list[LoraRequest]
    warnings: list[str]
    styles: list[str]
    resolved: list[dict[str, Any]]


class Generations:
    """Starts, follows, cancels and resumes generation jobs (one instance per service)."""

    def __init__(self, db: AsyncDatabase, pool: PodPool, outputs_dir: Path, settings: Settings, policy: FetchPolicy) -> None:
        self.db, self.pool, self.outputs_dir, self.settings, self.policy = db, pool, outputs_dir, settings, policy
        # job -> the event its readers wait on (held by them alone: gone with the last reader)
        self.changed: weakref.WeakValueDictionary[str, asyncio.Event] = weakref.WeakValueDictionary()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.cancel_requested: set[str] = set()
        self.released: set[str] = set()  # jobs another replica claimed: their runners here stop, the jobs go on
        self.two_stage: set[str] = set()  # preprocess jobs: their events say which stage
        self.stopping = False
        self.metrics = JobMetrics()
        # a brand without a registry LoRA yet: its file in the brand store, registered (``brand_store.py``)
        self.discover_brand: Callable[[str], Awaitable[dict[str, Any] | None]] | None = None

    # -- planning (pure: registry in, plan out) ---------------------------------------------------

    async def owner_lora(self, kind: str, owner: str, family: str | None, variant: str | None) -> dict[str, Any] | None:
        """The owner's best registry LoRA; a brand with none yet is looked up in the brand store."""
        rec = await self.db.best_for_owner(kind, owner, family, variant)  # another family's is refused later, named
        if rec is None and kind == "brand" and self.discover_brand is not None:
            rec = await self.discover_brand(owner)
        return rec

    async def resolve_loras(self, request: GenerationCreate, family: str | None, variant: str | None = None,
                            experts: dict[str, str] | None = None) -> Resolution:
        """The LoRAs to apply, the warnings, the fallback style words of the LoRAs dropped, and the
        registry entries chosen. A reference names a LoRA by id, by name, or by owner (its best LoRA
        for the family). ``experts`` (a two-expert template's expert -> loader node) places each
        LoRA on its experts."""
        strict = request.lora_policy == "strict"
        wanted: list[tuple[dict[str, Any] | None, str, float, float, dict[str, float], str | None]] = []
        for ref in request.lora_refs:
            owner, rec = ref.owner, None
            if owner is not None:
                rec = await self.owner_lora(*owner, family, variant)
            elif ref.name is not None:
                named = await self.db.list_loras(name=ref.name)
                rec = next((r for r in named if r["status"] == "ready"), named[0] if named else None)
            else:
                assert ref.lora_id is not None
                with contextlib.suppress(NotFound):
                    rec = await self.db.get_lora(ref.lora_id)
            label = " ".join(owner) if owner else f"named {ref.name!r}" if ref.name else str(ref.lora_id)
            clip = ref.strength_model if ref.strength_clip is None else ref.strength_clip
            wanted.append((rec, label, ref.strength_model, clip, {}, ref.type))
        for kind in ("character", "brand"):
            owner_id = getattr(request, f"{kind}_id")
            if owner_id is not None:
                rec = await self.owner_lora(kind, str(owner_id), family, variant)
                wanted.append((rec, f"{kind} {owner_id}", request.lora_strength, request.lora_strength,
                               {str(k): v for k, v in (request.expert_strengths or {}).items()}, None))
        loras, warnings, styles, resolved = [], [], [], []
        for rec, label, sm, sc, per_expert, lora_type in wanted:
            reason = None
            if rec is None:
                reason = f"LoRA {label} not found" + (f" for base model {family}" if family else "")
            elif rec["status"] != "ready":
                reason = f"LoRA {rec['id']} ({rec['name']}) is {rec['status']}, not ready"
            elif ((family and rec["family"] not in (None, "unknown", family))
                  or (variant and rec["variant"] and rec["variant"] != variant)):
                reason = (f"LoRA {rec['id']} ({rec['name']}) is {variant_name(rec['family'], rec['variant'])}; "
                          f"the model is {variant_name(family or rec['family'], variant)}")
            elif not rec["source"]:
                reason = f"LoRA {rec['id']} ({rec['name']}) has no source"
            elif rec["low_noise_source"] and not experts:
                reason = (f"LoRA {rec['id']} ({rec['name']}) is a Wan 2.2 expert pair; the graph does not say which "
                          f"model is which expert (use a wan22 template)")
            if reason:
                if strict:
                    raise GenerationRefused(reason)
                warnings.append(reason + "; generating without it")
                if rec and rec.get("fallback_style"):
                    styles.append(rec["fallback_style"])
                continue
            assert rec is not None
            resolved.append(_resolved(rec, label, sm, sc, lora_type))
            if not experts:
                loras.append(lora_request(rec, sm, sc))
                continue
            pair = bool(rec["low_noise_source"])  # each file on its own expert; a single file on those named (default all)
            for expert in list(experts) if pair else list(request.experts or experts):
                lora = lora_request(rec, per_expert.get(expert, sm), sc)
                if pair and expert == "low_noise":
                    lora = replace(lora, source=rec["low_noise_source"], sha256=rec["low_noise_sha256"])
                loras.append(replace(lora, source_nodes=(experts[expert],)))
        return Resolution(loras, warnings, styles, resolved)

    async def character_path(self, request: GenerationCreate, family: str | None, variant: str | None,
                       video: dict[str, Any]) -> tuple[CharacterPath, str, KeyFrame | None, dict[str, Any] | None]:
        """How the request's character gets into its video (``video``: the template's values): direct,
        preprocess (with the key frame to draw, its prompt and seed the video's, and the key frame's
        registry LoRA) or fallback, with the reason."""
        rec = await self.db.best_for_owner("character", str(request.character_id), family, variant)
        if rec is None or rec["status"] != "ready" or not rec["source"]:
            why = "has no LoRA" if rec is None else f"has no ready LoRA with a source ({rec['id']} is {rec['status']})"
            return "fallback", f"character {request.character_id} {why}", None, None
        v = verdict(family or "unknown", variant, rec["family"], rec["variant"])
        if v.path is None:
            return "fallback", f"LoRA {rec['id']} ({rec['name']}): {v.reason}", None, None
        if v.path == "direct":
            return "direct", v.reason, None, None
        frame_params: dict[str, Any] = {**{k: video[k] for k in ("prompt", "seed") if k in video}, **request.key_frame_params}
        lora = lora_request(rec, request.lora_strength, request.lora_strength)
        return "preprocess", v.reason, KeyFrame(KEY_FRAME_TEMPLATES[rec["family"]], frame_params, [lora]), rec

    async def prepare(self, request: GenerationCreate) -> Plan:
        """Check a request and plan it (raises ``LoraBridgeError`` subclasses: answered 4xx)."""
        if request.webhook_url:
            if not self.settings.webhook_secret:
                raise GenerationRefused("webhooks need LORA_BRIDGE_WEBHOOK_SECRET to be configured (they are signed)")
            webhooks.check_webhook_url(request.webhook_url, self.policy)
        if request.workflow is not None and is_ui_workflow(request.workflow):
            check_editor_workflow(request.workflow)  # what needs the pod's node list is checked on the pod
        params = dict(request.params)
        family, variant = request.family, request.variant
        template = load_template(request.template) if request.template is not None else None
        if template is not None and template.kind != "generation":
            raise TemplateError(f"template '{template.name}' trains a LoRA: start it with POST /v1/trainings")
        if template is not None:
            template.render(**params)  # parameter errors now, as 400s
            family, variant = family or template.family, variant or template.variant
        path, path_reason, key_frame, frame_lora, style, template_name = None, None, None, None, None, request.template
        if template is not None and template.name in VIDEO_TEMPLATES and request.character_id is not None:
            values = {name: params.get(name, p.default) for name, p in template.params.items()}
            path, path_reason, key_frame, frame_lora = await self.character_path(request, family, variant, values)
        if template is not None and key_frame is not None:  # the character draws the key frame, image-to-video animates it
            video, template_name = template, VIDEO_TEMPLATES[template.name]
            template = load_template(template_name)
            params = _carried(params, video, template)
            load_template(key_frame.template).render(**key_frame.params)  # parameter errors now, as 400s
            found = await self.resolve_loras(request.model_copy(update={"character_id": None}), family, variant,
                                             template.experts)
            assert frame_lora is not None
            style = frame_lora["fallback_style"]
            found.resolved.append(_resolved(frame_lora, f"character {request.character_id}", request.lora_strength,
                                            request.lora_strength))
        else:
            found = await self.resolve_loras(request, family, variant, template.experts if template else None)
        _append_styles(params, template, found.styles, found.warnings)
        return Plan(request, found.loras, params, family, found.warnings, template_name, path, path_reason, key_frame, style,
                    found.resolved)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, request: GenerationCreate) -> str:
        """Plan, store as ``queued`` and start a job; refusals raise before anything is stored."""
        plan = await self.prepare(request)
        events: list[tuple[str, dict[str, Any]]] = [("queued", {}), *(("warning", {"message": w}) for w in plan.warnings)]
        if plan.path:
            events.insert(1, ("path", {"path": plan.path, "reason": plan.path_reason}))
        job_id = await self.db.add_job(request.model_dump(mode="json", exclude_defaults=True), plan.record(), events)
        if plan.key_frame is not None:
            self.two_stage.add(job_id)
        self._spawn(job_id, self._run(job_id, plan))
        return job_id

    async def resume(self, jobs: list[dict[str, Any]]) -> None:
        """Jobs this replica just claimed (after a restart, or from a replica that died): re-attach
        to them on their pods, run again what never reached one. Each job is resumed on its own;
        one that cannot be resumed fails with the reason."""
        for job in jobs:
            if job["request"].get("kind", GENERATION) != GENERATION:
                continue  # another kind's own runner resumes it
            try:
                request = GenerationCreate.model_validate(job["request"])
            except ValidationError as exc:
                await self._end(job["id"], JobState.FAILED, f"cannot resume: the stored request is no longer valid "
                                                            f"({describe_validation_error(exc)})")
                continue
            await self.db.add_event(job["id"], "resumed", self.resumed(job))
            if job["result"].get("path") == "preprocess":
                self.two_stage.add(job["id"])
            if job["prompt_id"] and job["pod"]:
                self._spawn(job["id"], self._follow(job["id"], request))
            else:
                self._spawn(job["id"], self._replan_and_run(job["id"], request))

    def resumed(self, job: dict[str, Any]) -> dict[str, Any]:
        """The ``resumed`` event of a claimed job: where it was, and which replica takes it on."""
        return {"state": job["status"], "prompt_id": job["prompt_id"], "pod": job["pod"], "replica": self.db.replica}

    async def let_go(self, job_id: str) -> None:
        """Stop the runner of a job this replica no longer holds: one another replica ended (a cancel
        sent there) is cancelled here too; one another replica claimed is detached (it runs there)."""
        task = self.tasks.get(job_id)
        if task is None:
            return
        (self.cancel_requested if is_terminal(await self.db.job_status(job_id)) else self.released).add(job_id)
        task.cancel()

    def letting_go(self, job_id: str) -> bool:
        """Whether the job's runner stops without ending the job (a graceful stop, or a lost lease)."""
        return self.stopping or job_id in self.released

    async def detach_all(self) -> None:
        """Graceful stop: let go of every job without ending it (the next start re-attaches)."""
        self.stopping = True
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for event in list(self.changed.values()):
            event.set()

    async def cancel(self, job_id: str) -> None:
        """Cancel in any state: stop the runner, then whatever the pod still does for the job."""
        if is_terminal(await self.db.job_status(job_id)):
            return
        self.cancel_requested.add(job_id)
        task = self.tasks.get(job_id)
        if task is not None:
            task.cancel()
            await asyncio.wait([task], timeout=30)
        else:
            await self._end(job_id, JobState.CANCELLED, "cancelled by the caller")
            self.cancel_requested.discard(job_id)
        job = await self.db.get_job(job_id)
        pod = self.pool.by_name(job["pod"])
        if pod is None:
            return
        try:  # the prompt id is stored before submission, so a prompt in flight is found too
            if job["prompt_id"]:
                async with self.pool.client(pod, timeout=10) as client:
                    await client.cancel(job["prompt_id"])
            await self.pool.cancel_prefetch(pod, job_id)
        except PodError as exc:
            await self.record(job_id, "warning", {"message": f"the pod did not confirm the cancel: {exc}"})

    # -- runners ---------------------------------------------------------------------------------

    def _spawn(self, job_id: str, runner: Awaitable[None]) -> None:
        self.tasks[job_id] = asyncio.ensure_future(self._guarded(job_id, runner))

    async def _guarded(self, job_id: str, runner: Awaitable[None]) -> None:
        """Run ``runner`` so that every way out ends the job with its reason (or detaches it on a stop)."""
        try:
            await runner
        except asyncio.CancelledError:
            if job_id in self.cancel_requested:
                await self._end(job_id, JobState.CANCELLED, "cancelled by the caller")
            elif self.letting_go(job_id):
                where = "; it resumes on the next replica to claim it" if self.stopping else " (another replica holds it now)"
                await self.record(job_id, "detached", {"message": f"replica {self.db.replica} let go of the job{where}"})
                if self.stopping:
                    raise
            else:
                await self._end(job_id, JobState.FAILED, "the job's runner was stopped unexpectedly")
        except JobInterrupted as exc:
            cancelled = job_id in self.cancel_requested
            await self._end(job_id, JobState.CANCELLED if cancelled else JobState.INTERRUPTED,
                            "cancelled by the caller" if cancelled else f"{exc} (not by the bridge)")
        except LoraBridgeError as exc:
            await self._end(job_id, JobState.FAILED, str(exc))
        except Exception as exc:  # a bug: the job still ends, with the reason, and the log has the traceback
            log.exception("job %s: unexpected error", job_id)
            await self._end(job_id, JobState.FAILED, f"internal error ({type(exc).__name__}: {exc})")
        finally:
            self.tasks.pop(job_id, None)
            self.cancel_requested.discard(job_id)
            self.released.discard(job_id)
            self.two_stage.discard(job_id)
            self.signal(job_id)
        job = await self.db.get_job(job_id)
        if is_terminal(job["status"]):
            self.metrics.observe(job)
        await self._notify(job_id)

    async def _replan_and_run(self, job_id: str, request: GenerationCreate) -> None:
        await self._run(job_id, await self.prepare(request))

    async def _run(self, job_id: str, plan: Plan) -> None:
        await self._transition(job_id, JobState.PREPARING, "preparing")
        req, loras = plan.request, list(plan.loras)

        async def built(report: InsertionReport) -> None:
            await self.db.patch_job(job_id, {"applied": report.applied, "skipped": report.skipped,
                                             "trigger_words": report.trigger_words,
                                             "warnings": plan.warnings + report.warnings})

        while True:
            try:
                outcome = await run_generation(self.pool, loras, template=plan.template, params=plan.params,
                                               workflow=req.workflow, on_event=lambda e: self._on_pod_event(job_id, e),
                                               apply_mode=req.apply_mode, family=plan.family, on_built=built,
                                               request_id=job_id, key_frame=plan.key_frame)
                break
            except PrefetchFailed as exc:  # fallback: go on without that LoRA; strict: fail with the reason
                if req.lora_policy == "strict":
                    raise
                if plan.key_frame is not None and any(lora.name == exc.lora.name for lora in plan.key_frame.loras):
                    plan = await self._without_key_frame(job_id, plan, str(exc))  # the character's only LoRA: prompt only
                    loras = list(plan.loras)
                    continue
                loras = [lora for lora in loras if lora.name != exc.lora.name]  # a pair's two files go together
                plan.warnings.append(f"{exc}; generating without it")
                await self.db.patch_job(job_id, {"warnings": plan.warnings}, "warning", {"message": plan.warnings[-1]})
                self.signal(job_id)
        await self._complete(job_id, outcome.files)

    async def _without_key_frame(self, job_id: str, plan: Plan, reason: str) -> Plan:
        """The preprocess path fell through (its key-frame LoRA could not be fetched): the video
        template, prompt only, as the fallback path; recorded on the job."""
        fallback = await self.prepare(plan.request.model_copy(update={"character_id": None}))
        fallback.request, fallback.path, fallback.path_reason = plan.request, "fallback", f"{reason}; the key frame is not drawn"
        fallback.warnings = plan.warnings + [f"{reason}; generating the video from the prompt only"]
        assert fallback.template is not None
        _append_styles(fallback.params, load_template(fallback.template), [plan.key_frame_style] if plan.key_frame_style else [],
                       fallback.warnings)
        self.two_stage.discard(job_id)
        await self.db.patch_job(job_id, {**fallback.record()}, "path", {"path": "fallback", "reason": fallback.path_reason})
        self.signal(job_id)
        return fallback

    async def _follow(self, job_id: str, request: GenerationCreate) -> None:
        """Re-attach to a prompt on its pod; one the pod does not know runs again."""
        job = await self.db.get_job(job_id)
        pod = self.pool.by_name(job["pod"])
        if pod is None:
            raise GenerationRefused(f"cannot resume: pod {job['pod']} is no longer configured")
        try:
            async with self.pool.client(pod, timeout=300) as client:
                result = await client.run({}, lambda e: self._on_pod_event(job_id, e), prompt_id=job["prompt_id"],
                                          client_id=job["result"].get("client_id"), follow=True,
                                          recorded=[(type, data) for _, type, data in await self.db.events(job_id)])
        except PromptLost as exc:
            await self.record(job_id, "warning", {"message": f"{exc}; running it again"})
            await self._replan_and_run(job_id, request)
            return
        await self._complete(job_id, result.files)

    async def _complete(self, job_id: str, files: list[OutputFile]) -> None:
        """Store the outputs (and upload them), then ``succeeded`` with timings and cost."""
        out_dir = self.outputs_dir / job_id
        names = [Path(f.filename).name for f in files]
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            for f, name in zip(files, names):
                (out_dir / name).write_bytes(f.data)
        except OSError as exc:
            raise OutputsNotSaved(f"the outputs could not be saved in {out_dir}: {exc}") from None
        result: dict[str, Any] = {"outputs": names}
        bucket = self.settings.output_bucket
        if bucket:
            try:
                result["output_urls"] = await asyncio.get_running_loop().run_in_executor(
                    None, self._upload_outputs, job_id, [out_dir / n for n in names])
            except Exception as exc:  # botocore raises many types; all mean the same here
                raise OutputsNotSaved(f"the outputs are on the bridge but could not be uploaded to s3://{bucket}: "
                                      f"{type(exc).__name__}: {exc}") from None
        result.update(await self.completion(job_id))
        await self._transition(job_id, JobState.SUCCEEDED, "succeeded", result=result, data={"outputs": names})

    async def completion(self, job_id: str) -> dict[str, Any]:
        """A completed job's end: time, GPU-seconds since execution first started (across restarts), cost."""
        job = await self.db.get_job(job_id)
        now = time.time()
        seconds = max(0.0, now - job["result"]["started_at"]) if "started_at" in job["result"] else 0.0
        return {"finished_at": now, "gpu_seconds": round(seconds, 3),
                "cost": round(seconds * self.settings.cost_per_hour / 3600, 6), "reason": "completed"}

    def _upload_outputs(self, job_id: str, files: list[Path], expires: int = 24 * 3600) -> list[str]:
        """Copy a job's outputs to S3 (``s3://bucket/generations/<job>/<file>``); presigned GET URLs."""
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.policy.s3_endpoint)
        urls = []
        for path in files:
            key = f"generations/{job_id}/{path.name}"
            s3.upload_file(str(path), self.settings.output_bucket, key)
            urls.append(s3.generate_presigned_url("get_object", Params={"Bucket": self.settings.output_bucket, "Key": key},
                                                  ExpiresIn=expires))
        return urls

    # -- state and events ------------------------------------------------------------------------

    async def _transition(self, job_id: str, state: JobState, event: str, data: dict[str, Any] | None = None,
                    result: dict[str, Any] | None = None, **columns: Any) -> None:
        await self.db.transition(job_id, state, event, data, result, **columns)
        self.signal(job_id)

    async def _end(self, job_id: str, state: JobState, reason: str) -> None:
        """Terminal state with its reason; a job that already ended stays as it ended."""
        if is_terminal(await self.db.job_status(job_id)):
            return
        result = {"reason": reason, "finished_at": time.time(), **({"error": reason} if state != JobState.CANCELLED else {})}
        await self._transition(job_id, state, state.value, {"message": reason}, result)

    async def _on_pod_event(self, job_id: str, event: PodEvent) -> None:
        """A pod event as state and record: prompt id stored before submission, then the transitions."""
        if event.type == "preview":
            return
        data = event.data
        node = data.get("node")
        if isinstance(node, str) and job_id in self.two_stage:
            data = {**data, "stage": stage_of(node)}  # which of the two stages the node belongs to
        status = await self.db.job_status(job_id)
        if is_terminal(status):  # ended meanwhile by another replica (a cancel sent there): nothing more to record
            return
        if event.type == "submitting":
            await self.db.patch_job(job_id, {"client_id": data["client_id"]}, prompt_id=data["prompt_id"])
            return
        if event.type == "failover" and status != JobState.PREPARING:
            await self._transition(job_id, JobState.PREPARING, "failover", data, prompt_id=None)
            return
        if event.type == "assigned":
            await self.db.patch_job(job_id, None, "assigned", data, pod=data["pod"])
        elif event.type == "reattached" and status == JobState.PREPARING:  # stored as submitting, then the stop came
            await self._transition(job_id, JobState.SUBMITTED, "submitted", data)
        elif event.type == "submitted":
            await self._transition(job_id, JobState.SUBMITTED, "submitted", data, {"client_id": data["client_id"]},
                                   prompt_id=data["prompt_id"])
        elif event.type in RUNNING_EVENTS and status == JobState.SUBMITTED:
            await self._transition(job_id, JobState.RUNNING, "running", {}, {"started_at": time.time()})
            await self.db.add_event(job_id, event.type, data)
        else:
            await self.db.add_event(job_id, event.type, data)
        self.signal(job_id)

    async def record(self, job_id: str, type: str, data: dict[str, Any]) -> None:
        await self.db.add_event(job_id, type, data)
        self.signal(job_id)

    def signal(self, job_id: str) -> None:
        """Wake whatever waits on the job here (its streams, a ``?wait=true`` request)."""
        event = self.changed.pop(job_id, None)
        if event is not None:
            event.set()

    def watch(self, job_id: str) -> asyncio.Event:
        """An event set at the job's next change. Take it *before* reading the job: a change made
        while the read awaits the database then still wakes the reader."""
        return self.changed.setdefault(job_id, asyncio.Event())

    async def wait_ended(self, job_id: str) -> dict[str, Any]:
        """The job once it has ended (or once this replica stops)."""
        while True:
            change = self.watch(job_id)
            job = await self.db.get_job(job_id)
            if is_terminal(job["status"]) or self.stopping:
                return job
            await self.wait_change(change, 1.0)

    @staticmethod
    async def wait_change(change: asyncio.Event, timeout: float) -> bool:
        """Wait until ``change`` (from ``watch``) is set (True) or ``timeout`` passes (False)."""
        try:
            await asyncio.wait_for(change.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def _notify(self, job_id: str) -> None:
        """Send the job's signed completion webhook, if it asked for one."""
        job = await self.db.get_job(job_id)
        url = job["request"].get("webhook_url")
        if not url or not is_terminal(job["status"]):
            return
        if not self.settings.webhook_secret:
            await self.record(job_id, "webhook", {"delivered": False, "reason": "LORA_BRIDGE_WEBHOOK_SECRET is not configured"})
            return
        delivered, outcome = await webhooks.deliver(url, self.settings.webhook_secret, job_view(job), self.policy)
        await self.record(job_id, "webhook", {"delivered": delivered, "outcome": outcome})

