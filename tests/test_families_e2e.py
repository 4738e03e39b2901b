"""Every model family in the real ComfyUI (SDXL, Flux.1, Wan 2.1/2.2, Qwen-Image, Z-Image), for every
LoRA layout their trainers publish.

Generated models that ComfyUI's own detection recognises: the SDXL checkpoint with its real CLIP-L
and CLIP-G (``CheckpointLoaderSimple``), transformer diffusion models loaded by ``UNETLoader``
with a test-only node standing in for the text encoders too large to generate (T5-XXL, UMT5-XXL,
Qwen2.5-VL, Qwen3). What is checked is what users rely on: every LoRA key lands on the model
(mapped = total, also where the stock loader drops keys) with exactly the patches ComfyUI's own
loader makes from the same factors, the LoRA changes the output as stock's does, strength 0 gives the
base output exactly, hot-swap matches merge, and Wan 2.2's two experts each take their own LoRA.

Each layout's patches are compared with stock's on the model as loaded, by a test node that reads
what the patches add (``TestLoraPatchProbe``) and no weight is patched; each family's heavy model is
rendered with a LoRA merged (ours and stock's) once, on its hardest layout.
"""

from __future__ import annotations

import io
import json
import re
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from comfyui_lora_bridge.bridge.errors import JobFailed
from comfyui_lora_bridge.bridge.graphs.builder import build_graph
from comfyui_lora_bridge.bridge.graphs.lora_insertion import PREFIX, LoraRequest
from comfyui_lora_bridge.testing.dit_layout import (
    FLUX,
    QWEN_IMAGE,
    WAN21_I2V,
    WAN21_T2V,
    WAN22_EXPERT,
    WAN22_I2V_EXPERT,
    Z_IMAGE,
    DitSpec,
)
from comfyui_lora_bridge.testing.server import LocalComfy
from comfyui_lora_bridge.testing.unet_layout import SDXL_UNET
from comfyui_lora_bridge.testing.weights import (
    DitLoraSpec,
    LoraSpec,
    cached_aux_model,
    cached_checkpoint,
    cached_dit_lora,
    cached_dit_model,
    cached_lora,
)
from safetensors.numpy import load, load_file
from service_harness import Service
from support import POD_TOKEN, frames_of, node_output, node_text, pod_object_info, run_graph

pytestmark = pytest.mark.comfy
# hot-swap adds W·x and up(down(x)) where merge adds up·down to W first: rounding only, in fp32 for the
# diffusion models, in fp16 through SDXL's text encoders (ComfyUI runs them in fp16, on CPU too)
HOTSWAP_RTOL = {"fp32": 1e-3, "fp16 text encoders": 5e-3}
IMAGE_LATENT = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
VIDEO_LATENT = {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 64, "height": 64, "length": 5, "batch_size": 1}}


# what stock ComfyUI's loader does with a layout: maps every key (True), none (False), all or none
# depending on its version (None), or drops some ("some")
StockMaps = bool | None | Literal["some"]


@dataclass(frozen=True)
class Family:
    model_file: str
    latent: dict
    layouts: dict[str, StockMaps]
    # a layout that stock does not map fully on every version -> its twin: a file of the same factors
    # under names stock maps (generated from the same seed), whose stock patches ours must equal
    twins: dict[str, str] = field(default_factory=dict)
    spec: DitSpec | None = None  # a transformer (UNETLoader + test text conditioning); None: the SDXL checkpoint
    pooled_width: int = 0

    @property
    def family_id(self) -> str:
        return "sdxl" if self.spec is None else self.spec.family

    def reference(self, layout: str) -> str:
        """The layout whose stock patches ours must equal on ``layout``."""
        return layout if self.layouts[layout] is True else self.twins[layout]


