"""The job core against the real pod: a stop or a crash mid-job, unresumable jobs at start-up,
cancel in every state, pod facts that went stale, and every runner stage ending the job."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from comfyui_lora_bridge.bridge.jobs.database import AsyncDatabase, Database
from comfyui_lora_bridge.bridge.jobs.records import JobRecord
from comfyui_lora_bridge.bridge.jobs.requests import GenerationCreate
from comfyui_lora_bridge.bridge.jobs.runner import Generations
from comfyui_lora_bridge.bridge.jobs.states import JobState
from comfyui_lora_bridge.bridge.lorafiles.sources import FetchPolicy
from comfyui_lora_bridge.bridge.pods.client import PodClient
from comfyui_lora_bridge.bridge.pods.pool import PodConfig, PodPool
from comfyui_lora_bridge.bridge.settings import Settings
from comfyui_lora_bridge.testing.file_server import Faults
from service_harness import KEY, Service
from support import CHECKPOINT, POD_TOKEN

pytestmark = pytest.mark.comfy
PARAMS = {"checkpoint": CHECKPOINT, "width": 64, "height": 64, "steps": 3, "seed": 61}


@pytest.fixture(scope="module")
def lora_source(s3, weights) -> str:
    s3.client.put_object(Bucket="loras", Key="core/char.safetensors", Body=Path(weights.loras["kohya"]).read_bytes())
    return "s3://loras/core/char.safetensors"


def _character(svc: Service, character: int, source: str) -> dict:
    status, lora = svc.call("POST", "/v1/loras", {"name": f"character {character}", "character_id": character,
                                                  "status": "ready", "source": source})
    assert status == 201, lora
    return lora


def _pod_queue(comfy) -> dict:
    async def go() -> JobRecord:
        async with PodClient(comfy.url, token=POD_TOKEN) as client:
            return await client.get_json("/queue")
    return asyncio.run(go())


@pytest.mark.parametrize("how", ["graceful stop", "crash"])
def test_a_stop_or_crash_mid_job_resumes_the_same_record(comfy, s3, lora_source, tmp_path, how, db_url) -> None:
    svc = Service([comfy.url], tmp_path, s3.endpoint, db_url=db_url).start()
    try:
        _character(svc, 301, lora_source)
        _, job = svc.call("POST", "/v1/generations", {"template": "sd15_txt2img", "character_id": 301,
                                                      "params": {**PARAMS, "steps": 25, "seed": 62}})
        svc.wait_for(job["id"], "progress")
        before = Database(db_url, replica="test-reader").get_job(job["id"])
        assert before.result["applied"] and before.result["trigger_words"] == ["ohwx"]  # stored when known
        if how == "graceful stop":
            assert svc.stop() == 0
            stopped = Database(db_url, replica="test-reader").get_job(job["id"])
            assert stopped.status == "running" and "detached" in [t for _, t, _ in svc.peek(job["id"])]
        else:
            svc.kill()
        down_at = time.time()
        time.sleep(1.0)  # the pod works on while no bridge listens
        svc.start()
        rec = svc.wait_end(job["id"])
        assert rec["status"] == "succeeded", rec
        assert rec["outputs"] and rec["applied"][0]["strength_model"] == 1.0 and rec["trigger_words"] == ["ohwx"]
        assert rec["prompt_id"] == before.prompt_id and rec["pod"] == before.pod
        assert rec["gpu_seconds"] >= down_at - before.result["started_at"]  # counted from the first start
        assert rec["cost"] == pytest.approx(rec["gpu_seconds"] / 1000, rel=0.01)
        events = svc.events(job["id"])
        types = [t for _, t, _ in events]
        assert types.count("queued") == 1 and types.count("submitted") == 1 and "resumed" in types
        pod_events = [json.dumps([t, {k: v for k, v in d.items() if k != "timestamp"}], sort_keys=True)
                      for _, t, d in events if t in ("started", "cached", "executing", "progress", "output", "success")]
        assert "progress" in types and len(pod_events) == len(set(pod_events)), pod_events  # each pod event once
        assert types[-1] == "succeeded" and types.count("succeeded") == 1
        status, png = svc.call("GET", f"/v1/generations/{job['id']}/outputs/0")
        assert status == 200 and png[:4] == b"\x89PNG"
        history = urllib.request.urlopen(urllib.request.Request(f"{comfy.url}/history/{rec['prompt_id']}"))
        assert rec["prompt_id"] in json.load(history)  # ran once, under the id stored before submission
    finally:
        svc.kill()


@pytest.mark.bridge_logic  # what resumes and what fails is decided before any pod is asked
def test_start_up_survives_jobs_that_cannot_be_resumed(comfy, tmp_path) -> None:
    db = Database(str(tmp_path / "bridge.sqlite3"))
    failed_lora = db.add_lora({"name": "char 401", "owner_kind": "character", "owner_id": "401", "status": "failed",
                               "family": "sd15", "source": "s3://loras/core/char.safetensors"})
    strict = db.add_job({"template": "sd15_txt2img", "params": PARAMS, "character_id": 401, "lora_policy": "strict"}, {}, [("queued", {})])
    hook = db.add_job({"template": "sd15_txt2img", "params": PARAMS, "webhook_url": "http://127.0.0.1:9/hook"}, {}, [("queued", {})])
    for state, event in ((JobState.PREPARING, "preparing"), (JobState.SUBMITTED, "submitted"), (JobState.RUNNING, "running")):
        db.transition(hook, state, event, pod=comfy.url, prompt_id="00000000-0000-4000-8000-000000000000")
    junk = db.add_job({"template": 5, "params": "x"}, {}, [("queued", {})])
    fine = db.add_job({"template": "sd15_txt2img", "params": PARAMS}, {}, [("queued", {})])
    svc = Service([comfy.url], tmp_path, env={"LORA_BRIDGE_WEBHOOK_SECRET": ""}).start()  # no webhook secret now
    try:
        records = {name: svc.wait_end(job) for name, job in (("strict", strict), ("hook", hook), ("junk", junk), ("fine", fine))}
        assert records["fine"]["status"] == "succeeded"
        assert records["strict"]["status"] == "failed" and f"LoRA {failed_lora.id}" in records["strict"]["reason"]
        assert "is failed, not ready" in records["strict"]["reason"]
        assert records["hook"]["status"] == "failed" and "LORA_BRIDGE_WEBHOOK_SECRET" in records["hook"]["reason"]
        assert records["junk"]["status"] == "failed" and records["junk"]["reason"].startswith("cannot resume")
        hook_events = svc.events(hook)
        types = [t for _, t, _ in hook_events]
        assert "resumed" in types and types.index("resumed") < types.index("failed")  # unknown to the pod: planned again
        assert hook_events[-1][1:] == ("webhook", {"delivered": False, "reason": "LORA_BRIDGE_WEBHOOK_SECRET is not configured"})
    finally:
        svc.kill()


def _sse_lines(svc: Service, job_id: str, seconds: float) -> list[str]:
    """The raw SSE lines of a job for ``seconds`` (heartbeats included)."""
    req = urllib.request.Request(f"{svc.url}/v1/generations/{job_id}/events", headers={"Authorization": f"Bearer {KEY}"})
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    with urllib.request.urlopen(req, timeout=seconds) as stream:
        try:
            while time.monotonic() < deadline:
                lines.append(stream.readline().decode().rstrip("\n"))
        except (socket.timeout, TimeoutError):
            pass
    return lines


def test_cancel_a_prompt_waiting_in_the_pods_queue(comfy, tmp_path) -> None:
    svc = Service([comfy.url], tmp_path).start()
    try:
        # long enough to still run while the second waits behind it (cancelled at the end, not waited for)
        _, first = svc.call("POST", "/v1/generations", {"template": "sd15_txt2img", "params": {**PARAMS, "steps": 150, "seed": 63}})
        svc.wait_for(first["id"], "progress")
        _, second = svc.call("POST", "/v1/generations", {"template": "sd15_txt2img", "params": {**PARAMS, "seed": 64}})
        svc.wait_for(second["id"], "submitted")
        lines = _sse_lines(svc, second["id"], 1.6)  # nothing happens to a waiting job: heartbeats keep the stream alive
        assert lines.count(": heartbeat") >= 2, lines
        prompt = Database(str(svc.db_path)).get_job(second["id"]).prompt_id
        assert any(item[1] == prompt for item in _pod_queue(comfy)["queue_pending"])
        status, rec = svc.call("DELETE", f"/v1/generations/{second['id']}")
        assert status == 200 and rec["status"] == "cancelled" and rec["reason"] == "cancelled by the caller"
        assert not any(item[1] == prompt for item in _pod_queue(comfy)["queue_pending"])  # gone from the pod
        assert svc.call("DELETE", f"/v1/generations/{first['id']}")[1]["status"] == "cancelled"
        assert svc.call("DELETE", f"/v1/generations/{first['id']}")[1]["status"] == "cancelled"  # again: no change
    finally:
        svc.kill()


def test_cancel_while_the_pod_downloads_the_lora(comfy, file_server, weights, tmp_path) -> None:
    data = Path(weights.loras["kohya_b"]).read_bytes()
    file_server.add("/stalling.safetensors", data, Faults(stall_at=len(data) // 2, stall_seconds=30))
    svc = Service([comfy.url], tmp_path).start()
    try:
        _, lora = svc.call("POST", "/v1/loras", {"name": "slow", "character_id": 402, "status": "ready", "family": "sd15",
                                                 "source": file_server.url("/stalling.safetensors")})
        _, job = svc.call("POST", "/v1/generations", {"template": "sd15_txt2img", "params": PARAMS, "character_id": 402})

        def downloads() -> list[dict]:
            req = urllib.request.Request(f"{comfy.url}/lora_bridge/prefetch", headers={"Authorization": f"Bearer {POD_TOKEN}"})
            return json.load(urllib.request.urlopen(req))["downloads"]

        for _ in range(200):
            if any(d["request_id"] == job["id"] for d in downloads()):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the pod never started the download")
        status, rec = svc.call("DELETE", f"/v1/generations/{job['id']}")
        assert status == 200 and rec["status"] == "cancelled" and rec["prompt_id"] is None
        for _ in range(100):  # the pod lets go of the download (not after the 30 s stall)
            if not any(d["request_id"] == job["id"] for d in downloads()):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the pod is still downloading")
    finally:
        svc.kill()


def test_a_checkpoint_added_to_the_pod_later_is_found(comfy, weights, tmp_path) -> None:
    svc = Service([comfy.url], tmp_path).start()
    late = comfy.models_dir("checkpoints") / "added-later.safetensors"
    try:
        assert svc.call("POST", "/v1/generations?wait=true", {"template": "sd15_txt2img", "params": PARAMS})[1]["status"] == "succeeded"
        late.symlink_to(weights.checkpoint)
        status, rec = svc.call("POST", "/v1/generations?wait=true",
                               {"template": "sd15_txt2img", "params": {**PARAMS, "checkpoint": late.name}})
        assert status == 200 and rec["status"] == "succeeded", rec
        status, rec = svc.call("POST", "/v1/generations?wait=true",
                               {"template": "sd15_txt2img", "params": {**PARAMS, "checkpoint": "never-added.safetensors"}})
        assert rec["status"] == "failed" and "not one of the pod's choices" in rec["reason"]
    finally:
        late.unlink(missing_ok=True)
        svc.kill()


def _run_in_process(comfy, tmp_path: Path, request: dict, settings: Settings | None = None,
                    outputs: Path | None = None, patch=None) -> JobRecord:
    """One job through the real job core and pod, in this process; its final record."""
    settings = settings or Settings.from_env({"LORA_BRIDGE_CACHE": str(tmp_path)})

    async def go() -> JobRecord:
        gens = Generations(AsyncDatabase(Database(str(tmp_path / "db.sqlite3"))), PodPool([PodConfig(comfy.url, POD_TOKEN)]),
                           outputs or tmp_path / "out", settings, FetchPolicy.from_settings(settings))
        if patch:
            patch(gens)
        job_id = await gens.start(GenerationCreate.model_validate(request))
        await gens.tasks[job_id]
        job = await gens.db.get_job(job_id)
        events = await gens.db.events(job_id)
        assert events[-1].type == job.status and events[-1].data["message"] == job.result["reason"]  # state and log agree
        return job

    return asyncio.run(go())


def test_every_stage_of_the_runner_ends_the_job(comfy, s3, tmp_path) -> None:
    job = {"template": "sd15_txt2img", "params": PARAMS}
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    rec = _run_in_process(comfy, tmp_path / "a", job, outputs=blocked / "out")
    assert rec.status == "failed" and "could not be saved" in rec.result["reason"]
    configured = dataclasses.replace(Settings.from_env({"LORA_BRIDGE_CACHE": str(tmp_path)}),
                                     output_bucket="no-such-bucket", s3_endpoint=s3.endpoint)
    rec = _run_in_process(comfy, tmp_path / "b", job, settings=configured)
    assert rec.status == "failed" and "could not be uploaded to s3://no-such-bucket" in rec.result["reason"]
    editor = {"nodes": [{"id": 1, "type": "NoSuchNode", "inputs": [], "outputs": [{"name": "X", "type": "X"}]}], "links": []}
    rec = _run_in_process(comfy, tmp_path / "c", {"workflow": editor, "family": "sd15"})
    assert rec.status == "failed" and "not installed on the pod" in rec.result["reason"]

    def explode(gens: Generations) -> None:
        async def boom(job_id, files):
            raise RuntimeError("disk on fire")
        gens._complete = boom  # an exception nobody planned for, after the pod finished

    rec = _run_in_process(comfy, tmp_path / "d", job, patch=explode)
    assert rec.status == "failed" and rec.result["reason"] == "internal error (RuntimeError: disk on fire)"
