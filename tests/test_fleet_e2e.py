"""A fleet that changes at run time, with real ComfyUI pods and the bridge service: scale from zero, pods
that announce themselves (the pack's heartbeat thread) or are added by the API or found by DNS, a pod
that goes silent mid-job, and a pod scaled down mid-queue (its pack's preStop drain route): no job is
lost or run twice."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
import urllib.request
from typing import Any

import pytest
from comfyui_lora_bridge.testing.server import LocalComfy
from service_harness import Service
from support import CHECKPOINT, POD_TOKEN, configured_pod

pytestmark = pytest.mark.comfy
REGISTRATION = "registration-token-for-tests"


def _params(steps: int = 3) -> dict[str, Any]:
    return {"checkpoint": CHECKPOINT, "width": 64, "height": 64, "steps": steps, "seed": random.randrange(10**9),
            "prompt": "a lighthouse"}


def _announcing_pod(weights: Any, s3_endpoint: str, bridge: Service) -> LocalComfy:
    """A pod whose pack joins ``bridge``'s fleet by itself, renewing every second."""
    pod = configured_pod(weights, s3_endpoint)
    pod.env.update(LORA_BRIDGE_REGISTER_URL=bridge.url, LORA_BRIDGE_REGISTRATION_TOKEN=REGISTRATION,
                   LORA_BRIDGE_POD_URL=pod.url, LORA_BRIDGE_POD_LABELS="gpu=cpu,sd15", LORA_BRIDGE_HEARTBEAT_S="1")
    return pod


def _pods(service: Service) -> dict[str, dict]:
    status, listing = service.call("GET", "/v1/pods")
    assert status == 200, listing
    return {p["pod"]: p for p in listing["pods"]}