FAMILIES = {
    "sdxl": Family("sdxl-test.safetensors", {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
                   {"kohya": True, "locon": True, "peft": "some"}, {"peft": "kohya"}),
    "flux": Family("flux-test.safetensors", IMAGE_LATENT,
                   {"kohya": True, "diffusion_model": True, "diffusers": True, "diffsynth": None, "comfyui": True},
                   {"diffsynth": "diffusers"}, FLUX, 768),
    "wan": Family("wan21-t2v-test.safetensors", VIDEO_LATENT,
                  {"kohya": True, "diffusion_model": True, "diffusers": False, "comfyui": True}, {"diffusers": "kohya"}, WAN21_T2V),
    "wan_i2v": Family("wan21-i2v-test.safetensors", VIDEO_LATENT, {"kohya": True, "diffusers": False}, {"diffusers": "kohya"}, WAN21_I2V),
    "qwen_image": Family("qwen-image-test.safetensors", IMAGE_LATENT,
                         {"kohya": True, "diffusion_model": True, "diffusers": True, "diffsynth": True}, spec=QWEN_IMAGE),
    "z_image": Family("z-image-test.safetensors", IMAGE_LATENT,
                      {"kohya": True, "diffusion_model": True, "ai_toolkit": True, "diffusers": None, "diffsynth": None},
                      {"diffusers": "ai_toolkit", "diffsynth": "ai_toolkit"}, Z_IMAGE),
}
CASES = [(family, layout) for family, f in FAMILIES.items() for layout in f.layouts]
# Wan 2.2 A14B: two experts of the 14B shape; musubi-tuner, diffusion-pipe and diffusers LoRAs trained per expert
EXPERTS = {"high": "wan22-high-noise-test.safetensors", "low": "wan22-low-noise-test.safetensors"}
PAIR_LAYOUTS: dict[str, StockMaps] = {"kohya": True, "diffusion_model": True, "diffusers": False}
PAIR_TWINS = {"diffusers": "kohya"}
I2V_EXPERTS = {"high": "wan22-i2v-high-noise-test.safetensors", "low": "wan22-i2v-low-noise-test.safetensors"}
# what the shipped templates load beside the diffusion model (generated with the real architectures)
AUX_FILES = {"flux_vae": ("vae", "flux-ae-test.safetensors"), "wan21_vae": ("vae", "wan21-vae-test.safetensors"),
             "clip_vision_h": ("clip_vision", "clip-vision-h-test.safetensors")}
# listed in the pod's text encoders so the templates validate, never loaded: the test swaps the encoders out
STANDIN_ENCODER = "standin-text-encoder.safetensors"


def lora_name(family: str, layout: str) -> str:
    return f"{family}-{layout}.safetensors"


def lora_file(family: str, layout: str) -> Path:
    f = FAMILIES[family]
    if f.spec is None:
        return cached_lora(LoraSpec(layout=layout, unet=SDXL_UNET, rank=4, output_name=f"sdxl-{layout}"))  # type: ignore[arg-type]
    return cached_dit_lora(DitLoraSpec(f.spec, layout))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pod(comfy):
    """The run's one ComfyUI, with the generated models and LoRAs added (and freed again afterwards)."""
    for key, family in FAMILIES.items():
        model = cached_checkpoint("sdxl") if family.spec is None else cached_dit_model(family.spec)
        (comfy.models_dir("checkpoints" if family.spec is None else "diffusion_models") / family.model_file).symlink_to(model)
        for layout in family.layouts:
            (comfy.models_dir("loras") / lora_name(key, layout)).symlink_to(lora_file(key, layout))
    for seed, (expert, name) in enumerate(EXPERTS.items()):
        (comfy.models_dir("diffusion_models") / name).symlink_to(cached_dit_model(WAN22_EXPERT, seed))
        for layout in PAIR_LAYOUTS:
            lora = cached_dit_lora(DitLoraSpec(WAN22_EXPERT, layout, seed=10 + seed))  # type: ignore[arg-type]
            (comfy.models_dir("loras") / lora_name(f"wan22-{expert}", layout)).symlink_to(lora)
    (comfy.models_dir("loras") / "wan14b-kohya.safetensors").symlink_to(cached_dit_lora(DitLoraSpec(WAN22_EXPERT, "kohya")))
    for seed, name in enumerate(I2V_EXPERTS.values()):
        (comfy.models_dir("diffusion_models") / name).symlink_to(cached_dit_model(WAN22_I2V_EXPERT, seed))
    for aux, (folder, name) in AUX_FILES.items():
        (comfy.models_dir(folder) / name).symlink_to(cached_aux_model(aux))
    (comfy.models_dir("text_encoders") / STANDIN_ENCODER).write_bytes(b"")
    time.sleep(1.1)  # folder mtimes move on, so ComfyUI's cached file lists see the new files
    yield comfy
    free(comfy)


def free(pod: LocalComfy) -> None:
    """ComfyUI lets go of every model it holds, and of its cached node outputs."""
    request = urllib.request.Request(pod.url + "/free", data=json.dumps({"unload_models": True, "free_memory": True}).encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request).close()


def family_group(item: pytest.Item) -> str | None:
    """The family whose models a test loads: the module's tests run one family after another (``conftest.py``)."""
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec else {}
    if "family" in params:
        return params["family"]
    if "template" in params:
        return TEMPLATE_RUNS[params["template"]][0] if params["template"] in TEMPLATE_RUNS else "sdxl"
    return "wan22" if item.name.startswith("test_wan22") else None


@pytest.fixture(scope="module")
def held() -> dict[str, str | None]:
    return {"family": None}


@pytest.fixture(autouse=True)
def one_family_at_a_time(request, pod, held) -> None:
    """A test of another family than the last frees the last family's models first (the peak is one family's)."""
    family = family_group(request.node)
    if family is not None and family != held["family"]:
        if held["family"] is not None:
            free(pod)
        held["family"] = family


def model_loader(family: str) -> dict:
    f = FAMILIES[family]
    if f.spec is None:  # a checkpoint with its own (real) text encoders, which the LoRA patches too
        return {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": f.model_file}}
    return {"class_type": "UNETLoader", "inputs": {"unet_name": f.model_file, "weight_dtype": "default"}}


def lora_nodes(model: list, clip: list | None, lora: str, strength: float = 1.0, mode: str = "merge",
               stock: bool = False, ids: tuple[str, str] = ("10", "11")) -> dict:
    """The LoRA on ``model`` (and ``clip``): ComfyUI's own loader, or ours (load + apply); the
    patched model is output 0 of node ``ids[1]``, the text encoder output 1."""
    clip_in = {"clip": clip} if clip else {}
    if stock:
        return {ids[1]: {"class_type": "LoraLoader" if clip else "LoraLoaderModelOnly",
                         "inputs": {"model": model, "lora_name": lora, "strength_model": strength,
                                    **({"strength_clip": strength, **clip_in} if clip else {})}}}
    return {ids[0]: {"class_type": "LoraBridgeLoadFile", "inputs": {"lora_name": lora}},
            ids[1]: {"class_type": "LoraBridgeApply", "inputs": {"model": model, "lora": [ids[0], 0], "strength_model": strength,
                                                                 "strength_clip": strength if clip else 0.0, "on_mismatch": "error",
                                                                 "mode": mode, **clip_in}}}


# One step at cfg 1 (ComfyUI then skips the negative prompt's pass): one pass of the model per render, which is
# all a comparison of a LoRA's effect needs; the model's time on the CPU is most of this module's.
ONE_MODEL_PASS = {"steps": 1, "cfg": 1.0}


def graph(family: str, lora: str | None = None, strength: float = 1.0, mode: str = "merge", stock: bool = False) -> dict:
    f = FAMILIES[family]
    g = {"1": model_loader(family)}
    if f.spec is None:
        encode = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["11", 1] if lora else ["1", 1]}}
    else:
        encode = {"class_type": "TestTextConditioning",
                  "inputs": {"width": f.spec.text_width, "tokens": 8, "pooled_width": f.pooled_width}}
    g.update({
        "2": {**encode, "inputs": {**encode["inputs"], "text": "ohwx, a portrait"}},
        "4": f.latent,
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 7, **ONE_MODEL_PASS, "sampler_name": "euler",
                                                   "scheduler": "simple", "positive": ["2", 0], "negative": ["2", 0],
                                                   "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": f"t/{uuid.uuid4().hex}"}},
    })
    if lora:
        g.update(lora_nodes(["1", 0], ["1", 1] if f.spec is None else None, lora, strength, mode, stock))
        g["5"]["inputs"]["model"] = ["11", 0]
    return g


