"""The generated auxiliary models are the real architectures: ComfyUI's own loaders build their
models from the files and every tensor lands (no missing key, no leftover key).

Runs ComfyUI's modules in a process of its own, on whichever ComfyUI this environment tests.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from comfyui_lora_bridge.testing.weights import cached_aux_model

pytestmark = pytest.mark.comfy

SCRIPT = r"""
import json, os, sys, tempfile
from pathlib import Path
from safetensors import safe_open
from comfyui_lora_bridge.testing.inprocess import import_comfyui

wan_vae, flux_vae, clip_vision_h = sys.argv[1:4]  # (import_comfyui sets ComfyUI's own arguments)
with tempfile.TemporaryDirectory() as loras:
    import_comfyui(Path(loras))
    import comfy.clip_vision
    import comfy.sd
    import comfy.utils

    out = {}
    for name in ("wan21_vae", "flux_vae"):
        sd = comfy.utils.load_torch_file(wan_vae if name == "wan21_vae" else flux_vae)
        vae = comfy.sd.VAE(sd=dict(sd))
        missing, leftover = vae.first_stage_model.load_state_dict(sd, strict=False)  # shapes are checked by torch
        out[name] = {"model": type(vae.first_stage_model).__name__, "latent_channels": vae.latent_channels,
                     "missing": sorted(missing), "leftover": sorted(leftover)}
    # CLIP ViT-H (632 M parameters): names and shapes from the file's header, against the model
    # ComfyUI's loader builds for a file with these keys (its detection is by key: 32 layers -> H)
    with safe_open(clip_vision_h, "np") as f:
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    layers = sum(1 for k in shapes if k.startswith("vision_model.encoder.layers.") and k.endswith(".layer_norm1.weight"))
    config = os.path.join(os.path.dirname(os.path.realpath(comfy.clip_vision.__file__)), "clip_vision_config_h.json")
    model = {k: list(v.shape) for k, v in comfy.clip_vision.ClipVisionModel(config).model.state_dict().items()}
    out["clip_vision_h"] = {"layers": layers, "missing": sorted(set(model) - set(shapes)), "leftover": sorted(set(shapes) - set(model)),
                            "wrong_shape": sorted(k for k in set(model) & set(shapes) if model[k] != shapes[k])}
    print(json.dumps(out))
"""


def test_generated_vaes_and_clip_vision_load_key_for_key_in_comfyui() -> None:
    paths = [str(cached_aux_model(name)) for name in ("wan21_vae", "flux_vae", "clip_vision_h")]
    res = subprocess.run([sys.executable, "-c", SCRIPT, *paths], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["wan21_vae"]["model"] == "WanVAE" and out["wan21_vae"]["latent_channels"] == 16, out["wan21_vae"]
    assert out["flux_vae"]["latent_channels"] == 16, out["flux_vae"]  # Flux's and Z-Image's ae
    assert out["clip_vision_h"]["layers"] == 32, out["clip_vision_h"]  # ViT-H/14, as Wan 2.1 I2V conditions on
    assert out["clip_vision_h"]["wrong_shape"] == [], out["clip_vision_h"]["wrong_shape"][:5]
    for name, report in out.items():
        assert report["missing"] == [] and report["leftover"] == [], (name, report["missing"][:5], report["leftover"][:5])
