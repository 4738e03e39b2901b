"""Benchmark: what the bridge adds per job, and many concurrent jobs with no event lost.

    .venv/bin/python benchmarks/bridge_overhead.py [--jobs 10] [--concurrent 16]

One local CPU pod with the tiny checkpoint. (1) The same 1-step 64x64 graph run directly with
the pod client and through the pod pool (health check, routing, graph built from the template
for the chosen pod): median wall time per job, and the pool's added latency. (2) Many jobs at
once through the pool: every job must report exactly one success and all its steps.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from comfyui_lora_bridge.bridge.graphs.templates import load_template
from comfyui_lora_bridge.bridge.pods.client import PodClient
from comfyui_lora_bridge.bridge.pods.generation import run_generation
from comfyui_lora_bridge.bridge.pods.pool import PodConfig, PodPool
from comfyui_lora_bridge.testing.server import LocalComfy
from comfyui_lora_bridge.testing.weights import cached_checkpoint

PARAMS = {"checkpoint": "sd15-tiny.safetensors", "width": 64, "height": 64, "steps": 2}


async def direct(url: str, seed: int) -> float:
    start = time.perf_counter()
    async with PodClient(url) as client:
        await client.run(load_template("sd15_txt2img").render(**PARAMS, seed=seed))
    return time.perf_counter() - start


async def pooled(pool: PodPool, seed: int, events: list | None = None) -> float:
    start = time.perf_counter()
    await run_generation(pool, [], template="sd15_txt2img", params={**PARAMS, "seed": seed},
                         on_event=None if events is None else events.append)
    return time.perf_counter() - start


async def main(jobs: int, concurrent: int) -> None:
    with LocalComfy() as pod:
        (pod.models_dir("checkpoints") / PARAMS["checkpoint"]).symlink_to(cached_checkpoint("tiny"))
        pool = PodPool([PodConfig(pod.url)])
        await direct(pod.url, 0)  # warm: model loaded, caches filled
        await pooled(pool, 0)
        d, p = [], []
        for i in range(jobs):  # distinct seeds: every job samples for real
            d.append(await direct(pod.url, 1000 + i))
            p.append(await pooled(pool, 2000 + i))
        md, mp = statistics.median(d), statistics.median(p)
        print(f"per job (median of {jobs}): direct {md * 1000:.0f} ms, through the pool {mp * 1000:.0f} ms, "
              f"added {(mp - md) * 1000:+.0f} ms ({(mp / md - 1) * 100:+.1f} %)")
        logs: list[list] = [[] for _ in range(concurrent)]
        start = time.perf_counter()
        await asyncio.gather(*(pooled(pool, 3000 + i, logs[i]) for i in range(concurrent)))
        elapsed = time.perf_counter() - start
        complete = sum(1 for log in logs if [e.type for e in log].count("success") == 1
                       and [e.data["value"] for e in log if e.type == "progress"] == list(range(1, PARAMS["steps"] + 1)))
        print(f"{concurrent} concurrent jobs in {elapsed:.1f} s: {complete}/{concurrent} reported every step and exactly one success")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--concurrent", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.concurrent))
