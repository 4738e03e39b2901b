"""The shipped Wan templates as a team would install them on these test pods
(``LORA_BRIDGE_TEMPLATES_DIR``): their default model names are the generated test files, and the
UMT5-XXL encoder (5.7 B parameters, cannot be generated here) is swapped for the test
conditioning node. The diffusion models, the Wan VAE, CLIP vision and every LoRA patch are
ComfyUI's real code."""

from __future__ import annotations

import re
from pathlib import Path

from comfyui_lora_bridge.bridge.graphs.templates import WORKFLOWS_DIR
from comfyui_lora_bridge.testing.dit_layout import (
    WAN21_I2V,
    WAN21_T2V,
    WAN22_EXPERT,
    WAN22_I2V_EXPERT,
)
from comfyui_lora_bridge.testing.weights import (
    cached_aux_model,
    cached_dit_model,
)

MODELS = {  # pod file -> (models folder, generated file)
    "cv-wan21-t2v.safetensors": ("diffusion_models", lambda: cached_dit_model(WAN21_T2V)),
    "cv-wan21-i2v.safetensors": ("diffusion_models", lambda: cached_dit_model(WAN21_I2V)),
    "cv-wan21-vae.safetensors": ("vae", lambda: cached_aux_model("wan21_vae")),
    "cv-wan22-high.safetensors": ("diffusion_models", lambda: cached_dit_model(WAN22_EXPERT, 0)),
    "cv-wan22-low.safetensors": ("diffusion_models", lambda: cached_dit_model(WAN22_EXPERT, 1)),
    "cv-wan22-i2v-high.safetensors": ("diffusion_models", lambda: cached_dit_model(WAN22_I2V_EXPERT, 0)),
    "cv-wan22-i2v-low.safetensors": ("diffusion_models", lambda: cached_dit_model(WAN22_I2V_EXPERT, 1)),
    "cv-clip-vision-h.safetensors": ("clip_vision", lambda: cached_aux_model("clip_vision_h")),
}
DEFAULTS = {'"wan2.1_t2v_1.3B_fp16.safetensors"': '"cv-wan21-t2v.safetensors"',
            '"wan2.1_i2v_480p_14B_fp16.safetensors"': '"cv-wan21-i2v.safetensors"',
            '"wan_2.1_vae.safetensors"': '"cv-wan21-vae.safetensors"', '"clip_vision_h.safetensors"': '"cv-clip-vision-h.safetensors"',
            '"wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"': '"cv-wan22-high.safetensors"',
            '"wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"': '"cv-wan22-low.safetensors"',
            '"wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"': '"cv-wan22-i2v-high.safetensors"',
            '"wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"': '"cv-wan22-i2v-low.safetensors"'}
def team_template(name: str) -> str:
    """A shipped Wan template as a team would install it here: test defaults, UMT5 swapped for the test node."""
    source = (WORKFLOWS_DIR / f"{name}.json.j2").read_text()
    for old, new in DEFAULTS.items():
        source = source.replace(old, new)
    source = re.sub(r'\n\s*"\d+": \{"class_type": "CLIPLoader".*\},?', "", source)
    return re.sub(r'"class_type": "CLIPTextEncode", "inputs": \{"text": (\{\{ \w+ \}\}), "clip": \["\d+", 0\]\}',
                  rf'"class_type": "TestTextConditioning", "inputs": {{"text": \1, "width": {WAN21_T2V.text_width}, '
                  r'"tokens": 8, "pooled_width": 0}', source)


def install_video_models(comfy, folder: Path, names: tuple[str, ...]) -> Path:
    """Link the generated video models into the pod's models folders; write the team templates ``names`` into ``folder``."""
    for name, (models, make) in MODELS.items():
        path = comfy.models_dir(models) / name
        if not path.exists():
            path.symlink_to(make())
    for name in names:
        (folder / f"{name}.json.j2").write_text(team_template(name))
        assert '"class_type": "CLIPLoader"' not in (folder / f"{name}.json.j2").read_text()
    return folder
