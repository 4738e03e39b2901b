"""Running generation jobs: a plan (``planner.py``) run on the pool, driven through the state
machine (``states.py``), every change written once through the event hub (``hub.py``).

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
import logging
import time
from pathlib import Path
from typing import Any, Awaitable

from pydantic import ValidationError

from ..errors import GenerationRefused, JobInterrupted, LoraBridgeError, PodError, PromptLost, QueueFull
from ..graphs.key_frame import stage_of
from ..graphs.lora_insertion import InsertionReport
from ..lorafiles.sources import FetchPolicy
from ..pack_protocol import describe_validation_error
from ..pods.client import OutputFile, PodEvent
from ..pods.generation import run_generation
from ..pods.pool import PodPool, PrefetchFailed
from ..settings import Settings
from .assets import AssetStore, blake3_of, content_type_of
from .database import AsyncDatabase
from .hub import EventHub
from .metrics import JobMetrics
from .outputs import OutputStore
from .planner import Plan, Planner
from .prechecks import check_model_families
from .presets import PresetStore
from .records import GENERATION, JobRecord
from .requests import GenerationCreate
from .states import JobState, is_terminal

log = logging.getLogger("lora_bridge.jobs")
RUNNING_EVENTS = {"started", "executing", "progress", "cached", "output"}


class Generations:
    """Starts, follows, cancels and resumes jobs on this replica (one instance per service); trainings
    run on it too (``trainings.py``: ``spawn``, ``end``, ``on_pod_event``)."""

    def __init__(self, db: AsyncDatabase, pool: PodPool, outputs_dir: Path, settings: Settings, policy: FetchPolicy) -> None:
        self.db, self.pool, self.settings, self.policy = db, pool, settings, policy
        self.assets = AssetStore(db, settings.local_store_dir / "assets", policy.limits, settings.upload_bucket,
                                 policy.s3_endpoint)
        self.presets = PresetStore(db)
        self.planner = Planner(db, policy, settings.webhook_secret, assets=self.assets, presets=self.presets)
        self.hub = EventHub(db, policy, settings.webhook_secret)
        self.outputs = OutputStore(outputs_dir, settings.output_bucket, policy.s3_endpoint)
        self.metrics = JobMetrics()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.cancel_requested: set[str] = set()
        self.released: set[str] = set()  # jobs another replica claimed: their runners here stop, the jobs go on
        self.two_stage: set[str] = set()  # preprocess jobs: their events say which stage
        self.kept: dict[str, set[tuple[str | None, str | None]]] = {}  # job -> its output files kept: (node, name)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, request: GenerationCreate) -> str:
        """Plan, store as ``queued`` and start a job; refusals raise before anything is stored (``QueueFull``
        when ``max_queued`` jobs wait for a pod already)."""
        plan = await self.planner.plan(request)
        if plan.assets is not None:
            await check_model_families(self.pool, plan)
        try:
            job_id = await self.db.add_job(request.model_dump(mode="json", exclude_defaults=True), plan.record(),
                                           plan.first_events(), [r["lora_id"] for r in plan.resolved],
                                           waiting_below=self.settings.max_queued)
        except QueueFull as exc:
            raise QueueFull(f"{exc} (LORA_BRIDGE_MAX_QUEUED)", exc.retry_after) from None
        self.kept[job_id] = set()  # a new job: nothing kept yet
        self.hub.track(job_id, JobState.QUEUED)
        if plan.key_frame is not None:
            self.two_stage.add(job_id)
        self.spawn(job_id, self._run(job_id, plan))
        return job_id

    async def resume(self, jobs: list[JobRecord]) -> None:
        """Jobs this replica just claimed (after a restart, or from a replica that died): re-attach
        to them on their pods, run again what never reached one. Each job is resumed on its own;
        one that cannot be resumed fails with the reason."""
        for job in jobs:
            if job.kind != GENERATION:
                continue  # another kind's own runner resumes it
            try:
                request = GenerationCreate.model_validate(job.request)
            except ValidationError as exc:
                await self.end(job.id, JobState.FAILED, f"cannot resume: the stored request is no longer valid "
                                                        f"({describe_validation_error(exc)})")
                continue
            await self.db.add_event(job.id, "resumed", self.resumed(job))
            if job.result.get("path") == "preprocess":
                self.two_stage.add(job.id)
            if job.prompt_id and job.pod:
                self.spawn(job.id, self._follow(job.id, request))
            else:
                self.spawn(job.id, self._replan_and_run(job.id, request))

    def resumed(self, job: JobRecord) -> dict[str, Any]:
        """The ``resumed`` event of a claimed job: where it was, and which replica takes it on."""
        return {"state": job.status, "prompt_id": job.prompt_id, "pod": job.pod, "replica": self.db.replica}

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
        return self.hub.closed or job_id in self.released

    async def detach_all(self) -> None:
        """Graceful stop: let go of every job without ending it (the next start re-attaches)."""
        self.hub.close()
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

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
            await self.end(job_id, JobState.CANCELLED, "cancelled by the caller")
            self.cancel_requested.discard(job_id)
        job = await self.db.get_job(job_id)
        pod = self.pool.by_name(job.pod)
        if pod is None:
            return
        try:  # the prompt id is stored before submission, so a prompt in flight is found too
            if job.prompt_id:
                async with self.pool.client(pod, timeout=10) as client:
                    await client.cancel(job.prompt_id)
            await self.pool.cancel_prefetch(pod, job_id)
        except PodError as exc:
            await self.hub.record(job_id, "warning", {"message": f"the pod did not confirm the cancel: {exc}"})

    # -- runners ---------------------------------------------------------------------------------

    def spawn(self, job_id: str, runner: Awaitable[None]) -> None:
        """Run ``runner`` as the job's task; whatever way it ends, the job ends with its reason."""
        self.tasks[job_id] = asyncio.ensure_future(self._guarded(job_id, runner))

    async def _guarded(self, job_id: str, runner: Awaitable[None]) -> None:
        """Run ``runner`` so that every way out ends the job with its reason (or detaches it on a stop)."""
        try:
            await runner
        except asyncio.CancelledError:
            if job_id in self.cancel_requested:
                await self.end(job_id, JobState.CANCELLED, "cancelled by the caller")
            elif self.letting_go(job_id):
                where = "; it resumes on the next replica to claim it" if self.hub.closed else " (another replica holds it now)"
                await self.hub.record(job_id, "detached", {"message": f"replica {self.db.replica} let go of the job{where}"})
                if self.hub.closed:
                    raise
            else:
                await self.end(job_id, JobState.FAILED, "the job's runner was stopped unexpectedly")
        except JobInterrupted as exc:
            cancelled = job_id in self.cancel_requested
            await self.end(job_id, JobState.CANCELLED if cancelled else JobState.INTERRUPTED,
                           "cancelled by the caller" if cancelled else f"{exc} (not by the bridge)")
        except LoraBridgeError as exc:
            await self.end(job_id, JobState.FAILED, str(exc))
        except Exception as exc:  # a bug: the job still ends, with the reason, and the log has the traceback
            log.exception("job %s: unexpected error", job_id)
            await self.end(job_id, JobState.FAILED, f"internal error ({type(exc).__name__}: {exc})")
        finally:
            self.tasks.pop(job_id, None)
            self.cancel_requested.discard(job_id)
            self.released.discard(job_id)
            self.two_stage.discard(job_id)
            self.kept.pop(job_id, None)
            self.hub.forget(job_id)
            self.hub.end_previews(job_id)
            self.hub.signal(job_id)
        job = await self.db.get_job(job_id)
        if is_terminal(job.status):
            self.metrics.observe(job)
            await self.hub.notify(job)

    async def _replan_and_run(self, job_id: str, request: GenerationCreate) -> None:
        await self._run(job_id, await self.planner.plan(request))

    async def _run(self, job_id: str, plan: Plan) -> None:
        loras = list(plan.loras)

        async def built(report: InsertionReport) -> None:
            await self.db.patch_job(job_id, {"applied": report.applied, "skipped": report.skipped,
                                             "trigger_words": report.trigger_words,
                                             "warnings": plan.warnings + report.warnings})

        while True:
            req = plan.request
            try:
                assets = plan.assets
                outcome = await run_generation(self.pool, loras, template=plan.template, params=plan.params,
                                               workflow=req.workflow, on_event=lambda e: self.on_pod_event(job_id, e),
                                               apply_mode=req.apply_mode, family=plan.family, on_built=built,
                                               request_id=job_id, key_frame=plan.key_frame,
                                               placements=assets.placements if assets else None,
                                               placed_loras=assets.loras if assets else None,
                                               inputs=assets.inputs if assets else None, read=self.assets.read,
                                               on_file=lambda f: self._keep_output(job_id, f))
                break
            except PrefetchFailed as exc:  # fallback: go on without that LoRA; strict: fail with the reason
                if req.lora_policy == "strict" or exc.lora.linked:  # a LoRA the graph names itself cannot be left out
                    raise
                if plan.key_frame is not None and any(lora.name == exc.lora.name for lora in plan.key_frame.loras):
                    plan = await self.planner.without_key_frame(plan, str(exc))  # the character's only LoRA: prompt only
                    self.two_stage.discard(job_id)
                    await self.hub.patch(job_id, plan.record(), "path", {"path": "fallback", "reason": plan.path_reason})
                    loras = list(plan.loras)
                    continue
                loras = [lora for lora in loras if lora.name != exc.lora.name]  # a pair's two files go together
                plan.warnings.append(f"{exc}; generating without it")
                await self.hub.patch(job_id, {"warnings": plan.warnings}, "warning", {"message": plan.warnings[-1]})
        await self._complete(job_id, outcome.files)

    async def _follow(self, job_id: str, request: GenerationCreate) -> None:
        """Re-attach to a prompt on its pod; one the pod does not know runs again."""
        job = await self.db.get_job(job_id)
        pod = self.pool.by_name(job.pod)
        if pod is None:
            raise GenerationRefused(f"cannot resume: pod {job.pod} is no longer in the fleet")
        try:
            async with self.pool.client(pod, timeout=300) as client:
                result = await client.run({}, lambda e: self.on_pod_event(job_id, e), prompt_id=job.prompt_id,
                                          client_id=job.result.get("client_id"), follow=True,
                                          recorded=[(e.type, e.data) for e in await self.db.events(job_id)],
                                          on_file=lambda f: self._keep_output(job_id, f))
        except PromptLost as exc:
            await self.hub.record(job_id, "warning", {"message": f"{exc}; running it again"})
            await self._replan_and_run(job_id, request)
            return
        await self._complete(job_id, result.files)

    async def _keep_output(self, job_id: str, file: OutputFile) -> None:
        """One output file as soon as the pod has it: saved (and uploaded), minted as an asset, an ``output_saved``
        event. A file kept already (as it came, or before a restart) is kept once."""
        name = Path(file.filename).name
        kept = self.kept.get(job_id)
        if kept is None:  # the job's kept files read once per runner: those of a run before a restart count too
            kept = self.kept[job_id] = {(a.node_id, a.file_path) for a in await self.assets.of_job(job_id)}
        if (file.node_id, name) in kept:
            return
        location = await self.outputs.save(job_id, file)
        asset = await self.assets.add(kind="output", blake3=blake3_of(file.data), size=len(file.data),
                                      content_type=content_type_of(name), file_path=name, location=location,
                                      job_id=job_id, node_id=file.node_id)
        kept.add((file.node_id, name))
        await self.hub.record(job_id, "output_saved", {"asset_id": asset.id, "node": file.node_id, "name": name})

    async def _complete(self, job_id: str, files: list[OutputFile]) -> None:
        """Every output kept (most were as they came), then ``succeeded`` with the outputs, timings and cost."""
        for file in files:
            await self._keep_output(job_id, file)
        saved = await self.outputs.account(job_id, [Path(f.filename).name for f in files])
        await self.hub.transition(job_id, JobState.SUCCEEDED, "succeeded", data={"outputs": saved["outputs"]},
                                  result=lambda record: {**saved, **self.completion(record)})

    def completion(self, result: dict[str, Any]) -> dict[str, Any]:
        """A completed job's end, from its record's ``result``: time, GPU-seconds since execution first
        started (across restarts), cost."""
        now = time.time()
        seconds = max(0.0, now - result["started_at"]) if "started_at" in result else 0.0
        return {"finished_at": now, "gpu_seconds": round(seconds, 3),
                "cost": round(seconds * self.settings.cost_per_hour / 3600, 6), "reason": "completed"}

    # -- state -----------------------------------------------------------------------------------

    async def end(self, job_id: str, state: JobState, reason: str) -> None:
        """Terminal state with its reason; a job that already ended stays as it ended."""
        if is_terminal(await self.db.job_status(job_id)):
            return
        result = {"reason": reason, "finished_at": time.time(), **({"error": reason} if state != JobState.CANCELLED else {})}
        await self.hub.transition(job_id, state, state.value, {"message": reason}, result)

    async def on_pod_event(self, job_id: str, event: PodEvent) -> None:
        """A pod event as state and record: prompt id stored before submission, then the transitions."""
        if event.type == "preview":  # live only: kept in memory for the streams that relay previews
            if isinstance(event.data.get("image"), bytes):
                self.hub.preview(job_id, str(event.data.get("format", "jpeg")), event.data["image"])
            return
        data = event.data
        node = data.get("node")
        if isinstance(node, str) and job_id in self.two_stage:
            data = {**data, "stage": stage_of(node)}  # which of the two stages the node belongs to
        status = await self.hub.state(job_id)
        if is_terminal(status):
            return
        # each write below leaves a job another replica ended meanwhile (a cancel sent there) as it ended
        if event.type == "submitting":
            await self.db.patch_job(job_id, {"client_id": data["client_id"]}, prompt_id=data["prompt_id"], unless_ended=True)
        elif event.type in ("failover", "moved", "waiting") and status != JobState.QUEUED:  # waiting for a pod (again)
            await self.hub.transition(job_id, JobState.QUEUED, event.type, data, prompt_id=None, unless_ended=True)
        elif event.type == "assigned" and status == JobState.QUEUED:
            await self.hub.transition(job_id, JobState.PREPARING, "preparing", {}, then=(event.type, data),
                                      pod=data["pod"], unless_ended=True)
        elif event.type == "assigned":
            await self.hub.patch(job_id, None, event.type, data, pod=data["pod"], unless_ended=True)
        elif event.type == "reattached" and status == JobState.PREPARING:  # stored as submitting, then the stop came
            await self.hub.transition(job_id, JobState.SUBMITTED, "submitted", data, unless_ended=True)
        elif event.type == "submitted":
            await self.hub.transition(job_id, JobState.SUBMITTED, "submitted", data, {"client_id": data["client_id"]},
                                      prompt_id=data["prompt_id"], unless_ended=True)
        elif event.type in RUNNING_EVENTS and status == JobState.SUBMITTED:
            await self.hub.transition(job_id, JobState.RUNNING, "running", {}, {"started_at": time.time()},
                                      then=(event.type, data), unless_ended=True)
        else:
            await self.hub.record(job_id, event.type, data, unless_ended=True)