def _until(check: Any, timeout: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _seeds_run(pod_url: str) -> list[int]:
    req = urllib.request.Request(f"{pod_url}/history?max_items=10000", headers={"Authorization": f"Bearer {POD_TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        history = json.load(resp)
    return [node["inputs"]["seed"] for entry in history.values() for node in entry["prompt"][2].values()
            if node.get("class_type") == "KSampler"]


@pytest.fixture(scope="module")
def bridge(tmp_path_factory, s3):
    """A bridge started with no pod at all; pods may announce themselves with the registration token."""
    svc = Service([], tmp_path_factory.mktemp("fleet"), s3.endpoint,
                  env={"LORA_BRIDGE_REGISTRATION_TOKEN": REGISTRATION, "LORA_BRIDGE_QUEUE_TIMEOUT_S": "240"}).start()
    yield svc
    svc.kill()


def test_scale_from_zero_announced_and_api_pods(bridge, comfy, weights, s3) -> None:
    """A job submitted with no pod waits, queued, with its position; it runs when the first pod announces itself.
    An operator adds a pod through the API; a token reference that names nothing, or a wrong registration
    token, is refused."""
    status, job = bridge.call("POST", "/v1/generations", {"template": "sd15_txt2img", "params": _params()})
    assert status == 202
    bridge.wait_for(job["id"], "waiting")
    status, record = bridge.call("GET", f"/v1/generations/{job['id']}")
    assert record["status"] == "queued" and record["queue_position"] == 0, record
    waiting = next(d for _, t, d in bridge.peek(job["id"]) if t == "waiting")
    assert "the bridge has no pods" in waiting["reason"]
    pod = _announcing_pod(weights, s3.endpoint, bridge)
    try:
        pod.start()
        record = bridge.wait_end(job["id"], timeout=120)
        assert record["status"] == "succeeded" and record["pod"] == pod.url, record
        types = [t for _, t, _ in bridge.peek(job["id"])]
        assert types[:4] == ["queued", "waiting", "preparing", "assigned"], types
        listed = _pods(bridge)[pod.url]
        assert listed["origin"] == "announced" and listed["state"] in ("ready", "busy") and listed["heartbeat_s"] == 1
        assert listed["labels"] == ["gpu=cpu", "sd15"] and listed["mode"] == "pack"

        body = {"url": comfy.url, "token_ref": "NO_SUCH_VARIABLE"}
        status, error = bridge.call("POST", "/v1/pods", body)
        assert status == 400 and "NO_SUCH_VARIABLE" in error["error"]["message"]
        status, added = bridge.call("POST", "/v1/pods", {"url": comfy.url, "token_ref": "LORA_BRIDGE_POD_TOKEN",
                                                         "labels": ["spare"]})
        assert status == 201 and added["origin"] == "api" and added["state"] == "ready", added
        assert POD_TOKEN not in json.dumps(_pods(bridge))  # the token is referred to, never shown or stored
        for token in ("wrong", None):
            status, _ = bridge.call("POST", "/v1/pods/announce", {"url": "http://127.0.0.1:1"}, key=token)
            assert status == 401
        status, _ = bridge.call("POST", f"/v1/pods/{added['id']}/heartbeat", key=REGISTRATION)
        assert status == 200  # the registration token opens the routes pods call, and only those
        assert bridge.call("GET", "/v1/loras", key=REGISTRATION)[0] == 401

        # a job on the announced pod; it stops answering and beating: lost, and the job fails over
        status, _ = bridge.call("DELETE", f"/v1/pods/{added['id']}")  # the spare drains and is removed once idle
        assert status == 202
        _until(lambda: comfy.url not in _pods(bridge), what="the idle spare to be removed")
        status, job = bridge.call("POST", "/v1/generations", {"template": "sd15_txt2img", "params": _params(steps=40)})
        bridge.wait_for(job["id"], "progress", timeout=60)
        assert pod.process is not None
        pod.process.send_signal(signal.SIGSTOP)
        bridge.wait_for(job["id"], "failover", timeout=30)
        assert _pods(bridge)[pod.url]["state"] == "lost"
        bridge.call("POST", "/v1/pods", {"url": comfy.url})  # a pod joins: the job, waiting again, runs there
        record = bridge.wait_end(job["id"], timeout=120)
        events = bridge.peek(job["id"])
        failover = next(d for _, t, d in events if t == "failover")
        assert record["status"] == "succeeded" and record["pod"] == comfy.url, record
        assert "missed its heartbeats" in failover["reason"], failover
    finally:
        if pod.process is not None:
            pod.process.send_signal(signal.SIGKILL)
            pod.process.send_signal(signal.SIGCONT)
        pod.cleanup()


def test_a_pod_scaled_down_mid_queue_loses_no_job_and_runs_none_twice(bridge, comfy, weights, s3) -> None:
    """Three jobs queue on one pod; another joins; the first pod's preStop hook drains it: the jobs that had not
    started there move, the running one finishes there, the hook returns once the pod is idle, the pod leaves."""
    for record in _pods(bridge).values():
        bridge.call("DELETE", f"/v1/pods/{record['id']}")  # only the new pod takes the next jobs
    _until(lambda: not _pods(bridge), what="the fleet to empty")
    pod = _announcing_pod(weights, s3.endpoint, bridge)
    try:
        pod.start()
        _until(lambda: pod.url in _pods(bridge), what="the pod to announce itself")
        params = [_params(steps=30) for _ in range(3)]
        jobs = [bridge.call("POST", "/v1/generations", {"template": "sd15_txt2img", "params": p})[1]["id"] for p in params]
        for job_id in jobs:
            bridge.wait_for(job_id, "submitted", timeout=60)
        status, _ = bridge.call("POST", "/v1/pods", {"url": comfy.url})
        assert status == 201
        drained: dict[str, Any] = {}

        def pre_stop() -> None:
            req = urllib.request.Request(f"{pod.url}/lora_bridge/drain?wait_s=120", method="POST",
                                         headers={"Authorization": f"Bearer {POD_TOKEN}"})
            with urllib.request.urlopen(req, timeout=180) as resp:
                drained.update(json.load(resp))

        hook = threading.Thread(target=pre_stop)
        hook.start()
        records = [bridge.wait_end(job_id, timeout=180) for job_id in jobs]
        hook.join(timeout=180)
        assert drained == {"draining": True, "remaining": 0, "idle": True}, drained
        assert [r["status"] for r in records] == ["succeeded"] * 3, records
        moved = [r for r, job_id in zip(records, jobs) if any(t == "moved" for _, t, _ in bridge.peek(job_id))]
        assert moved and all(r["pod"] == comfy.url for r in moved), records
        assert any(r["pod"] == pod.url for r in records), (pod.url, comfy.url, [[(t, d.get("pod")) for _, t, d in bridge.peek(j) if t in ("assigned", "moved", "failover")] for j in jobs])
        seeds = {p["seed"] for p in params}
        ran = [seed for seed in _seeds_run(pod.url) + _seeds_run(comfy.url) if seed in seeds]
        assert sorted(ran) == sorted(seeds)  # each job ran exactly once, on one pod or the other
        _until(lambda: pod.url not in _pods(bridge), what="the drained pod to leave the fleet")
        req = urllib.request.Request(f"{pod.url}/lora_bridge/drain", method="DELETE", headers={"Authorization": f"Bearer {POD_TOKEN}"})
        assert json.load(urllib.request.urlopen(req, timeout=30))["draining"] is False  # the scale-down called off
        assert _until(lambda: _pods(bridge).get(pod.url), what="the pod to join again")["state"] in ("ready", "busy")
    finally:
        pod.cleanup()


@pytest.mark.bridge_logic  # name resolution is the bridge's own: first leg only
def test_pods_found_by_dns(comfy, tmp_path) -> None:
    """``--pods-dns localhost:PORT``: every address of the name is a pod; the one that answers runs the job."""
    svc = Service([], tmp_path, env={"LORA_BRIDGE_QUEUE_TIMEOUT_S": "60"})
    svc.args += ["--pods-dns", f"localhost:{comfy.port}"]
    try:
        svc.start()
        status, job = svc.call("POST", "/v1/generations", {"template": "sd15_txt2img", "params": _params()})
        record = svc.wait_end(job["id"], timeout=120)
        assert record["status"] == "succeeded" and record["pod"] == comfy.url, record
        listed = _pods(svc)[comfy.url]
        assert listed["origin"] == "dns" and listed["discovered_by"] == f"localhost:{comfy.port}"
    finally:
        svc.kill()
