"""Transformer families in the real ComfyUI (Flux.1, Wan 2.1), for every LoRA layout their trainers publish.

Generated diffusion models that ComfyUI's own detection recognises, loaded by ``UNETLoader``; a
test-only node stands in for the text encoders too large to generate (T5-XXL, UMT5-XXL). What
is checked is what users rely on: every LoRA key lands on the model (mapped = total, also where
the stock loader drops keys), the LoRA changes the output, strength 0 gives the base output
exactly, and hot-swap matches merge.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid
from dataclasses import dataclass

import numpy as np
import pytest
from comfyui_lora_bridge.bridge.errors import JobFailed
from comfyui_lora_bridge.bridge.localpod.dit_layout import (
    FLUX,
    QWEN_IMAGE,
    WAN21_T2V,
    Z_IMAGE,
    DitSpec,
)
from comfyui_lora_bridge.bridge.localpod.server import LocalComfy
from comfyui_lora_bridge.bridge.localpod.weights import (
    DitLoraSpec,
    cached_dit_lora,
    cached_dit_model,
)
from safetensors.numpy import load_file
from support import node_text, run_graph

pytestmark = pytest.mark.comfy
# hot-swap adds W·x and up(down(x)) where merge adds up·down to W first: fp32 rounding only
HOTSWAP_RTOL = 1e-3


@dataclass(frozen=True)
class Family:
    spec: DitSpec
    model_file: str
    latent: dict
    pooled_width: int
    stock_maps: dict[str, bool | None]  # layout -> stock ComfyUI maps every key / none (None: depends on its version)


FAMILIES = {
    "flux": Family(FLUX, "flux-test.safetensors",
                   {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}, 768,
                   {"kohya": True, "diffusion_model": True, "diffusers": True, "diffsynth": None}),
    "wan": Family(WAN21_T2V, "wan21-t2v-test.safetensors",
                  {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 64, "height": 64, "length": 5, "batch_size": 1}}, 0,
                  {"kohya": True, "diffusion_model": True, "diffusers": False}),
    "qwen_image": Family(QWEN_IMAGE, "qwen-image-test.safetensors",
                         {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}, 0,
                         {"kohya": True, "diffusion_model": True, "diffusers": True, "diffsynth": True}),
    "z_image": Family(Z_IMAGE, "z-image-test.safetensors",
                      {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}, 0,
                      {"kohya": True, "diffusion_model": True, "ai_toolkit": True, "diffusers": None, "diffsynth": None}),
}
WAN14B = DitSpec("wan", 5120, ffn_width=13824)  # for its LoRAs only: the variant a 1.3B model must refuse
CASES = [(family, layout) for family, f in FAMILIES.items() for layout in f.stock_maps]


def lora_name(family: str, layout: str) -> str:
    return f"{family}-{layout}.safetensors"


@pytest.fixture(scope="module")
def pod(comfy):
    """The run's one ComfyUI, with the generated models and LoRAs added (and freed again afterwards)."""
    for key, family in FAMILIES.items():
        (comfy.models_dir("diffusion_models") / family.model_file).symlink_to(cached_dit_model(family.spec))
        for layout in family.stock_maps:
            (comfy.models_dir("loras") / lora_name(key, layout)).symlink_to(cached_dit_lora(DitLoraSpec(family.spec, layout)))
    (comfy.models_dir("loras") / "wan14b-kohya.safetensors").symlink_to(cached_dit_lora(DitLoraSpec(WAN14B, "kohya")))
    time.sleep(1.1)  # folder mtimes move on, so ComfyUI's cached file lists see the new files
    yield comfy
    request = urllib.request.Request(comfy.url + "/free", data=json.dumps({"unload_models": True, "free_memory": True}).encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request).close()