def expert_loader(expert: str) -> dict:
    return {"class_type": "UNETLoader", "inputs": {"unet_name": EXPERTS[expert], "weight_dtype": "default"}}


def pair_graph(loras: dict[str, str], stock: bool = False) -> dict:
    """Wan 2.2 A14B as its templates run it: the high-noise expert takes the first step, the
    low-noise expert the rest, each with the LoRA trained for it (``loras``: expert -> file)."""
    text = {"width": WAN22_EXPERT.text_width, "tokens": 8, "pooled_width": 0}
    g: dict = {
        "2": {"class_type": "TestTextConditioning", "inputs": {"text": "ohwx, a portrait", **text}},
        "4": VIDEO_LATENT,
        "6": {"class_type": "SaveLatent", "inputs": {"samples": ["21", 0], "filename_prefix": f"t/{uuid.uuid4().hex}"}},
    }
    for i, expert in enumerate(EXPERTS):
        loader, apply_, sampler = f"{12 + i * 3}", f"{13 + i * 3}", f"{20 + i}"
        g[loader] = expert_loader(expert)
        model = [loader, 0]
        if expert in loras:
            g.update(lora_nodes(model, None, loras[expert], stock=stock, ids=(f"{11 + i * 3}", apply_)))
            model = [apply_, 0]
        g[sampler] = {"class_type": "KSamplerAdvanced", "inputs": {
            "model": model, "add_noise": "enable" if i == 0 else "disable", "noise_seed": 7, "steps": 2, "cfg": 1.0,
            "sampler_name": "euler", "scheduler": "simple", "positive": ["2", 0], "negative": ["2", 0],
            "latent_image": ["4", 0] if i == 0 else ["20", 0], "start_at_step": i, "end_at_step": i + 1,
            "return_with_leftover_noise": "enable" if i == 0 else "disable"}}
    return g


