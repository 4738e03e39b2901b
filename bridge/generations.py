"""Generation jobs: LoRAs resolved from the registry (with fallback), run on the pool, persisted.

Every decision is recorded on the job: a LoRA that is missing, not ready, or of another base
family is dropped with a warning under ``fallback`` (the default) or fails the job under
``strict``; a dropped LoRA's fallback style words are appended to the prompt; trigger words
are prepended only for LoRAs actually applied. Events go to the database as they happen, so
a restarted bridge re-attaches to the pod by prompt id and loses nothing.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from . import webhooks
from .errors import LoraBridgeError, PodError
from .lora_insertion import LoraRequest
from .lorafiles.sources import FetchPolicy, check_source, parse_source
from .pod_client import PodEvent, PodUnavailable
from .pod_pool import PodPool, PrefetchFailed
from .registry import Database, NotFound
from .run_job import run_generation
from .templates import load_template

TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")


def job_view(job: dict[str, Any]) -> dict[str, Any]:
    """A job as the API shows it (no internal fields)."""
    result = {k: v for k, v in job["result"].items() if k != "client_id"}
    return {"id": job["id"], "status": job["status"], "pod": job["pod"], "prompt_id": job["prompt_id"],
            "created": job["created"], "updated": job["updated"], **result}


def _strength(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
        raise ValueError(f"{name} must be a number between -100 and 100, got {value!r}")
    return float(value)


class GenerationRefused(LoraBridgeError):
    """A ``strict`` job whose LoRA cannot be applied, or a request that cannot run at all."""


class Generations:
    def __init__(self, db: Database, pool: PodPool, outputs_dir: Path, rate_per_hour: float = 0.0,
                 webhook_secret: str | None = None, policy: FetchPolicy | None = None,
                 output_bucket: str | None = None) -> None:
        self.db, self.pool, self.outputs_dir, self.rate = db, pool, outputs_dir, rate_per_hour
        self.webhook_secret, self.policy = webhook_secret, policy or FetchPolicy.from_env()
        self.output_bucket = output_bucket
        self.changed: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def _upload_outputs(self, job_id: str, files: list[Path], expires: int = 24 * 3600) -> list[str]:
        """Copy a job's outputs to S3 (``s3://bucket/generations/<job>/<file>``); presigned GET URLs."""
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.policy.s3_endpoint)
        urls = []
        for path in files:
            key = f"generations/{job_id}/{path.name}"
            s3.upload_file(str(path), self.output_bucket, key)
            urls.append(s3.generate_presigned_url("get_object", Params={"Bucket": self.output_bucket, "Key": key},
                                                  ExpiresIn=expires))
        return urls

    def _signal(self, job_id: str) -> None:
        event = self.changed.pop(job_id, None)
        if event is not None:
            event.set()

    async def wait_change(self, job_id: str, timeout: float) -> None:
        event = self.changed.setdefault(job_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def record(self, job_id: str, type: str, data: dict[str, Any]) -> None:
        self.db.add_event(job_id, type, data)
        self._signal(job_id)

    def resolve_loras(self, request: dict[str, Any], family: str | None) -> tuple[list[LoraRequest], list[str], list[str]]:
        """The LoRAs to apply, the warnings, and the fallback style words of those dropped."""
        strict = request.get("lora_policy", "fallback") == "strict"
        wanted: list[tuple[dict[str, Any] | None, str, float, float]] = []
        items = request.get("loras") or request.get("lora_configs") or []
        if not isinstance(items, list):
            raise ValueError("'loras' must be a list of {lora_id, strength_model, strength_clip}")
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("lora_id"), str):
                raise ValueError(f"loras[{i}] needs a string 'lora_id'")
            sm = _strength(item.get("strength_model", 1.0), f"loras[{i}].strength_model")
            sc = _strength(item.get("strength_clip", sm), f"loras[{i}].strength_clip")
            try:
                rec = self.db.get_lora(item["lora_id"])
            except NotFound:
                rec = None
            wanted.append((rec, item["lora_id"], sm, sc))
        for kind in ("character", "brand"):
            owner = request.get(f"{kind}_id")
            if owner is not None:
                rec = self.db.latest_for_owner(kind, str(owner), family)
                strength = _strength(request.get("lora_strength", 1.0), "lora_strength")
                wanted.append((rec, f"{kind} {owner}", strength, strength))
        loras, warnings, styles = [], [], []
        for rec, label, sm, sc in wanted:
            reason = None
            if rec is None:
                reason = f"LoRA {label} not found" + (f" for base model {family}" if family else "")
            elif rec["status"] != "ready":
                reason = f"LoRA {rec['id']} ({rec['name']}) is {rec['status']}, not ready"
            elif family and rec["family"] not in (None, "unknown", family):
                reason = f"LoRA {rec['id']} ({rec['name']}) is {rec['family']}; the model is {family}"
            elif not rec["source"]:
                reason = f"LoRA {rec['id']} ({rec['name']}) has no source"
            if reason:
                if strict:
                    raise GenerationRefused(reason)
                warnings.append(reason + "; generating without it")
                if rec and rec.get("fallback_style"):
                    styles.append(rec["fallback_style"])
                continue
            assert rec is not None
            loras.append(LoraRequest(f"lora-{rec['id']}", sm, sc, source=rec["source"], sha256=rec["sha256"],
                                     family=rec["family"], trigger_words=(rec["trigger_word"],) if rec["trigger_word"] else ()))
        return loras, warnings, styles

    def prepare(self, request: dict[str, Any]) -> dict[str, Any]:
        """Validate a request before it becomes a job (raises ``LoraBridgeError`` -> 4xx)."""
        if request.get("webhook_url"):
            if not self.webhook_secret:
                raise GenerationRefused("webhooks need LORA_BRIDGE_WEBHOOK_SECRET to be configured (they are signed)")
            check_source(parse_source(str(request["webhook_url"])), self.policy)
        template = request.get("template")
        if template is None and not isinstance(request.get("workflow"), dict):
            raise GenerationRefused("give a 'template' (with 'params') or a 'workflow'")
        params = dict(request.get("params") or {})
        family = request.get("family")
        if template is not None:
            tpl = load_template(template)
            tpl.render(**params)  # parameter errors now, as 400s
            family = family or tpl.family
        loras, warnings, styles = self.resolve_loras(request, family)
        if styles and template is not None and "prompt" in load_template(template).params:
            prompt = params.get("prompt", load_template(template).params["prompt"].default)
            params["prompt"] = ", ".join([prompt, *styles])
            warnings.append(f"prompt-only fallback: appended {', '.join(styles)!r} to the prompt")
        return {"params": params, "loras": loras, "warnings": warnings, "family": family}

    def start(self, request: dict[str, Any]) -> str:
        plan = self.prepare(request)
        job_id = self.db.add_job(request)
        self.db.update_job(job_id, result={"warnings": plan["warnings"]})
        for warning in plan["warnings"]:
            self.db.add_event(job_id, "warning", {"message": warning})
        self.tasks[job_id] = asyncio.ensure_future(self._run(job_id, request, plan))
        return job_id

    async def _run(self, job_id: str, request: dict[str, Any], plan: dict[str, Any], prompt_id: str | None = None) -> None:
        started = time.monotonic()
        self.db.update_job(job_id, status="running")

        def on_event(event: PodEvent) -> None:
            self._on_pod_event(job_id, event)

        result: dict[str, Any] = {"warnings": plan["warnings"]}
        loras = list(plan["loras"])
        try:
            while True:
                try:
                    outcome = await run_generation(self.pool, loras, template=request.get("template"),
                                                   params=plan["params"], workflow=request.get("workflow"),
                                                   out_dir=self.outputs_dir / job_id, on_event=on_event,
                                                   apply_mode=request.get("apply_mode", "hotswap"))
                    break
                except PrefetchFailed as exc:  # fallback: go on without that LoRA; strict: fail with the reason
                    if request.get("lora_policy") == "strict":
                        raise
                    loras = [lora for lora in loras if lora is not exc.lora]
                    plan["warnings"].append(f"{exc}; generating without it")
                    self.record(job_id, "warning", {"message": plan["warnings"][-1]})
            seconds = time.monotonic() - started
            result.update(applied=outcome.report.applied, skipped=outcome.report.skipped,
                          trigger_words=outcome.report.trigger_words, pod=outcome.pod,
                          outputs=[p.name for p in outcome.saved], gpu_seconds=round(seconds, 3),
                          cost=round(seconds * self.rate / 3600, 6))
            if self.output_bucket:
                result["output_urls"] = await asyncio.get_running_loop().run_in_executor(
                    None, self._upload_outputs, job_id, outcome.saved)
            result["warnings"] = plan["warnings"] + outcome.report.warnings
            self.db.update_job(job_id, status="succeeded", result=result)
        except asyncio.CancelledError:
            self.db.update_job(job_id, status="cancelled", result=result)
            self.record(job_id, "cancelled", {})
            raise
        except (LoraBridgeError, PodUnavailable, PodError) as exc:
            result["error"] = str(exc)
            status = "cancelled" if "interrupted" in str(exc) else "failed"
            self.db.update_job(job_id, status=status, result=result)
            self.record(job_id, "failed" if status == "failed" else "cancelled", {"message": str(exc)})
        finally:
            self._signal(job_id)
            self.tasks.pop(job_id, None)
            await self._notify(job_id)

    async def _notify(self, job_id: str) -> None:
        """Send the job's signed completion webhook, if it asked for one."""
        job = self.db.get_job(job_id)
        url = job["request"].get("webhook_url")
        if url and self.webhook_secret:
            delivered = await webhooks.deliver(url, self.webhook_secret, job_view(job))
            self.record(job_id, "webhook", {"delivered": delivered})

    def _on_pod_event(self, job_id: str, event: PodEvent) -> None:
        """Persist a pod event (previews are not kept) and the job's pod, prompt id and client id."""
        if event.type == "preview":
            return
        data = event.data
        if event.type == "queued" and "prompt_id" in data:
            self.db.update_job(job_id, prompt_id=data["prompt_id"])
            self.db.update_job(job_id, result={**self.db.get_job(job_id)["result"], "client_id": data["client_id"]})
        if event.type == "assigned":
            self.db.update_job(job_id, pod=data["pod"])
        self.record(job_id, event.type, data)

    async def cancel(self, job_id: str) -> None:
        job = self.db.get_job(job_id)
        if job["status"] in TERMINAL_STATUSES:
            return
        task = self.tasks.get(job_id)
        if job["prompt_id"] and job["pod"]:
            for status in self.pool.status.values():
                if status.config.name == job["pod"]:
                    async with self.pool.client(status) as client:
                        await client.cancel(job["prompt_id"])
        elif task is not None:
            task.cancel()

    def resume_unfinished(self) -> None:
        """After a restart: follow running jobs on their pod by prompt id, re-run the rest."""
        for job in self.db.unfinished_jobs():
            plan = self.prepare(job["request"])
            self.record(job["id"], "resumed", {"prompt_id": job["prompt_id"]})
            self.tasks[job["id"]] = asyncio.ensure_future(self._follow(job, plan))

    async def _follow(self, job: dict[str, Any], plan: dict[str, Any]) -> None:
        pod = next((s for s in self.pool.status.values() if s.config.name == job["pod"]), None)
        if job["prompt_id"] is None or pod is None:
            await self._run(job["id"], job["request"], plan)
            return
        started = time.monotonic()
        result = job["result"]
        try:
            async with self.pool.client(pod, timeout=300) as client:
                out = await client.run({}, lambda e: self._on_pod_event(job["id"], e), prompt_id=job["prompt_id"],
                                       client_id=result.get("client_id"))
            out_dir = self.outputs_dir / job["id"]
            out_dir.mkdir(parents=True, exist_ok=True)
            for f in out.files:
                (out_dir / Path(f.filename).name).write_bytes(f.data)
            result.update(pod=job["pod"], outputs=[Path(f.filename).name for f in out.files],
                          gpu_seconds=round(time.monotonic() - started, 3))
            self.db.update_job(job["id"], status="succeeded", result=result)
        except (LoraBridgeError, PodUnavailable, PodError) as exc:
            result["error"] = str(exc)
            self.db.update_job(job["id"], status="failed", result=result)
            self.record(job["id"], "failed", {"message": str(exc)})
        finally:
            self._signal(job["id"])
            self.tasks.pop(job["id"], None)
            await self._notify(job["id"])
