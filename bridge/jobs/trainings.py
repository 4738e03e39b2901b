"""Training jobs: a dataset in, a verified LoRA registered, validated and ready.

A training is a job like a generation (the same table, state machine, events, SSE/WebSocket
routes, webhooks, timings and cost), and it owns one registry entry, which follows it:

    job:    queued ─▶ preparing ─▶ submitted ─▶ running ─────────────────────────▶ succeeded
    entry:  training ─────────────────────────────────────▶ validating ─▶ ready

- ``preparing``: the pool chooses a pod; the checked, normalized dataset is sent to its
  ``input/lora_bridge_datasets/<job>`` (``dataset`` event); the training graph is fitted to that
  pod's ComfyUI (``bridge/training/graph.py``).
- ``running``: one ``progress`` event per training step (and the loss history at the end).
- Then the LoRA is fetched from the pod, inspected (a LoRA of the base model's family), hashed,
  stored like an upload and attached to the entry (``stored``); the entry is ``validating`` while a
  sample generation with the trigger word and the new LoRA runs (``validated``, the image is the
  job's output), then ``ready``.

Any failure, a cancel or a refused dataset ends the job ``failed``/``cancelled`` with its reason and
the entry ``failed`` with the same reason. However the job ends, the pod's copy of the dataset and
the trained file are removed. A pod that dies fails the job, or, with ``retries``, runs it again on
another pod (the dataset goes with it). After a restart, a training whose prompt is known is
followed on its pod again; one that never reached a pod starts again from the kept dataset.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import (
    GenerationRefused,
    JobInterrupted,
    LoraBridgeError,
    PodError,
    PromptLost,
)
from ..graphs.lora_insertion import LoraRequest
from ..graphs.templates import TemplateError, load_template
from ..lorafiles.families import variant_name
from ..pack_protocol import (
    TRAINING_DATASETS,
    TRAINING_UI_KEY,
    describe_validation_error,
)
from ..pods.client import JobResult, PodEvent
from ..pods.generation import run_generation
from ..pods.pool import PodStatus
from ..training.dataset import Dataset, DatasetInvalid, read_files, read_zip
from ..training.graph import training_graph
from ..training.presets import TrainingSettings, settings_for
from ..training.sources import fetch_files, s3_prefix_sources
from . import webhooks
from .character_paths import KEY_FRAME_TEMPLATES
from .records import JobRecord, LoraRecord
from .requests import LoraCreate, TrainingCreate
from .runner import Generations
from .states import JobState
from .uploads import LoraUploads

KIND = "training"  # the job record's request kind (records.GENERATION for generations)
DATASET_FILE = "dataset.zip"  # the normalized dataset, kept beside the job's outputs until it ends


class TrainedLoraRefused(LoraBridgeError):
    """The file the pod trained is not a LoRA of the base model's family."""


@dataclasses.dataclass
class TrainingPlan:
    request: TrainingCreate
    family: str
    settings: TrainingSettings
    images: int