def latent_of(pod: LocalComfy, g: dict, with_lines: bool = True) -> tuple[np.ndarray, list[str]]:
    """The saved latent, and the first line each LoRA Bridge apply node showed (in node order; pass
    ``with_lines=False`` where ComfyUI may reuse a node's output from the previous prompt)."""
    result = run_graph(pod, g)
    prefix = g["6"]["inputs"]["filename_prefix"]
    (path,) = pod.output_dir.glob(f"{prefix}*.latent")
    lines = [node_text(result, node)[0] for node, n in sorted(g.items(), key=lambda item: int(item[0]))
             if n["class_type"] == "LoraBridgeApply"] if with_lines else []
    return load_file(str(path))["latent_tensor"].astype(np.float64), lines


def keys_of(line: str) -> tuple[int, int]:
    matched, total = map(int, re.search(r"(\d+)/(\d+) keys", line).groups())
    return matched, total


class BaseOutputs(dict):
    """The family's output without a LoRA, rendered when a test first asks for it."""

    def __init__(self, pod: LocalComfy) -> None:
        super().__init__()
        self.pod = pod

    def __missing__(self, family: str) -> np.ndarray:
        self[family] = latent_of(self.pod, graph(family))[0]
        return self[family]


@pytest.fixture(scope="module")
def base(pod) -> BaseOutputs:
    return BaseOutputs(pod)


Patches = dict[str, list]  # TestLoraPatchProbe's reading: patched weight -> its patches, as numbers


def patches_of(pod: LocalComfy, loader: dict, lora: str, stock: bool, clip: bool = False) -> tuple[Patches, list[str]]:
    """What ``lora`` patches on the model ``loader`` loads (and its text encoder), with ComfyUI's own
    loader or ours (merge), read by the probe node without patching a weight; and our apply node's line."""
    g = {"1": loader, **lora_nodes(["1", 0], ["1", 1] if clip else None, lora, stock=stock),
         "7": {"class_type": "TestLoraPatchProbe",
               "inputs": {"model": ["11", 0], "tag": uuid.uuid4().hex, **({"clip": ["11", 1]} if clip else {})}}}
    result = run_graph(pod, g)
    return json.loads(node_output(result, "7", "patches")[0]), [] if stock else node_text(result, "11")


def count(patches: Patches) -> int:
    """How many patches (a fused layer takes one per slice)."""
    return sum(len(entries) for entries in patches.values())


def assert_same_patches(ours: Patches, stock: Patches) -> None:
    """The same weights patched, each by patches of the same kind, strengths and slices adding the
    same deltas (their probe forms equal to float64 rounding)."""
    assert sorted(ours) == sorted(stock), (sorted(set(ours) ^ set(stock))[:8], len(ours), len(stock))

    def same(a: object, b: object) -> bool:
        if isinstance(a, float) or isinstance(b, float):
            return isinstance(a, int | float) and isinstance(b, int | float) and abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1e-12)
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
        return a == b

    differing = [key for key in ours if not same(ours[key], stock[key])]
    assert not differing, [(key, ours[key], stock[key]) for key in differing[:3]]


def assert_stock_maps(maps: StockMaps, own: Patches, ours: Patches) -> None:
    """What ComfyUI's own loader made of the layout's file (``own``) is what ``maps`` says of it."""
    if maps is True or (maps is None and own):
        assert_same_patches(ours, own)
    elif maps == "some":  # a part of ours, not all of it
        assert own and set(own) < set(ours), (len(own), len(ours))
    else:
        assert own == {}, len(own)


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.abs(a - b).max() <= 1e-6 * np.abs(b).max())


