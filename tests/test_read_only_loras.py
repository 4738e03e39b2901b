"""Loaded LoRA tensors are read-only: applying, patching and sampling never change them.

Current ComfyUI hands out memory-mapped, read-only tensors from ``load_torch_file`` (dynamic
VRAM on NVIDIA), and our memory cache serves the same tensors to every later job, so one in-place
edit would corrupt every job after it (or crash the pod). Runs ComfyUI's own modules in a
process of its own, on whichever ComfyUI this environment tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.comfy

SCRIPT = r"""
import json, sys, tempfile
from pathlib import Path
from comfyui_lora_bridge.testing.inprocess import import_comfyui

checkpoint, lora = sys.argv[1], Path(sys.argv[2])
with tempfile.TemporaryDirectory() as loras:
    (Path(loras) / lora.name).symlink_to(lora)
    import_comfyui(Path(loras))
    import comfy.model_management as mm
    import comfy.sd
    import nodes
    import torch
    from comfyui_lora_bridge.bridge.lorafiles.inspect import inspect_file
    from comfyui_lora_bridge.nodes.lora_handle import LoraHandle
    from comfyui_lora_bridge.nodes.lora_loading import apply_lora, load_into_memory

    model, clip = comfy.sd.load_checkpoint_guess_config(checkpoint, output_vae=True, output_clip=True)[:2]
    info = inspect_file(lora)
    handle = LoraHandle(Path(loras) / lora.name, lora.name, info.sha256, {**info.to_dict(), "metadata": {}})
    entry, _ = load_into_memory(handle)
    before = {k: t.clone() for k, t in entry.state_dict.items()}
    runs = 0
    for mode in ("merge", "hotswap", "merge"):
        for strength in (1.0, -0.7):
            m, c, report = apply_lora(model, clip, handle, strength, strength, mode=mode)
            mm.load_models_gpu([m, c.patcher])
            pos = nodes.CLIPTextEncode().encode(c, "ohwx, a portrait")[0]
            neg = nodes.CLIPTextEncode().encode(c, "blurry")[0]
            latent = nodes.EmptyLatentImage().generate(64, 64, 1)[0]
            nodes.common_ksampler(m, runs, 1, 5.0, "euler", "normal", pos, neg, latent)
            runs += 1
    again, hit = load_into_memory(handle)
    changed = sorted(k for k, t in before.items() if not torch.equal(t, again.state_dict[k]))
    print(json.dumps({"runs": runs, "hit": hit, "same_entry": again is entry, "tensors": len(before),
                      "matched": report.matched, "changed": changed}))
"""


def test_applying_and_sampling_leave_cached_lora_tensors_unchanged(weights, tmp_path) -> None:
    env = {**os.environ, "LORA_BRIDGE_STORE": str(tmp_path / "store")}
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(weights.checkpoint), str(weights.loras["kohya"])],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["runs"] == 6 and out["hit"] and out["same_entry"]  # every job used the one cached copy
    assert out["tensors"] > 10 and out["matched"] > 10  # and it really acted on the model
    assert out["changed"] == []
