"""Benchmark: what the bridge adds per job, where that time goes, and many concurrent jobs with no event lost.

    .venv/bin/python benchmarks/bridge_overhead.py [--jobs 10] [--concurrent 16]

One local CPU pod with the tiny checkpoint. (1) The same 1-step 64x64 graph run directly with
the pod client and through the pod pool (health check, routing, graph built from the template
for the chosen pod): median wall time per job, and the pool's added latency. (2) The whole service
(in this process, SQLite): ``POST /v1/generations?wait=true`` per job, against the same graph
submitted directly; per warm job, the time outside ComfyUI (wall minus ComfyUI's own execution,
from its history) broken down by where it went: database calls (count and time, in their worker
threads), planning (inclusive of its registry reads), graph build, pod facts and health, outputs kept,
and the rest (HTTP, the event loop, thread hand-offs, the pod's WebSocket). (3) Many jobs at once
through the pool: every job must report exactly one success and all its steps.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import json
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from comfyui_lora_bridge.bridge.graphs.templates import load_template
from comfyui_lora_bridge.bridge.pods.client import PodClient
from comfyui_lora_bridge.bridge.pods.generation import run_generation
from comfyui_lora_bridge.bridge.pods.pool import PodConfig, PodPool
from comfyui_lora_bridge.testing.server import LocalComfy, free_port
from comfyui_lora_bridge.testing.weights import cached_checkpoint

PARAMS = {"checkpoint": "sd15-tiny.safetensors", "width": 64, "height": 64, "steps": 2}


async def direct(url: str, seed: int) -> tuple[float, str]:
    """One job submitted straight to ComfyUI with the pod client: wall seconds, prompt id."""
    start = time.perf_counter()
    async with PodClient(url) as client:
        result = await client.run(load_template("sd15_txt2img").render(**PARAMS, seed=seed))
    return time.perf_counter() - start, result.prompt_id


async def pooled(pool: PodPool, seed: int, events: list | None = None) -> float:
    start = time.perf_counter()
    await run_generation(pool, [], template="sd15_txt2img", params={**PARAMS, "seed": seed},
                         on_event=None if events is None else events.append)
    return time.perf_counter() - start


class Spans:
    """What ran when, by label, while the current job runs (the jobs run one at a time)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, float, float]] = []  # (label, start, end), wall-clock seconds

    def add(self, label: str, start: float, end: float) -> None:
        self.spans.append((label, start, end))

    def outside(self, window: tuple[float, float]) -> tuple[dict[str, float], dict[str, int]]:
        """Per label: seconds outside ComfyUI's execution ``window`` (what the job waits for), and calls."""
        seconds: dict[str, float] = {}
        calls: dict[str, int] = {}
        for label, start, end in self.spans:
            overlap = max(0.0, min(end, window[1]) - max(start, window[0]))
            seconds[label] = seconds.get(label, 0.0) + (end - start) - overlap
            calls[label] = calls.get(label, 0) + 1
        return seconds, calls

    def wrap(self, owner: object, name: str, label: str) -> None:
        """Time ``owner.name`` (a function or method, sync or async) under ``label``."""
        fn = getattr(owner, name)
        spans = self

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def timed_async(*args, **kwargs):
                start = time.time()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    spans.add(label, start, time.time())
            setattr(owner, name, timed_async)
        else:
            @functools.wraps(fn)
            def timed_sync(*args, **kwargs):
                start = time.time()
                try:
                    return fn(*args, **kwargs)
                finally:
                    spans.add(label, start, time.time())
            setattr(owner, name, timed_sync)


def instrument(spans: Spans) -> None:
    """Wrap the job path's parts (before the service is created, so it uses the wrapped ones)."""
    from comfyui_lora_bridge.bridge.jobs.database import AsyncDatabase
    from comfyui_lora_bridge.bridge.jobs.outputs import OutputStore
    from comfyui_lora_bridge.bridge.jobs.planner import Planner
    from comfyui_lora_bridge.bridge.pods import generation

    for name, member in vars(AsyncDatabase).items():  # awaited: the query and the hand-off to its thread
        if inspect.iscoroutinefunction(member) and name != "run":
            spans.wrap(AsyncDatabase, name, "database")
    spans.wrap(Planner, "plan", "planning")
    spans.wrap(generation, "build_graph", "graph build")
    spans.wrap(PodPool, "_check", "pod facts and health")
    spans.wrap(PodPool, "refresh_facts", "pod facts and health")
    spans.wrap(OutputStore, "save", "outputs kept")


def execution_window(pod_url: str, prompt_id: str) -> tuple[float, float]:
    """When ComfyUI ran the prompt: execution_start and execution_success (history timestamps, ms)."""
    entry = json.load(urllib.request.urlopen(f"{pod_url}/history/{prompt_id}", timeout=30))[prompt_id]
    stamps = {kind: data.get("timestamp") for kind, data in entry["status"]["messages"]}
    return stamps["execution_start"] / 1000, stamps["execution_success"] / 1000