def assert_hotswap_close(hot: np.ndarray, merged: np.ndarray, base: np.ndarray, family: str) -> None:
    rtol = HOTSWAP_RTOL["fp32" if FAMILIES[family].spec else "fp16 text encoders"]
    effect = np.abs(merged - base).max()
    assert np.abs(hot - merged).max() <= rtol * (np.abs(merged).max() + effect), (np.abs(hot - merged).max(), effect)


@pytest.fixture(scope="module")
def stock_patches(pod):
    """ComfyUI's own loader's patches per (model loader, LoRA file), each read once for the module's tests."""
    cache: dict[tuple[str, str], Patches] = {}

    def get(loader: dict, name: str) -> Patches:
        key = (json.dumps(loader, sort_keys=True), name)
        if key not in cache:
            cache[key] = patches_of(pod, loader, name, stock=True, clip=loader["class_type"] == "CheckpointLoaderSimple")[0]
        return cache[key]

    return get


@pytest.mark.parametrize("family,layout", CASES)
def test_every_key_lands_as_comfyuis_own_loader_puts_it(pod, stock_patches, family, layout) -> None:
    """Ours maps every key of the layout, to exactly the patches ComfyUI's own loader makes from the
    same factors: from this file where stock maps it, else from its twin under names stock maps."""
    f, loader = FAMILIES[family], model_loader(family)
    ours, lines = patches_of(pod, loader, lora_name(family, layout), stock=False, clip=f.spec is None)
    matched, total = keys_of(lines[0])
    assert total >= 10 and matched == total == count(ours), (lines, count(ours))  # no key dropped
    assert_same_patches(ours, stock_patches(loader, lora_name(family, f.reference(layout))))
    assert_stock_maps(f.layouts[layout], stock_patches(loader, lora_name(family, layout)), ours)


def hardest_layout(family: str) -> str:
    """The family's hardest layout for hot-swap: fused-layer slices (diffusers names on a fused qkv)
    where it has them, convs and both text encoders on SDXL (LoCon)."""
    return next(lay for lay in ("ai_toolkit", "diffusers", "locon", "kohya") if FAMILIES[family].layouts.get(lay))


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_renders_as_stock_hotswap_matches_it_and_strength_zero_is_the_base(pod, base, family) -> None:
    """The family's model rendered with a LoRA merged, by ours and by ComfyUI's own loader (its hardest layout)."""
    layout = hardest_layout(family)
    name = lora_name(family, layout)
    ours = latent_of(pod, graph(family, name, 1.0, "merge"))[0]
    assert np.abs(ours - base[family]).max() > 1e-3  # the LoRA changes the output
    assert close(latent_of(pod, graph(family, name, 1.0, stock=True))[0], ours), "ours differs from ComfyUI's own loader"
    hot, lines = latent_of(pod, graph(family, name, 1.0, "hotswap"))
    assert lines[0].startswith("hot-swapped"), lines
    assert_hotswap_close(hot, ours, base[family], family)
    for mode in ("merge", "hotswap"):
        assert (latent_of(pod, graph(family, name, 0.0, mode))[0] == base[family]).all()


@pytest.mark.parametrize("layout", PAIR_LAYOUTS)
def test_wan22_each_expert_gets_the_patches_of_its_own_lora(pod, stock_patches, layout) -> None:
    for expert in EXPERTS:
        name = lora_name(f"wan22-{expert}", layout)
        ours, lines = patches_of(pod, expert_loader(expert), name, stock=False)
        assert keys_of(lines[0])[0] == keys_of(lines[0])[1] == count(ours) >= 10, lines
        reference = layout if PAIR_LAYOUTS[layout] is True else PAIR_TWINS[layout]
        assert_same_patches(ours, stock_patches(expert_loader(expert), lora_name(f"wan22-{expert}", reference)))
        assert_stock_maps(PAIR_LAYOUTS[layout], stock_patches(expert_loader(expert), name), ours)


def test_wan22_each_expert_takes_its_own_lora(pod) -> None:
    """Both experts in one graph, as the templates run them: each LoRA acts, as stock's does."""
    loras = {expert: lora_name(f"wan22-{expert}", "kohya") for expert in EXPERTS}
    base_pair = latent_of(pod, pair_graph({}))[0]
    both, lines = latent_of(pod, pair_graph(loras))
    assert len(lines) == 2 and all(keys_of(line)[0] == keys_of(line)[1] >= 10 for line in lines), lines
    high_only = latent_of(pod, pair_graph({"high": loras["high"]}), with_lines=False)[0]
    for a, b in ((both, base_pair), (high_only, base_pair), (both, high_only)):  # each expert's LoRA acts
        assert np.abs(a - b).max() > 1e-3
    assert close(latent_of(pod, pair_graph(loras, stock=True))[0], both)


