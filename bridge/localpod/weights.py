"""Deterministic random-weight models and LoRAs for tests, benchmarks and the demo.

SD1.x checkpoints (``sd15_layout``) and transformer diffusion models (``dit_layout``: Flux.1,
Wan 2.1), each with LoRAs in the key layouts the trainers publish.

No model can be downloaded here, so we make our own: numpy + safetensors only (no torch).
Norm weights are 1 and biases 0, everything else N(0, 0.02): zeroed GroupNorm weights give
an all-zero UNet output and careless init gives NaN (black) images.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from safetensors.numpy import save_file

from .dit_layout import DitSpec, dit_layers
from .sd15_layout import (
    FULL_UNET,
    TINY_UNET,
    Layer,
    UNetSpec,
    checkpoint_layers,
    clip_layers,
    unet_layers,
)

LoraLayout = Literal["kohya", "peft", "loha"]
# transformer LoRA layouts: kohya / musubi-tuner ("lora_unet_double_blocks_0_img_attn_qkv"), ComfyUI's own
# and diffusion-pipe's ("diffusion_model.<module>.lora_A"), diffusers / PEFT / ai-toolkit ("transformer.<diffusers
# module>"), DiffSynth-Studio (PEFT's adapter named "default", no prefix: "transformer_blocks.0.attn.to_q.lora_A.default"),
# and ai-toolkit's for Z-Image (diffusers module names under "diffusion_model.")
DitLoraLayout = Literal["kohya", "diffusion_model", "diffusers", "diffsynth", "ai_toolkit"]


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None) -> Path:
    """Save via a temporary name, with the JSON header's keys sorted so equal inputs give equal bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "r+b") as f:  # safetensors writes metadata in hash-map order
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode().ljust(size)
        if len(canonical) == size:
            f.seek(8)
            f.write(canonical)
    os.replace(tmp, path)
    return path


def checkpoint_tensors(spec: UNetSpec = TINY_UNET, seed: int = 0, dtype: type = np.float16) -> dict[str, np.ndarray]:
    """All tensors of an SD1.x checkpoint with random weights."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for prefix, layer in checkpoint_layers(spec):
        key = prefix + layer.name
        if layer.norm:
            out[key + ".weight"] = np.ones(layer.shape, dtype=dtype)
        else:
            out[key + ".weight"] = (rng.standard_normal(layer.shape, dtype=np.float32) * 0.02).astype(dtype)
        if layer.bias:
            out[key + ".bias"] = np.zeros(layer.shape[:1], dtype=dtype)
    return out


def write_checkpoint(path: Path, size: Literal["tiny", "full"] = "tiny", seed: int = 0) -> Path:
    """Write an fp16 SD1.5-layout checkpoint (tiny: ~233 M params, full: ~1.07 B) and return its path."""
    spec = TINY_UNET if size == "tiny" else FULL_UNET
    return write_safetensors(Path(path), checkpoint_tensors(spec, seed), {"format": "pt"})


@dataclass(frozen=True)
class LoraSpec:
    """What LoRA to generate for an SD1.x checkpoint of the given UNet size."""

    layout: LoraLayout = "kohya"
    rank: int = 8
    alpha: float | None = None  # None: alpha = rank (kohya) / no alpha key (PEFT)
    seed: int = 1
    unet: UNetSpec = TINY_UNET
    text_encoder: bool = True
    scale: float = 0.1  # standard deviation of the factors; delta ~ rank**0.5 * scale**2
    trigger: str = "ohwx"
    output_name: str = "demo_lora"
    extra_tags: dict[str, int] = field(default_factory=lambda: {"portrait": 7, "smiling": 3})


def _targets(spec: LoraSpec) -> list[tuple[str, Layer]]:
    layers = [("unet", layer) for layer in unet_layers(spec.unet) if layer.diffusers_name]
    if spec.text_encoder:
        layers += [("te", layer) for layer in clip_layers() if layer.diffusers_name]
    return layers


def _key(layout: LoraLayout, part: str, layer: Layer) -> str:
    assert layer.diffusers_name
    if layout == "peft":
        return ("unet." if part == "unet" else "text_encoder.") + layer.diffusers_name
    return ("lora_unet_" if part == "unet" else "lora_te_") + layer.diffusers_name.replace(".", "_")


def lora_tensors(spec: LoraSpec) -> dict[str, np.ndarray]:
    """The LoRA's tensors (float16 factors, float32 alphas) in the requested layout."""
    rng = np.random.default_rng(spec.seed)
    r = spec.rank
    alpha = float(spec.alpha if spec.alpha is not None else r)
    out: dict[str, np.ndarray] = {}

    # LoHa's delta is a Hadamard product of two low-rank products: pick its factors' scale so
    # the delta has the same magnitude as a LoRA's (rank**0.5 * scale**2).
    std = (spec.scale**2 / r**0.5) ** 0.25 if spec.layout == "loha" else spec.scale

    def factor(shape: tuple[int, ...]) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float16)

    for part, layer in _targets(spec):
        key = _key(spec.layout, part, layer)
        out_dim, in_dim = layer.shape[0], layer.shape[1]
        conv = layer.shape[2:]  # (1, 1) for SD1.5's conv proj_in/proj_out, () for linear layers
        if spec.layout == "loha":
            if conv:
                continue  # LoHa here targets linear layers only
            out[f"{key}.hada_w1_a"] = factor((out_dim, r))
            out[f"{key}.hada_w1_b"] = factor((r, in_dim))
            out[f"{key}.hada_w2_a"] = factor((out_dim, r))
            out[f"{key}.hada_w2_b"] = factor((r, in_dim))
            out[f"{key}.alpha"] = np.array(alpha, dtype=np.float32)
        elif spec.layout == "peft":
            out[f"{key}.lora_A.weight"] = factor((r, in_dim, *conv))
            out[f"{key}.lora_B.weight"] = factor((out_dim, r, *conv))
            if spec.alpha is not None:
                out[f"{key}.alpha"] = np.array(alpha, dtype=np.float32)
        else:
            out[f"{key}.lora_down.weight"] = factor((r, in_dim, *conv))
            out[f"{key}.lora_up.weight"] = factor((out_dim, r, *conv))
            out[f"{key}.alpha"] = np.array(alpha, dtype=np.float32)
    return out