async def service_breakdown(pod_url: str, jobs: int, folder: Path) -> None:
    from aiohttp import ClientSession, web
    from comfyui_lora_bridge.bridge.http.app import create_app
    from comfyui_lora_bridge.bridge.jobs.database import Database
    from comfyui_lora_bridge.bridge.jobs.uploads import LoraUploads
    from comfyui_lora_bridge.bridge.lorafiles.sources import FetchPolicy
    from comfyui_lora_bridge.bridge.settings import Settings

    spans = Spans()
    instrument(spans)
    configured = Settings.from_env({"LORA_BRIDGE_CACHE": str(folder / "cache")})
    policy = FetchPolicy.from_settings(configured)
    app = create_app(Database(f"sqlite:///{folder / 'bridge.sqlite3'}", "bench", configured.lease_s),
                     PodPool([PodConfig(pod_url)]), folder / "outputs", configured, policy,
                     LoraUploads(folder / "uploads", None, limits=policy.limits))
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    request = {"template": "sd15_txt2img", "params": {**PARAMS, "prompt": "a portrait"}}
    try:
        async with ClientSession(f"http://127.0.0.1:{port}") as http:
            async def one(seed: int) -> tuple[float, tuple[float, float]]:
                start = time.perf_counter()
                async with http.post("/v1/generations?wait=true",
                                     json={**request, "params": {**request["params"], "seed": seed}}) as resp:
                    record = await resp.json()
                wall = time.perf_counter() - start
                assert record["status"] == "succeeded", record
                return wall, await asyncio.to_thread(execution_window, pod_url, record["prompt_id"])

            await one(0)  # warm: registry, pod facts, model loaded
            rows, direct_walls, direct_outside = [], [], []
            for i in range(jobs):
                wall, prompt_id = await direct(pod_url, 5000 + i)
                window = await asyncio.to_thread(execution_window, pod_url, prompt_id)
                direct_walls.append(wall)
                direct_outside.append(wall - (window[1] - window[0]))
                spans.spans.clear()
                wall, window = await one(6000 + i)
                rows.append((wall, window[1] - window[0], *spans.outside(window)))
    finally:
        await runner.cleanup()
    outside = [wall - comfy for wall, comfy, _, _ in rows]
    print(f"service, SQLite (median of {jobs} warm jobs): wall {statistics.median(r[0] for r in rows) * 1000:.0f} ms, "
          f"direct submission {statistics.median(direct_walls) * 1000:.0f} ms; outside ComfyUI "
          f"{statistics.median(outside) * 1000:.1f} ms p50, direct submission "
          f"{statistics.median(direct_outside) * 1000:.1f} ms (its WebSocket, POST /prompt, /history, /view)")
    labels = sorted({label for _, _, seconds, _ in rows for label in seconds})
    for label in labels:
        ms = statistics.median(r[2].get(label, 0.0) for r in rows) * 1000
        calls = statistics.median(r[3].get(label, 0) for r in rows)
        print(f"  {label:22s} {ms:6.1f} ms outside ComfyUI  ({calls:g} calls in all)")
    timed = statistics.median(sum(r[2].get(label, 0.0) for label in labels if label != "planning") for r in rows)
    print(f"  {'rest (HTTP, loop, WS)':22s} {(statistics.median(outside) - timed) * 1000:6.1f} ms  "
          "(outside ComfyUI minus the parts above; planning's registry reads are in database)")


async def main(jobs: int, concurrent: int) -> None:
    with LocalComfy() as pod:
        (pod.models_dir("checkpoints") / PARAMS["checkpoint"]).symlink_to(cached_checkpoint("tiny"))
        pool = PodPool([PodConfig(pod.url)])
        await direct(pod.url, 0)  # warm: model loaded, caches filled
        await pooled(pool, 0)
        d, p = [], []
        for i in range(jobs):  # distinct seeds: every job samples for real
            d.append((await direct(pod.url, 1000 + i))[0])
            p.append(await pooled(pool, 2000 + i))
        md, mp = statistics.median(d), statistics.median(p)
        print(f"per job (median of {jobs}): direct {md * 1000:.0f} ms, through the pool {mp * 1000:.0f} ms, "
              f"added {(mp - md) * 1000:+.0f} ms ({(mp / md - 1) * 100:+.1f} %)")
        with tempfile.TemporaryDirectory() as folder:
            await service_breakdown(pod.url, jobs, Path(folder))
        logs: list[list] = [[] for _ in range(concurrent)]
        start = time.perf_counter()
        await asyncio.gather(*(pooled(pool, 3000 + i, logs[i]) for i in range(concurrent)))
        elapsed = time.perf_counter() - start
        complete = sum(1 for log in logs if [e.type for e in log].count("success") == 1
                       and [e.data["value"] for e in log if e.type == "progress" and e.data.get("max") == PARAMS["steps"]]
                       == list(range(1, PARAMS["steps"] + 1)))  # the sampler's steps (other nodes report 1 of 1)
        print(f"{concurrent} concurrent jobs in {elapsed:.1f} s: {complete}/{concurrent} reported every step and exactly one success")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--concurrent", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.concurrent))