def test_a_lora_of_the_other_family_is_refused_naming_both(pod) -> None:
    g = graph("flux", lora_name("wan", "kohya"))
    with pytest.raises(JobFailed, match=r"LoRA 'wan-kohya.safetensors' is Wan 2.x 1.3B; model is Flux.1; 0 of \d+ keys match"):
        latent_of(pod, g)
    with pytest.raises(JobFailed, match=r"LoRA 'flux-kohya.safetensors' is Flux.1; model is SDXL; 0 of \d+ keys match"):
        latent_of(pod, graph("sdxl", lora_name("flux", "kohya")))


def test_a_lora_of_another_variant_is_refused_naming_both(pod) -> None:
    with pytest.raises(JobFailed, match=r"LoRA 'wan14b-kohya.safetensors' is Wan 2.x 14B; model is Wan 2.x 1.3B; 0 of \d+ keys match"):
        latent_of(pod, graph("wan", "wan14b-kohya.safetensors"))
    expert = {"high": lora_name("wan", "kohya")}  # a Wan 2.1 1.3B LoRA on a Wan 2.2 A14B expert
    with pytest.raises(JobFailed, match=r"LoRA 'wan-kohya.safetensors' is Wan 2.x 1.3B; model is Wan 2.x 14B"):
        latent_of(pod, pair_graph(expert))


def fits_of(pod: LocalComfy, folder: str, model_file: str) -> tuple[dict, dict[str, bool]]:
    """What the graph editor asks before a run: the model file's family and which LoRAs were made for it."""
    query = urllib.parse.urlencode({"model_folder": folder, "model_name": model_file})
    request = urllib.request.Request(f"{pod.url}/lora_bridge/loras?{query}", headers={"Authorization": f"Bearer {POD_TOKEN}"})
    with urllib.request.urlopen(request) as resp:
        listing = json.load(resp)
    return listing["model"], {item["name"]: item["fits_model"] for item in listing["loras"]}


def test_the_pod_tells_each_model_files_family_and_the_loras_made_for_it(pod) -> None:
    """Read from the files' headers before any run, and the same verdict the apply nodes reach when run."""
    for key, family in FAMILIES.items():
        model, fits = fits_of(pod, "checkpoints" if family.spec is None else "diffusion_models", family.model_file)
        assert model["family"] == family.family_id, (key, model)
        for other_key, other in FAMILIES.items():
            for layout in other.layouts:
                assert fits[lora_name(other_key, layout)] is (other.family_id == family.family_id), (key, other_key, layout)
    model, fits = fits_of(pod, "diffusion_models", FAMILIES["wan"].model_file)
    assert model["family_name"] == "Wan 2.x 1.3B" and fits["wan14b-kohya.safetensors"] is False  # another variant
    model, fits = fits_of(pod, "diffusion_models", EXPERTS["high"])
    assert model["family_name"] == "Wan 2.x 14B" and fits["wan14b-kohya.safetensors"] is True
    assert fits[lora_name("wan", "kohya")] is False


@pytest.fixture(scope="module")
def service(pod, s3, tmp_path_factory):
    svc = Service([pod.url], tmp_path_factory.mktemp("families-svc"), s3.endpoint).start()
    yield svc
    svc.kill()


def register(service, s3, family: str, owner: str) -> dict:
    key = f"families/{family}-kohya.safetensors"
    s3.client.put_object(Bucket="loras", Key=key, Body=lora_file(family, "kohya").read_bytes())
    status, lora = service.call("POST", "/v1/loras", {"name": f"{family} character", "character_id": owner, "status": "ready",
                                                      "source": f"s3://loras/{key}"})
    assert status == 201 and lora["family"] == FAMILIES[family].family_id, lora
    assert lora["variant"] == {"wan": "1.3B", "flux": "Flux.1"}.get(lora["family"]), lora  # inspected with the family
    return lora


