"""Shared fixtures: generated weights and one real ComfyUI server for the whole run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from support import CHECKPOINT, LORA_FILES

from comfyui_lora_bridge.bridge.localpod.server import LocalComfy
from comfyui_lora_bridge.bridge.localpod.weights import LoraSpec, cached_checkpoint, cached_lora


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
