"""Benchmark: LoRA training steps per second through the bridge vs the same graph run directly on the pod.

    .venv/bin/python benchmarks/train.py [--steps 40] [--images 4] [--resolution 64] [--device cpu|cuda]
                                         [--checkpoint tiny|full] [--comfy-arg ARG ...]

One local pod (ComfyUI on the CPU, or on the GPU with ``--device cuda``) with the tiny (or full) SD1.5 checkpoint. Direct: the dataset sent to the pod's input
folder, the training graph (``workflows/train_sd15_lora.json.j2``, fitted to the pod) posted with
the pod client. Bridge: the service's training runner (``Trainings``, in process, SQLite in
memory): dataset checked and sent, the same graph, the LoRA fetched, verified, stored and
validated by a sample generation. Steps per second are counted from the training node's first
to its last step event (model loading left out of both); the bridge's overhead is the job's
wall time up to the stored LoRA minus the direct run's (the validation generation is shown apart).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from comfyui_lora_bridge.bridge.jobs.database import AsyncDatabase, Database
from comfyui_lora_bridge.bridge.jobs.requests import TrainingCreate
from comfyui_lora_bridge.bridge.jobs.runner import Generations
from comfyui_lora_bridge.bridge.jobs.trainings import Trainings
from comfyui_lora_bridge.bridge.jobs.uploads import LoraUploads
from comfyui_lora_bridge.bridge.lorafiles.sources import FetchPolicy
from comfyui_lora_bridge.bridge.pods.client import PodClient, PodEvent
from comfyui_lora_bridge.bridge.pods.pool import PodConfig, PodPool
from comfyui_lora_bridge.bridge.settings import settings
from comfyui_lora_bridge.bridge.training.dataset import read_zip
from comfyui_lora_bridge.bridge.training.graph import training_graph
from comfyui_lora_bridge.testing.server import LocalComfy
from comfyui_lora_bridge.testing.weights import CheckpointSize, cached_checkpoint
from PIL import Image


def dataset_zip(images: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(images):
            pixels = (np.random.default_rng(i).random((96, 96, 3)) * 255).astype(np.uint8)
            png = io.BytesIO()
            Image.fromarray(pixels).save(png, format="PNG")
            zf.writestr(f"{i}.png", png.getvalue())
            zf.writestr(f"{i}.txt", f"ohwx, sample {i}")
    return buf.getvalue()


class StepClock:
    """Times the training node's steps from its events."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, event: PodEvent) -> None:
        if event.type == "progress" and event.data.get("node") == "6":
            self.times.append(time.perf_counter())

    def rate(self) -> float:
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


async def direct(pod: LocalComfy, pool: PodPool, data: bytes, params: dict) -> tuple[float, float]:
    job = f"bench-direct-{time.monotonic_ns()}"
    async with PodClient(pod.url, timeout=3600) as client:
        await client.put_dataset(job, data)
        (status,) = await pool.refresh(force=True)
        await pool.refresh_facts(status)
        graph = training_graph("train_sd15_lora", {**params, "dataset": f"lora_bridge_datasets/{job}", "output": job},
                               status.object_info)
        clock = StepClock()
        start = time.perf_counter()
        await client.run(graph, clock)
        wall = time.perf_counter() - start
        await client.delete_dataset(job)
    return clock.rate(), wall


async def bridged(trainings: Trainings, zip_bytes: bytes, request: TrainingCreate) -> tuple[float, float, float]:
    job_id, _ = await trainings.start(request, trainings.check(request), trainings.dataset_from_zip(request, zip_bytes))
    job = await trainings.jobs.hub.wait_ended(job_id)
    if job.status != "succeeded":
        raise SystemExit(f"the training failed: {job.result.get('reason')}")
    with trainings.db.sync.tx() as db:  # event timestamps, as the service stored them
        rows = db.execute("SELECT type, data, at FROM events WHERE job_id = ? ORDER BY seq", (job_id,)).fetchall()
    steps = [at for type, data, at in rows if type == "progress" and '"node": "6"' in data]
    at = {type: at for type, _, at in rows}
    return (len(steps) - 1) / (steps[-1] - steps[0]), at["validating"] - at["queued"], at["validated"] - at["validating"]


async def main(steps: int, images: int, resolution: int, device: str, checkpoint: CheckpointSize, comfy_args: list[str]) -> None:
    zip_bytes = dataset_zip(images)
    data = read_zip(zip_bytes, "ohwx").to_zip()
    name = f"sd15-{checkpoint}.safetensors"
    params = {"checkpoint": name, "trigger_word": "ohwx", "resolution": resolution, "steps": steps, "rank": 8,
              "learning_rate": 1e-3, "training_dtype": "fp32"}
    request = TrainingCreate(name="bench", trigger_word="ohwx", checkpoint=name, steps=steps, rank=8, learning_rate=1e-3,
                             resolution=resolution, training_dtype="fp32", validation_params={"steps": 2, "width": 64, "height": 64})
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp, "store")
        with LocalComfy(env={"LORA_BRIDGE_LOCAL_ROOTS": str(store)}, device=device, extra_args=comfy_args) as pod:
            (pod.models_dir("checkpoints") / name).symlink_to(cached_checkpoint(checkpoint))
            pool = PodPool([PodConfig(pod.url)])
            configured = settings()
            jobs = Generations(AsyncDatabase(Database(":memory:")), pool, Path(tmp, "outputs"), configured, FetchPolicy.from_settings(configured))
            trainings = Trainings(jobs, LoraUploads(store))
            await direct(pod, pool, data, params)  # warm-up: the checkpoint loaded once for both
            d_rate, d_wall = await direct(pod, pool, data, params)
            b_rate, b_wall, validation = await bridged(trainings, zip_bytes, request)
            d2_rate, d2_wall = await direct(pod, pool, data, params)
    d_rate, d_wall = (d_rate + d2_rate) / 2, (d_wall + d2_wall) / 2
    print(f"device {device}, {checkpoint} SD1.5 checkpoint, {images} images at {resolution} px, {steps} steps, rank 8, fp32")
    print(f"steps per second : direct {d_rate:6.2f}   bridge {b_rate:6.2f}   bridge/direct {b_rate / d_rate:.3f}x")
    print(f"job wall time    : direct {d_wall:6.2f} s bridge {b_wall:6.2f} s (to the stored LoRA)   overhead "
          f"{b_wall - d_wall:+.2f} s ({(b_wall / d_wall - 1) * 100:+.1f} %)")
    print(f"validation       : {validation:.2f} s (the sample generation with the new LoRA)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--checkpoint", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--comfy-arg", action="append", default=[], help="an option for ComfyUI's main.py (repeatable)")
    args = parser.parse_args()
    asyncio.run(main(args.steps, args.images, args.resolution, args.device, args.checkpoint, args.comfy_arg))
