"""Helpers shared by the tests: the test graph, running it on a pod, comparing images."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import numpy as np
from comfyui_lora_bridge.bridge.graphs.lora_insertion import LoraRequest, insert_loras
from comfyui_lora_bridge.bridge.graphs.templates import load_template
from comfyui_lora_bridge.bridge.pods.client import JobResult, PodClient
from comfyui_lora_bridge.testing.server import LocalComfy
from foreign_loras import write_foreign_lora
from PIL import Image

CHECKPOINT = "sd15-tiny.safetensors"
LORA_FILES = {layout: f"test_{layout}.safetensors" for layout in ("kohya", "peft", "loha")}
LORA_FILES["kohya_b"] = "test_kohya_b.safetensors"
LORA_FILES["sdxl"] = "test_sdxl.safetensors"
POD_TOKEN = "pod-token-for-tests"
S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


def configured_pod(weights: Any, s3_endpoint: str) -> LocalComfy:
    """A (not yet started) ComfyUI set up as a pod: the local S3 server, loopback URLs allowed,
    a route token, the tiny checkpoint and the test LoRAs; it sends sampling previews, as pods
    that users watch do. ComfyUI's API nodes (Comfy's paid cloud models) are left out: a start takes
    ~2 s less, and nothing here calls them (the official-templates pod keeps them: it validates them)."""
    env = {**S3_ENV, "LORA_BRIDGE_S3_ENDPOINT": s3_endpoint, "LORA_BRIDGE_ALLOWED_HOSTS": "127.0.0.1",
           "LORA_BRIDGE_TOKEN": POD_TOKEN}
    pod = LocalComfy(env=env, extra_args=("--preview-method", "latent2rgb", "--disable-api-nodes"))
    test_nodes_link(pod)
    (pod.models_dir("checkpoints") / CHECKPOINT).symlink_to(weights.checkpoint)
    for key, path in weights.loras.items():
        (pod.models_dir("loras") / LORA_FILES[key]).symlink_to(path)
    return pod


def pack_pod(weights: Any, s3: Any, *extra_args: str) -> LocalComfy:
    """A ComfyUI (CPU, loopback) with the node pack, configured as a pod (see ``configured_pod``), with an SDXL
    LoRA among the SD1.5 ones and quick fetch retries; not started."""
    pod = configured_pod(weights, s3.endpoint)
    pod.extra_args += extra_args
    pod.env["LORA_BRIDGE_FETCH_RETRY_DELAYS"] = "1.5,1.5,1.5"  # three retries as by default, without 14 s of waiting
    write_foreign_lora(pod.models_dir("loras") / LORA_FILES["sdxl"], "sdxl")
    return pod


def test_nodes_link(pod: LocalComfy) -> None:
    """Make the test-only nodes (``tests/comfy_test_nodes``) part of ``pod`` (before it starts)."""
    (pod.base_dir / "custom_nodes" / "lora_bridge_test_nodes").symlink_to(Path(__file__).parent / "comfy_test_nodes")


def txt2img(**params: Any) -> dict[str, Any]:
    """The shipped SD1.5 template at test size: 64x64, 3 steps, fixed seed."""
    values = dict(checkpoint=CHECKPOINT, prompt="ohwx, a portrait", seed=1234, steps=3, cfg=5.0, width=64, height=64)
    values.update(params)
    return load_template("sd15_txt2img").render(**values)


def stock(graph: dict[str, Any], loras: list[LoraRequest]) -> dict[str, Any]:
    """``graph`` with ComfyUI's own LoraLoader nodes inserted for ``loras`` (stock mode)."""
    return insert_loras(graph, loras)[0]


def run_graph(pod: LocalComfy, graph: dict[str, Any]) -> JobResult:
    async def go() -> JobResult:
        async with PodClient(pod.url, token=POD_TOKEN, timeout=300) as client:
            return await client.run(graph)

    return asyncio.run(go())


def pod_object_info(pod: LocalComfy) -> dict[str, Any]:
    """The pod's ``/object_info`` (what the bridge builds and validates graphs against)."""
    async def go() -> dict[str, Any]:
        async with PodClient(pod.url, token=POD_TOKEN) as client:
            return await client.object_info()

    return asyncio.run(go())


def node_output(result: JobResult, node_id: str, key: str) -> Any:
    """What node ``node_id`` showed under ``key`` in this run (its ``executed`` output)."""
    for event in result.events:
        if event.type == "output" and event.data.get("node") == node_id:
            return event.data["output"][key]
    raise AssertionError(f"node {node_id} did not execute")


def node_text(result: JobResult, node_id: str) -> list[str]:
    """The summary lines a LoRA Bridge node showed for this run."""
    return node_output(result, node_id, "lora_bridge")


def image_of(result: JobResult) -> np.ndarray:
    """The job's single output image as an int16 array (safe to subtract)."""
    assert len(result.files) == 1, result.files
    return np.asarray(Image.open(io.BytesIO(result.files[0].data)).convert("RGB"), dtype=np.int16)


def assert_steps(values: list[float], last: int) -> None:
    """Sampling steps as a pod reports them: only increasing, ending at ``last`` (ComfyUI may skip some)."""
    assert values and values[-1] == last and all(a < b for a, b in zip(values, values[1:])), values


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def frames_of(data: bytes) -> np.ndarray:
    """A video file's decoded frames, (frames, height, width, 3) as int16 (differences stay signed)."""
    import av

    with av.open(io.BytesIO(data)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]).astype(np.int16)