@pytest.mark.parametrize("family", FAMILIES)
def test_the_bridge_generates_with_a_registered_lora_of_each_family(service, s3, pod, base, family) -> None:
    """Registry -> graph rewritten by the bridge (hot-swap, its default) -> real pod: the latent of the
    LoRA applied by hand."""
    lora = register(service, s3, family, f"fam-{family}")
    status, rec = service.call("POST", "/v1/generations?wait=true", {
        "workflow": graph(family), "family": FAMILIES[family].family_id, "character_id": f"fam-{family}", "lora_strength": 1.0})
    assert status == 200 and rec["status"] == "succeeded", rec
    assert [a["name"] for a in rec["applied"]] == [f"lora-{lora['id']}"] and not rec["warnings"]
    status, data = service.call("GET", f"/v1/generations/{rec['id']}/outputs/0")
    assert status == 200
    by_hand = latent_of(pod, graph(family, lora_name(family, "kohya"), 1.0, "hotswap"))[0]
    assert_hotswap_close(load(data)["latent_tensor"].astype(np.float64), by_hand, base[family], family)


def test_the_bridge_drops_or_refuses_a_lora_of_another_family(service, s3, base) -> None:
    register(service, s3, "wan", "fam-mixed")  # the character has a Wan LoRA only; the job is a Flux image
    request = {"workflow": graph("flux"), "family": "flux", "character_id": "fam-mixed"}
    status, rec = service.call("POST", "/v1/generations?wait=true", request)
    assert status == 200 and rec["status"] == "succeeded" and rec["applied"] == []
    assert any("(wan character) is Wan 2.x 1.3B; the model is Flux" in w for w in rec["warnings"]), rec["warnings"]
    status, data = service.call("GET", f"/v1/generations/{rec['id']}/outputs/0")
    assert (load(data)["latent_tensor"].astype(np.float64) == base["flux"]).all()
    status, err = service.call("POST", "/v1/generations", {**request, "lora_policy": "strict"})
    assert status == 422 and "is Wan 2.x 1.3B; the model is Flux" in err["error"]["message"]
    # the same family, another variant: Wan 2.2 A14B's template with the character's Wan 1.3B LoRA
    status, err = service.call("POST", "/v1/generations", {"template": "wan22_t2v", "character_id": "fam-mixed", "lora_policy": "strict"})
    assert status == 422 and "is Wan 2.x 1.3B; the model is Wan 2.x 14B" in err["error"]["message"]


@pytest.mark.parametrize("template", ["sdxl_txt2img", "sdxl_img2img"])
def test_the_sdxl_templates_run_with_a_character_lora(service, s3, pod, template) -> None:
    """The shipped SDXL templates, rendered, given the LoRA and its trigger word by the bridge, run to an image."""
    from PIL import Image

    lora = register(service, s3, "sdxl", "fam-sdxl-templates")
    params: dict = {"checkpoint": FAMILIES["sdxl"].model_file, **ONE_MODEL_PASS, "seed": 3, "prompt": "a portrait"}
    if template.endswith("img2img"):  # a textured start image in the pod's input folder
        pixels = np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(pod.base_dir / "input" / "fam-sdxl-start.png")
        params.update(image="fam-sdxl-start.png", denoise=0.6)
    else:
        params.update(width=256, height=256)  # the template's smallest size
    # (what the LoRA does to SDXL's output is this module's other tests: here, that the templates run with it)
    status, rec = service.call("POST", "/v1/generations?wait=true",
                               {"template": template, "params": params, "character_id": "fam-sdxl-templates"})
    assert status == 200 and rec["status"] == "succeeded", rec
    assert [a["name"] for a in rec["applied"]] == [f"lora-{lora['id']}"] and rec["trigger_words"] == ["ohwx"]
    status, png = service.call("GET", f"/v1/generations/{rec['id']}/outputs/0")
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    assert image.shape in ((64, 64, 3), (256, 256, 3)) and image.std() > 1  # decoded content


# The shipped templates of the transformer families, with the test files for their loaders. The
# bridge renders each, inserts the family's LoRA (Wan 2.2: each expert's own, chosen by file name)
# and its trigger word, and validates it against the pod; then the text encoders too large to
# generate are swapped for the test node, and the real ComfyUI runs it to an image or a video.
IMAGE_SIZE = {"width": 256, "height": 256}  # these templates' smallest size
CLIP = {"clip": STANDIN_ENCODER, "vae": AUX_FILES["wan21_vae"][1]}
CLIP_WAN = {**CLIP, "width": 64, "height": 64, "length": 5}
TEMPLATE_RUNS: dict[str, tuple[str, dict]] = {
    "flux_txt2img": ("flux", {"unet": FAMILIES["flux"].model_file, "clip_l": STANDIN_ENCODER, "t5": STANDIN_ENCODER,
                              "vae": AUX_FILES["flux_vae"][1], **IMAGE_SIZE}),
    "z_image_txt2img": ("z_image", {"unet": FAMILIES["z_image"].model_file, **CLIP, "vae": AUX_FILES["flux_vae"][1],
                                    **IMAGE_SIZE}),
    "qwen_image_txt2img": ("qwen_image", {"unet": FAMILIES["qwen_image"].model_file, **CLIP, **IMAGE_SIZE}),
    "wan21_t2v": ("wan", {"unet": FAMILIES["wan"].model_file, **CLIP_WAN}),
    "wan21_i2v": ("wan_i2v", {"unet": FAMILIES["wan_i2v"].model_file, **CLIP_WAN, "clip_vision": AUX_FILES["clip_vision_h"][1],
                              "image": "fam-start.png"}),
    "wan22_t2v": ("wan22", {"high_noise": EXPERTS["high"], "low_noise": EXPERTS["low"], **CLIP_WAN, "switch_step": 1}),
    "wan22_i2v": ("wan22", {"high_noise": I2V_EXPERTS["high"], "low_noise": I2V_EXPERTS["low"], **CLIP_WAN, "switch_step": 1,
                            "image": "fam-start.png"}),
}