def graph(family: str, lora: str | None = None, strength: float = 1.0, mode: str = "merge", stock: bool = False) -> dict:
    f = FAMILIES[family]
    text = {"width": f.spec.text_width, "tokens": 8, "pooled_width": f.pooled_width}
    g = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": f.model_file, "weight_dtype": "default"}},
        "2": {"class_type": "TestTextConditioning", "inputs": {"text": "ohwx, a portrait", **text}},
        "3": {"class_type": "TestTextConditioning", "inputs": {"text": "blurry", **text}},
        "4": f.latent,
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 7, "steps": 2, "cfg": 2.0, "sampler_name": "euler",
                                                   "scheduler": "simple", "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": f"t/{uuid.uuid4().hex}"}},
    }
    if lora and stock:
        g["11"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": lora, "strength_model": strength}}
        g["5"]["inputs"]["model"] = ["11", 0]
    elif lora:
        g["10"] = {"class_type": "LoraBridgeLoadFile", "inputs": {"lora_name": lora}}
        g["11"] = {"class_type": "LoraBridgeApply", "inputs": {"model": ["1", 0], "lora": ["10", 0], "strength_model": strength,
                                                               "strength_clip": 0.0, "on_mismatch": "error", "mode": mode}}
        g["5"]["inputs"]["model"] = ["11", 0]
    return g


def latent_of(pod: LocalComfy, g: dict) -> tuple[np.ndarray, list[str]]:
    result = run_graph(pod, g)
    prefix = g["6"]["inputs"]["filename_prefix"]
    (path,) = pod.output_dir.glob(f"{prefix}*.latent")
    lines = node_text(result, "11") if g.get("11", {}).get("class_type") == "LoraBridgeApply" else []
    return load_file(str(path))["latent_tensor"].astype(np.float64), lines


@pytest.fixture(scope="module")
def base(pod) -> dict[str, np.ndarray]:
    return {family: latent_of(pod, graph(family))[0] for family in FAMILIES}


@pytest.mark.parametrize("family,layout", CASES)
def test_every_key_lands_and_the_lora_acts(pod, base, family, layout) -> None:
    name = lora_name(family, layout)
    merged, lines = latent_of(pod, graph(family, name, 1.0, "merge"))
    matched, total = map(int, re.search(r"(\d+)/(\d+) keys", lines[0]).groups())
    assert total >= 10 and matched == total, lines  # no key dropped
    assert np.abs(merged - base[family]).max() > 1e-3  # the LoRA changes the output
    stock = latent_of(pod, graph(family, name, 1.0, stock=True))[0]
    stock_maps = FAMILIES[family].stock_maps[layout]
    if stock_maps is None:  # this ComfyUI's own loader maps all of it or none of it
        stock_maps = not (stock == base[family]).all()
    if stock_maps:
        assert np.abs(stock - merged).max() <= 1e-6 * np.abs(merged).max(), "ours differs from ComfyUI's own loader"
    else:  # the stock loader drops every key of this layout: its output is the base model's
        assert (stock == base[family]).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_hotswap_matches_merge_and_strength_zero_is_the_base(pod, base, family) -> None:
    """On the layout with fused-layer slices where the family has one (hot-swap's hardest case)."""
    layout = next((lay for lay in ("ai_toolkit", "diffusers") if FAMILIES[family].stock_maps.get(lay)), "kohya")
    name = lora_name(family, layout)
    merged = latent_of(pod, graph(family, name, 1.0, "merge"))[0]
    hot, lines = latent_of(pod, graph(family, name, 1.0, "hotswap"))
    assert lines[0].startswith("hot-swapped"), lines
    effect = np.abs(merged - base[family]).max()
    assert np.abs(hot - merged).max() <= HOTSWAP_RTOL * np.abs(merged).max() + 1e-3 * effect, (np.abs(hot - merged).max(), effect)
    for mode in ("merge", "hotswap"):
        assert (latent_of(pod, graph(family, name, 0.0, mode))[0] == base[family]).all()


def test_a_lora_of_the_other_family_is_refused_naming_both(pod) -> None:
    g = graph("flux", lora_name("wan", "kohya"))
    with pytest.raises(JobFailed, match=r"LoRA 'wan-kohya.safetensors' is Wan 2.x 1.3B; model is Flux.1; 0 of \d+ keys match"):
        latent_of(pod, g)


def test_a_lora_of_another_variant_is_refused_naming_both(pod) -> None:
    with pytest.raises(JobFailed, match=r"LoRA 'wan14b-kohya.safetensors' is Wan 2.x 14B; model is Wan 2.x 1.3B; 0 of \d+ keys match"):
        latent_of(pod, graph("wan", "wan14b-kohya.safetensors"))
