"""Shared fixtures: generated weights and one real ComfyUI server for the whole run."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from comfyui_lora_bridge.bridge.localpod.server import LocalComfy
from comfyui_lora_bridge.bridge.localpod.weights import LoraSpec, cached_checkpoint, cached_lora
from comfyui_lora_bridge.bridge.pod_client import JobResult, PodClient
from comfyui_lora_bridge.bridge.templates import load_template

CHECKPOINT = "sd15-tiny.safetensors"
LORA_FILES = {layout: f"test_{layout}.safetensors" for layout in ("kohya", "peft", "loha")}
LORA_FILES["kohya_b"] = "test_kohya_b.safetensors"


@dataclass(frozen=True)
class Weights:
    checkpoint: Path
    loras: dict[str, Path]


@pytest.fixture(scope="session")
def weights() -> Weights:
    specs = {layout: LoraSpec(layout=layout) for layout in ("kohya", "peft", "loha")}
    specs["kohya_b"] = LoraSpec(layout="kohya", seed=7, trigger="zwx", output_name="second_lora")
    return Weights(cached_checkpoint("tiny"), {k: cached_lora(s) for k, s in specs.items()})


@pytest.fixture(scope="session")
def comfy(weights: Weights):
    """One ComfyUI (CPU, loopback) with the node pack, the tiny checkpoint and the test LoRAs."""
    pod = LocalComfy()
    (pod.models_dir("checkpoints") / CHECKPOINT).symlink_to(weights.checkpoint)
    for key, path in weights.loras.items():
        (pod.models_dir("loras") / LORA_FILES[key]).symlink_to(path)
    try:
        pod.start()
        yield pod
    finally:
        pod.cleanup()


def txt2img(**params: Any) -> dict[str, Any]:
    """The shipped SD1.5 template at test size: 64x64, 3 steps, fixed seed."""
    values = dict(checkpoint=CHECKPOINT, prompt="ohwx, a portrait", seed=1234, steps=3, cfg=5.0, width=64, height=64)
    values.update(params)
    return load_template("sd15_txt2img").render(**values)


def run_graph(pod: LocalComfy, graph: dict[str, Any]) -> JobResult:
    async def go() -> JobResult:
        async with PodClient(pod.url, timeout=300) as client:
            return await client.run(graph)

    return asyncio.run(go())


def image_of(result: JobResult) -> np.ndarray:
    """The job's single output image as an int16 array (safe to subtract)."""
    assert len(result.files) == 1, result.files
    return np.asarray(Image.open(io.BytesIO(result.files[0].data)).convert("RGB"), dtype=np.int16)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())