def lora_metadata(spec: LoraSpec) -> dict[str, str]:
    """kohya-style ``ss_*`` metadata (base model, rank, alpha, tag frequencies) plus modelspec."""
    tags = {spec.trigger: 12, **spec.extra_tags}
    module = "lycoris.kohya" if spec.layout == "loha" else "networks.lora"
    return {
        "ss_base_model_version": "sd_v1",
        "ss_network_module": module,
        "ss_network_dim": str(spec.rank),
        "ss_network_alpha": str(spec.alpha if spec.alpha is not None else spec.rank),
        "ss_output_name": spec.output_name,
        "ss_tag_frequency": json.dumps({f"10_{spec.trigger}": tags}),
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.title": spec.output_name,
    }


def write_lora(path: Path, spec: LoraSpec = LoraSpec()) -> Path:
    """Write a LoRA for the SD1.x checkpoint of ``spec.unet`` and return its path."""
    return write_safetensors(Path(path), lora_tensors(spec), lora_metadata(spec))


def dit_tensors(spec: DitSpec, seed: int = 0, dtype: type = np.float16) -> dict[str, np.ndarray]:
    """All tensors of a transformer diffusion model (``spec``) with random weights."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for layer in dit_layers(spec):
        if layer.norm:
            out[f"{layer.name}.{layer.scale_key}"] = np.ones(layer.shape, dtype=dtype)
            if layer.bias:
                out[f"{layer.name}.bias"] = np.zeros(layer.shape, dtype=dtype)
            continue
        weights = (rng.standard_normal(layer.shape, dtype=np.float32) * 0.02).astype(dtype)
        out[layer.name if layer.raw else f"{layer.name}.weight"] = weights
        if layer.bias and not layer.raw:
            out[f"{layer.name}.bias"] = np.zeros(layer.shape[:1], dtype=dtype)
    return out


@dataclass(frozen=True)
class DitLoraSpec:
    """What LoRA to generate for a transformer model."""

    model: DitSpec
    layout: DitLoraLayout = "kohya"
    rank: int = 4
    seed: int = 1
    scale: float = 0.05  # standard deviation of the factors
    trigger: str = "ohwx"


def dit_lora_tensors(spec: DitLoraSpec) -> dict[str, np.ndarray]:
    """A LoRA on every targetable linear layer of ``spec.model``, in ``spec.layout``."""
    rng = np.random.default_rng(spec.seed)
    r, out = spec.rank, {}

    def pair(key: str, out_dim: int, in_dim: int, down: str, up: str) -> None:
        out[f"{key}.{down}"] = (rng.standard_normal((r, in_dim), dtype=np.float32) * spec.scale).astype(np.float16)
        out[f"{key}.{up}"] = (rng.standard_normal((out_dim, r), dtype=np.float32) * spec.scale).astype(np.float16)
        if spec.layout == "kohya":  # PEFT files carry no alpha (scale 1, the same as alpha = rank)
            out[f"{key}.alpha"] = np.array(float(r), dtype=np.float32)

    for layer in dit_layers(spec.model):
        if not layer.diffusers:
            continue
        out_dim, in_dim = layer.shape
        if spec.layout == "kohya":
            pair("lora_unet_" + layer.name.replace(".", "_"), out_dim, in_dim, "lora_down.weight", "lora_up.weight")
        elif spec.layout == "diffusion_model":
            pair(f"diffusion_model.{layer.name}", out_dim, in_dim, "lora_A.weight", "lora_B.weight")
        elif spec.layout in ("diffusers", "ai_toolkit"):
            prefix = "transformer." if spec.layout == "diffusers" else "diffusion_model."
            for part in layer.diffusers:
                pair(f"{prefix}{part.name}", part.size or out_dim, in_dim, "lora_A.weight", "lora_B.weight")
        else:
            for part in layer.diffusers:
                pair(part.name, part.size or out_dim, in_dim, "lora_A.default.weight", "lora_B.default.weight")
    return out


def dit_lora_metadata(spec: DitLoraSpec) -> dict[str, str]:
    """Trainer-style metadata: the base architecture and a trigger word."""
    arch = {"flux": "flux-1-dev/lora", "wan": "wan_2.1_t2v_1.3B/lora", "qwen_image": "qwen-image/lora",
            "lumina2": "z-image-turbo/lora"}[spec.model.family]
    return {"modelspec.architecture": arch, "modelspec.title": f"{spec.model.family}-{spec.layout}",
            "ss_tag_frequency": json.dumps({f"10_{spec.trigger}": {spec.trigger: 12}}),
            "ss_network_dim": str(spec.rank), "ss_network_alpha": str(spec.rank)}


def cached_dit_model(spec: DitSpec, seed: int = 0) -> Path:
    """The diffusion-model file of ``dit_tensors(spec)``, generated once into the local cache folder."""
    digest = hashlib.sha256(repr((spec, seed)).encode()).hexdigest()[:12]
    return _cached(f"{spec.family}-{spec.width}x{spec.blocks}-{digest}.safetensors",
                   lambda p: write_safetensors(p, dit_tensors(spec, seed), {"format": "pt"}))


def cached_dit_lora(spec: DitLoraSpec) -> Path:
    """The LoRA of ``dit_lora_tensors(spec)``, generated once into the local cache folder."""
    digest = hashlib.sha256(repr(spec).encode()).hexdigest()[:12]
    return _cached(f"lora-{spec.model.family}-{spec.layout}-{digest}.safetensors",
                   lambda p: write_safetensors(p, dit_lora_tensors(spec), dit_lora_metadata(spec)))


def _cached(name: str, write: Callable[[Path], Path]) -> Path:
    from ..settings import cache_root

    path = cache_root() / "weights" / name
    if not path.exists():
        write(path)
    return path


def cached_checkpoint(size: Literal["tiny", "full"] = "tiny", seed: int = 0) -> Path:
    """The checkpoint of ``write_checkpoint``, generated once into the local cache folder."""
    return _cached(f"sd15-{size}-seed{seed}.safetensors", lambda p: write_checkpoint(p, size, seed))


def cached_lora(spec: LoraSpec = LoraSpec()) -> Path:
    """The LoRA of ``write_lora(spec)``, generated once into the local cache folder."""
    digest = hashlib.sha256(repr(spec).encode()).hexdigest()[:12]
    return _cached(f"lora-{spec.layout}-r{spec.rank}-{digest}.safetensors", lambda p: write_lora(p, spec))