class Trainings:
    """Starts, runs, cancels and resumes training jobs, on the generations' job core."""

    def __init__(self, jobs: Generations, uploads: LoraUploads) -> None:
        self.jobs, self.uploads = jobs, uploads
        self.db, self.pool = jobs.db, jobs.pool
        self.staged: dict[str, set[str]] = {}  # job -> pods holding its dataset (cleaned when it ends)

    # -- intake ------------------------------------------------------------------------------------

    def check(self, request: TrainingCreate) -> str:
        """Refusals before anything is stored: the template, the webhook; returns the LoRA family."""
        template = load_template(request.template)
        if template.kind != "training":
            raise TemplateError(f"template '{request.template}' is not a training template")
        if template.family not in KEY_FRAME_TEMPLATES:
            raise TemplateError(f"template '{request.template}' trains a {template.family} LoRA, which has no image template "
                                f"to validate it with")
        load_template(KEY_FRAME_TEMPLATES[template.family]).render(**self._validation_params(request))
        if request.webhook_url:
            if not self.jobs.settings.webhook_secret:
                raise GenerationRefused("webhooks need LORA_BRIDGE_WEBHOOK_SECRET to be configured (they are signed)")
            webhooks.check_webhook_url(request.webhook_url, self.jobs.policy)
        return template.family

    @staticmethod
    def _validation_params(request: TrainingCreate) -> dict[str, Any]:
        return {"checkpoint": request.checkpoint, "seed": request.seed, **request.validation_params,
                "prompt": request.validation_prompt}

    async def dataset_from_sources(self, request: TrainingCreate) -> Dataset:
        """The dataset a JSON request names (URLs, S3 keys or an S3 prefix), fetched and checked whole."""
        if request.dataset_urls is None and request.dataset_s3_prefix is None:
            raise DatasetInvalid("no dataset: send a zip (POST /v1/trainings/upload) or give dataset_urls or dataset_s3_prefix")
        policy = self.jobs.policy

        def fetch() -> Dataset:
            sources = request.dataset_urls or s3_prefix_sources(str(request.dataset_s3_prefix), policy)
            return read_files(fetch_files(list(sources), policy), request.trigger_word)

        return await asyncio.get_running_loop().run_in_executor(None, fetch)

    @staticmethod
    def dataset_from_zip(request: TrainingCreate, data: bytes) -> Dataset:
        return read_zip(data, request.trigger_word)

    async def start(self, request: TrainingCreate, family: str, dataset: Dataset) -> tuple[str, LoraRecord]:
        """Store the registry entry (``training``) and the job (``queued``), keep the dataset, start it
        (``family``: what ``check`` answered for the request)."""
        plan = TrainingPlan(request, family, settings_for(request.preset, request.overrides()), len(dataset.items))
        owner = LoraCreate(name=request.name, **{k: v for k in ("character_id", "brand_id")
                                                 if (v := getattr(request, k)) is not None}).registry_fields()
        entry = await self.db.add_lora({**owner, "status": "training", "family": family, "trigger_word": request.trigger_word,
                                        "rank": plan.settings.rank, "metadata": {"dataset": dataset.summary()}})
        record = {"kind": KIND, "lora_id": entry.id, "dataset": dataset.summary(),
                  "settings": plan.settings.to_dict(plan.images)}
        request_json = {"kind": KIND, **request.model_dump(mode="json", exclude_defaults=True)}
        job_id = await self.db.add_job(request_json, record, [("queued", {"lora_id": entry.id})])
        await self.db.update_lora(entry.id, {"metadata": {**entry.metadata, "training_job": job_id}})
        folder = self.jobs.outputs.folder(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / DATASET_FILE).write_bytes(dataset.to_zip())
        self.jobs.spawn(job_id, self._guarded(job_id, entry.id, self._run(job_id, entry.id, plan)))
        return job_id, await self.db.get_lora(entry.id)

    async def resume(self, jobs: list[JobRecord]) -> None:
        """Trainings this replica just claimed: follow them on their pods again, or start again those that
        never reached one."""
        for job in jobs:
            if job.kind != KIND:
                continue
            lora_id: str | None = job.result.get("lora_id")
            try:
                if lora_id is None:
                    raise KeyError("the job names no LoRA entry")
                request = TrainingCreate.model_validate({k: v for k, v in job.request.items() if k != "kind"})
                plan = TrainingPlan(request, self.check(request), settings_for(request.preset, request.overrides()),
                                    job.result["dataset"]["images"])
            except (ValidationError, LoraBridgeError, KeyError) as exc:
                reason = describe_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
                await self._fail_entry(lora_id, f"cannot resume: {reason}")
                await self.jobs.end(job.id, JobState.FAILED, f"cannot resume: {reason}")
                continue
            await self.db.add_event(job.id, "resumed", self.jobs.resumed(job))
            runner = self._follow(job.id, lora_id, plan) if job.prompt_id and job.pod else self._run(job.id, lora_id, plan)
            self.jobs.spawn(job.id, self._guarded(job.id, lora_id, runner))

    # -- running ------------------------------------------------------------------------------------

    async def _guarded(self, job_id: str, lora_id: str, runner: Any) -> None:
        """Whatever ends the job also fails its entry (same reason) and cleans the pods; a graceful
        stop only detaches (the job goes on on its pod)."""
        try:
            await runner
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and self.jobs.letting_go(job_id) and job_id not in self.jobs.cancel_requested:
                raise
            await self._interrupt(job_id)
            await self._fail_entry(lora_id, self._reason(job_id, exc))
            await self._clean(job_id)
            raise

    def _reason(self, job_id: str, exc: BaseException) -> str:
        if isinstance(exc, asyncio.CancelledError) or (isinstance(exc, JobInterrupted) and job_id in self.jobs.cancel_requested):
            return "cancelled by the caller"
        if isinstance(exc, LoraBridgeError):
            return str(exc)
        return f"internal error ({type(exc).__name__}: {exc})"

    async def _fail_entry(self, lora_id: str | None, reason: str) -> None:
        if lora_id is None:
            return
        try:
            entry = await self.db.get_lora(lora_id)
        except LoraBridgeError:
            return
        if entry.status != "ready":
            await self.db.update_lora(lora_id, {"status": "failed", "metadata": {**entry.metadata, "failure": reason}})

    async def _run(self, job_id: str, lora_id: str, plan: TrainingPlan) -> None:
        dataset = (self.jobs.outputs.folder(job_id) / DATASET_FILE).read_bytes()
        req, settings = plan.request, plan.settings
        params = {"checkpoint": req.checkpoint, "dataset": f"{TRAINING_DATASETS}/{job_id}", "output": job_id,
                  "trigger_word": req.trigger_word, "resolution": settings.resolution, "steps": settings.steps_for(plan.images),
                  "learning_rate": settings.learning_rate, "rank": settings.rank, "batch_size": settings.batch_size,
                  "seed": req.seed, "training_dtype": req.training_dtype}

        async def stage(pod: PodStatus) -> None:  # the dataset onto the pod the pool chose (again after a failover)
            async with self.pool.client(pod, timeout=300) as client:
                await client.delete_dataset(job_id)
                self.staged.setdefault(job_id, set()).add(pod.config.url)
                summary = await client.put_dataset(job_id, dataset)
            await self.jobs.hub.record(job_id, "dataset", {"pod": pod.config.name, **summary})

        result, pod = await self.pool.run(lambda p, _named: training_graph(req.template, params, p.object_info), [],
                                          lambda e: self.jobs.on_pod_event(job_id, e), request_id=job_id, stage=stage,
                                          retry_delays=self.pool.retry_delays[:req.retries])
        await self._finish(job_id, lora_id, plan, result, pod)

    async def _follow(self, job_id: str, lora_id: str, plan: TrainingPlan) -> None:
        """Re-attach to a training prompt on its pod; one the pod no longer knows runs again."""
        job = await self.db.get_job(job_id)
        pod = self.pool.by_name(job.pod)
        if pod is None:
            raise PodError(f"cannot resume: pod {job.pod} is no longer in the fleet")
        self.staged.setdefault(job_id, set()).add(pod.config.url)
        try:
            async with self.pool.client(pod, timeout=300) as client:
                result = await client.run({}, lambda e: self.jobs.on_pod_event(job_id, e), prompt_id=job.prompt_id,
                                          client_id=job.result.get("client_id"), follow=True,
                                          recorded=[(e.type, e.data) for e in await self.db.events(job_id)])
        except PromptLost as exc:
            await self.jobs.hub.record(job_id, "warning", {"message": f"{exc}; training again"})
            await self.jobs.hub.transition(job_id, JobState.QUEUED, "failover", {"reason": str(exc)}, prompt_id=None)
            await self._run(job_id, lora_id, plan)
            return
        await self._finish(job_id, lora_id, plan, result, pod)

    async def _finish(self, job_id: str, lora_id: str, plan: TrainingPlan, result: JobResult, pod: PodStatus) -> None:
        """Fetch, verify, store and attach the LoRA; validate it; ``ready`` and ``succeeded``."""
        reports = [item for out in result.outputs.values() for item in out.get(TRAINING_UI_KEY, [])]
        if len(reports) != 1:
            raise PodError(f"the training prompt reported {len(reports)} saved LoRA(s), expected 1")
        report = reports[0]
        if report.get("loss"):
            await self.jobs.hub.record(job_id, "loss", {"loss": report["loss"], "final": report["loss"][-1]})
        async with self.pool.client(pod, timeout=300) as client:
            data = await client.view(report["filename"], report["subfolder"], report["type"])
        staged = self.uploads.stage_bytes(data, f"{plan.request.name}.safetensors")
        try:
            info = staged.info
            if info.sha256 != report.get("sha256"):
                raise TrainedLoraRefused(f"the trained file changed on its way from the pod (SHA-256 {(info.sha256 or '')[:12]}…, "
                                         f"the pod wrote {str(report.get('sha256'))[:12]}…)")
            if info.family != plan.family:
                raise TrainedLoraRefused(f"the trained file is {variant_name(info.family, info.variant)}, "
                                         f"not the base model's {plan.family}")
            source = await self.uploads.commit(staged)
        except BaseException:
            self.uploads.discard(staged)
            raise
        entry = await self.db.get_lora(lora_id)
        metadata = {**entry.metadata, **info.metadata, "training_steps": report.get("steps"),
                    "final_loss": report["loss"][-1] if report.get("loss") else None}
        await self.db.update_lora(lora_id, {"status": "validating", "source": source, "sha256": info.sha256, "size": info.size,
                                            "rank": info.rank, "family": info.family, "variant": info.variant, "metadata": metadata})
        await self.jobs.hub.record(job_id, "stored", {"lora_id": lora_id, "sha256": info.sha256, "size": info.size,
                                                  "family": info.family, "trigger_words": info.trigger_words})
        image = await self._validate(job_id, lora_id, plan)
        end = self.jobs.completion((await self.db.get_job(job_id)).result)
        await self._clean(job_id)
        await self.db.update_lora(lora_id, {"status": "ready", "metadata": {**metadata, "validation_image": image,
                                                                       "validation_job": job_id}})
        await self.jobs.hub.transition(job_id, JobState.SUCCEEDED, "succeeded", {"lora_id": lora_id, "outputs": [image]},
                                    {"outputs": [image], **end})

    async def _validate(self, job_id: str, lora_id: str, plan: TrainingPlan) -> str:
        """A sample generation with the trigger word and the new LoRA; its image kept as the job's output."""
        entry = await self.db.get_lora(lora_id)
        template = KEY_FRAME_TEMPLATES[plan.family]
        req = plan.request
        params = self._validation_params(req)
        await self.jobs.hub.record(job_id, "validating", {"lora_id": lora_id, "template": template})
        lora = LoraRequest(f"lora-{lora_id}", 1.0, 1.0, source=entry.source, sha256=entry.sha256, family=entry.family,
                           trigger_words=(req.trigger_word,))

        async def on_event(event: PodEvent) -> None:
            if event.type == "progress":
                await self.jobs.hub.record(job_id, "progress", {**event.data, "stage": "validation"})

        outcome = await run_generation(self.pool, [lora], template=template, params=params, on_event=on_event,
                                       family=plan.family, request_id=f"{job_id}-validation")
        if not outcome.files:
            raise PodError("the validation generation produced no image")
        name = f"validation-{Path(outcome.files[0].filename).name}"
        (self.jobs.outputs.folder(job_id) / name).write_bytes(outcome.files[0].data)
        await self.jobs.hub.record(job_id, "validated", {"lora_id": lora_id, "image": name})
        return name

    # -- cleanup ------------------------------------------------------------------------------------

    async def _interrupt(self, job_id: str) -> None:
        """Stop the job's prompt on its pod and wait until it has left the queue (it may still write)."""
        job = await self.db.get_job(job_id)
        pod = self.pool.by_name(job.pod)
        if pod is None or not job.prompt_id:
            return
        try:
            async with self.pool.client(pod, timeout=10) as client:
                await client.cancel(job.prompt_id)
                for _ in range(120):
                    if await client.queue_position(job.prompt_id) is None:
                        break
                    await asyncio.sleep(0.25)
        except PodError as exc:
            await self.jobs.hub.record(job_id, "warning", {"message": f"the pod did not confirm the stop: {exc}"})

    async def _clean(self, job_id: str) -> None:
        """Remove the dataset and the trained file from every pod that got them, and the kept dataset."""
        for url in sorted(self.staged.pop(job_id, set())):
            pod = self.pool.status.get(url)
            if pod is None:
                continue
            try:
                async with self.pool.client(pod, timeout=30) as client:
                    removed = await client.delete_dataset(job_id)
                await self.jobs.hub.record(job_id, "cleaned", {"pod": pod.config.name, **removed})
            except PodError as exc:
                await self.jobs.hub.record(job_id, "warning", {"message": f"{pod.config.name}: the job's files could not be removed: {exc}"})
        (self.jobs.outputs.folder(job_id) / DATASET_FILE).unlink(missing_ok=True)