def template_loras(family: str, params: dict) -> list[LoraRequest]:
    if family == "wan22":  # each expert's LoRA on the loader of that expert's file
        return [LoraRequest(lora_name(f"wan22-{expert}", "kohya"), family="wan", text_encoder=False, trigger_words=("ohwx",),
                            targets=(params[f"{expert}_noise"],)) for expert in EXPERTS]
    return [LoraRequest(lora_name(family, "kohya"), family=FAMILIES[family].family_id, text_encoder=False, trigger_words=("ohwx",))]


def with_test_encoders(graph: dict, spec: DitSpec) -> dict:
    """``graph`` with its text encoders (CLIPLoader/DualCLIPLoader + CLIPTextEncode) swapped for the
    test node, fed the same text (trigger words included)."""
    loaders = {nid for nid, node in graph.items() if node["class_type"] in ("CLIPLoader", "DualCLIPLoader")}
    out = {}
    for nid, node in graph.items():
        if nid in loaders:
            continue
        if node["class_type"] == "CLIPTextEncode":
            node = {"class_type": "TestTextConditioning", "inputs": {
                "text": node["inputs"]["text"], "width": spec.text_width, "tokens": 8,
                "pooled_width": spec.pooled_width if spec.family == "flux" else 0}}
        else:  # the LoRA stack's optional text-encoder input went with the loader
            node = {**node, "inputs": {k: v for k, v in node["inputs"].items() if not (isinstance(v, list) and v[:1] and v[0] in loaders)}}
        out[nid] = node
    return out


@pytest.mark.parametrize("template", TEMPLATE_RUNS)
def test_the_transformer_templates_run_with_the_bridges_loras(pod, template) -> None:
    from PIL import Image

    family, params = TEMPLATE_RUNS[template]
    if "image" in params:  # a textured start image in the pod's input folder
        pixels = np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(pod.base_dir / "input" / params["image"])
    spec = WAN22_EXPERT if family == "wan22" else FAMILIES[family].spec
    # one model pass per expert (Flux's template has no cfg: it runs at 1)
    fewest_passes = {"steps": 2 if family == "wan22" else 1, **({} if family == "flux" else {"cfg": 1.0})}
    built = build_graph(pod_object_info(pod), template=template, params={**params, **fewest_passes, "prompt": "a portrait"},
                        loras=template_loras(family, params), mode="pack")
    assert built.report.trigger_words == ["ohwx"] and not built.report.skipped
    stacks = sorted(nid for nid, node in built.graph.items() if nid.startswith(PREFIX) and node["class_type"] == "LoraBridgeApplyStack")
    assert len(stacks) == (2 if family == "wan22" else 1), built.graph
    result = run_graph(pod, with_test_encoders(built.graph, spec))
    for nid in stacks:  # every key of each LoRA landed on its model
        lines = node_text(result, nid)  # in auto mode (the builder's default) the decision comes first
        matched, total = keys_of(next(line for line in lines if " keys" in line))
        assert total >= 10 and matched == total, lines
    (output,) = result.files
    if template.startswith("wan"):  # a clip of the requested length and size
        frames = frames_of(output.data)
        assert len(frames) == params["length"] and frames[0].shape == (64, 64, 3)
    else:
        frames = [np.asarray(Image.open(io.BytesIO(output.data)).convert("RGB"))]
        assert frames[0].shape == (256, 256, 3)
    assert all(frame.std() > 1 for frame in frames)  # decoded content, not a blank (NaN) frame
