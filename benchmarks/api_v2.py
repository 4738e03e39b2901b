"""Benchmark: the same comfy-sdk job through the bridge's Comfy API v2 and through comfy-api-proxy, one pod.

    .venv/bin/python benchmarks/api_v2.py [--jobs 10] [--steps 8]

One local CPU ComfyUI with the pack and the tiny checkpoint; the bridge (``lora-bridge serve``, SQLite) and
``comfy-api-proxy`` both in front of it. Interleaved, the official client runs the same graph (distinct
seeds) and follows its SSE events to the end. Per job: wall time from submit to the terminal event, the
pod's own execution time (ComfyUI's history timestamps), the overhead outside ComfyUI (the difference),
and the events received per second of stream. Medians, and the bridge's ratio to the proxy (goal: ≤ 1.0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from comfy_sdk import Comfy, StatusChange
from comfyui_lora_bridge.bridge.graphs.templates import load_template
from comfyui_lora_bridge.testing.server import LocalComfy, free_port
from comfyui_lora_bridge.testing.weights import cached_checkpoint

CHECKPOINT = "sd15-tiny.safetensors"
BIN = Path(sys.executable).parent


def wait_up(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def execution_s(pod_url: str, prompt_id: str) -> float:
    """ComfyUI's own time for the prompt: execution_start to execution_success (history timestamps, ms)."""
    entry = json.load(urllib.request.urlopen(f"{pod_url}/history/{prompt_id}", timeout=30))[prompt_id]
    stamps = {kind: data.get("timestamp") for kind, data in entry["status"]["messages"]}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000


def one_job(client: Comfy, graph: dict) -> tuple[float, str, int, float]:
    """(wall s, job id, events received, seconds the stream was open)."""
    start = time.perf_counter()
    job = client.submit(client.workflows.from_json(graph))
    opened, events = time.perf_counter(), 0
    for event in job.events():
        events += 1
        if isinstance(event, StatusChange) and event.status in ("succeeded", "failed", "canceled"):
            break
    end = time.perf_counter()
    return end - start, job.id, events, end - opened


def main(jobs: int, steps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, LocalComfy() as pod:
        (pod.models_dir("checkpoints") / CHECKPOINT).symlink_to(cached_checkpoint("tiny"))
        bridge_port, proxy_port = free_port(), free_port()
        env = {**os.environ, "LORA_BRIDGE_UPLOAD_DIR": f"{tmp}/uploads"}
        bridge = subprocess.Popen([str(BIN / "lora-bridge"), "serve", "--pod", pod.url, "--db", f"sqlite:///{tmp}/b.db",
                                   "--port", str(bridge_port), "--outputs", f"{tmp}/out"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proxy = subprocess.Popen([str(BIN / "comfy-api-proxy"), "--comfyui", pod.url, "--port", str(proxy_port)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_up(f"http://127.0.0.1:{bridge_port}/api/v2/health")
            wait_up(f"http://127.0.0.1:{proxy_port}/api/v2/health")
            clients, bases = {}, {"proxy": f"http://127.0.0.1:{proxy_port}", "bridge": f"http://127.0.0.1:{bridge_port}"}
            for name, base in bases.items():
                os.environ["COMFY_BASE_URL"] = base
                clients[name] = Comfy(timeout=120)
            template = load_template("sd15_txt2img")
            rows: dict[str, list[tuple[float, float, float]]] = {name: [] for name in clients}
            for i in range(jobs + 1):  # job 0 warms both paths (model load)
                for name, client in clients.items():
                    graph = template.render(checkpoint=CHECKPOINT, width=64, height=64, steps=steps, seed=100 + 2 * i + (name == "bridge"))
                    wall, job_id, events, open_s = one_job(client, graph)
                    prompt = job_id if name == "proxy" else _prompt_of(bases[name], job_id)  # the proxy's job id is the prompt id
                    run = execution_s(pod.url, prompt)
                    if i:
                        rows[name].append((wall, wall - run, events / open_s if open_s else 0.0))
            print(f"comfy-sdk job, SD1.5 tiny 64x64, {steps} steps, one CPU pod; median of {jobs} interleaved jobs each")
            print(f"{'':8}{'wall ms':>10}{'outside ComfyUI ms':>20}{'events/s':>10}")
            med = {name: [statistics.median(col) for col in zip(*r)] for name, r in rows.items()}
            for name, (wall, over, eps) in med.items():
                print(f"{name:8}{wall * 1000:10.0f}{over * 1000:20.0f}{eps:10.1f}")
            b, p = med["bridge"], med["proxy"]
            print(f"ratio bridge/proxy: wall {b[0] / p[0]:.2f}, overhead outside ComfyUI {b[1] / p[1]:.2f}, "
                  f"events per second {b[2] / p[2]:.2f} (higher is more events)")
        finally:
            bridge.kill()
            proxy.kill()


def _prompt_of(base: str, job_id: str) -> str:
    """The bridge job's prompt id on the pod (from /v1: the v2 job object does not carry it)."""
    return str(json.load(urllib.request.urlopen(f"{base}/v1/generations/{job_id}", timeout=30))["prompt_id"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    main(args.jobs, args.steps)
