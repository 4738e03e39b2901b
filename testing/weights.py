"""Deterministic random-weight models and LoRAs for tests, benchmarks and the demo.

SD1.x and SDXL checkpoints (``unet_layout``) and transformer diffusion models (``dit_layout``:
Flux.1, Wan 2.1/2.2, Qwen-Image, Z-Image), each with LoRAs in the key layouts the trainers publish,
and the VAEs and CLIP vision model their templates load (``vae_layout``, ``unet_layout``).

No model can be downloaded here, so we make our own: numpy + safetensors only (no torch).
Norm weights are 1 and biases 0, everything else N(0, 0.02): zeroed GroupNorm weights give
an all-zero UNet output and careless init gives NaN (black) images. The random numbers come
from a ``Draw``: numpy's by default; the GPU check (``benchmarks/gpu/``) passes one that draws
full-size models on the GPU through the same layouts.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence

import numpy as np
from safetensors.numpy import save_file

from .dit_layout import DitSpec, dit_layers
from .layer import Layer
from .unet_layout import (
    CLIP_G,
    CLIP_L,
    FULL_UNET,
    SDXL_UNET,
    TINY_UNET,
    UNetLayer,
    UNetSpec,
    checkpoint_layers,
    clip_layers,
    clip_vision_layers,
    unet_layers,
)
from .vae_layout import kl_vae_layers, wan21_vae_layers

# UNet LoRA layouts: kohya's sd-scripts ("lora_unet_…" with diffusers module names on SD1.x, the
# LDM/SGM names on SDXL; "lora_te_", or "lora_te1_"/"lora_te2_" on SDXL), kohya LoCon (the same
# plus the res blocks' convs), diffusers/PEFT ("unet.…lora_A", "text_encoder(_2).…") and LyCORIS LoHa
LoraLayout = Literal["kohya", "locon", "peft", "loha"]
# transformer LoRA layouts: kohya / musubi-tuner ("lora_unet_double_blocks_0_img_attn_qkv"), ComfyUI's own
# and diffusion-pipe's ("diffusion_model.<module>.lora_A"), diffusers / PEFT / ai-toolkit ("transformer.<diffusers
# module>"), DiffSynth-Studio (PEFT's adapter named "default", no prefix: "transformer_blocks.0.attn.to_q.lora_A.default"),
# ai-toolkit's for Z-Image (diffusers module names under "diffusion_model."), and ComfyUI's own TrainLoraNode's
# (every module of the model: "diffusion_model.<module>.lora_up/lora_down", flattened convs, ".diff"/".diff_b" for
# norms and biases, no alpha)
DitLoraLayout = Literal["kohya", "diffusion_model", "diffusers", "diffsynth", "ai_toolkit", "comfyui"]


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


class Draw(Protocol):
    """Where generated tensors come from: ``normal`` is N(0, std²) in ``dtype`` (None: the model's dtype),
    ``constant`` fills with one value, ``scalar`` is a float32 0-d tensor (an alpha)."""

    def normal(self, shape: tuple[int, ...], std: float, dtype: str | None = None) -> Any: ...

    def constant(self, shape: tuple[int, ...], value: float) -> Any: ...

    def scalar(self, value: float) -> Any: ...


class NumpyDraw:
    """numpy's generator, seeded: the same seed gives the same bytes on every machine."""

    CHUNK = 1 << 20  # values drawn at a time: float32 scratch that stays in the cache, no model-sized temporaries

    def __init__(self, seed: int, dtype: str = "float16") -> None:
        self.rng = np.random.default_rng(seed)
        self.dtype = dtype
        self.scratch = np.empty(self.CHUNK, dtype=np.float32)

    def normal(self, shape: tuple[int, ...], std: float, dtype: str | None = None) -> np.ndarray:
        """Drawn in float32 a chunk at a time (the same values as one draw of the whole), scaled, then cast."""
        out = np.empty(shape, dtype=dtype or self.dtype)
        flat = out.reshape(-1)
        for start in range(0, flat.size, self.CHUNK):
            part = self.scratch[:min(self.CHUNK, flat.size - start)]
            self.rng.standard_normal(out=part, dtype=np.float32)
            part *= np.float32(std)
            flat[start:start + part.size] = part
        return out

    def constant(self, shape: tuple[int, ...], value: float) -> np.ndarray:
        return np.full(shape, value, dtype=self.dtype)

    def scalar(self, value: float) -> np.ndarray:
        return np.array(value, dtype=np.float32)


def _fill(out: dict[str, Any], draw: Draw, key: str, layer: Layer) -> None:
    """A layer's tensors: norm scales 1, biases 0, weights N(0, 0.02); a raw parameter of rank 1 is a bias."""
    if layer.raw:
        out[key] = draw.constant(layer.shape, 0.0) if len(layer.shape) == 1 else draw.normal(layer.shape, 0.02)
        return
    if layer.norm:
        out[f"{key}.{layer.scale_key}"] = draw.constant(layer.shape, 1.0)
    else:
        out[f"{key}.weight"] = draw.normal(layer.shape, 0.02)
    if layer.bias:
        out[f"{key}.bias"] = draw.constant(layer.shape[:1], 0.0)


def checkpoint_tensors(spec: UNetSpec = TINY_UNET, seed: int = 0, draw: Draw | None = None) -> dict[str, Any]:
    """All tensors of an SD1.x or SDXL checkpoint with random weights (fp16 numpy unless ``draw`` says otherwise)."""
    draw = draw or NumpyDraw(seed)
    out: dict[str, Any] = {}
    for prefix, layer in checkpoint_layers(spec):
        _fill(out, draw, prefix + layer.name, layer)
    return out


CHECKPOINTS = {"tiny": TINY_UNET, "full": FULL_UNET, "sdxl": SDXL_UNET}
CheckpointSize = Literal["tiny", "full", "sdxl"]


def write_checkpoint(path: Path, size: CheckpointSize = "tiny", seed: int = 0) -> Path:
    """Write an fp16 checkpoint (SD1.5 tiny: ~233 M params, full: ~1.07 B; SDXL: ~1.7 B) and return its path."""
    return write_safetensors(Path(path), checkpoint_tensors(CHECKPOINTS[size], seed), {"format": "pt"})


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


def _targets(spec: LoraSpec) -> list[tuple[str, UNetLayer]]:
    """``(key, layer)`` of every layer the LoRA covers, keys in the layout's naming."""
    sdxl, peft = spec.unet.sdxl, spec.layout == "peft"
    out = []
    for layer in unet_layers(spec.unet):
        if layer.diffusers_name and (spec.layout == "locon" or not layer.conv_block):
            name = layer.name if sdxl else layer.diffusers_name  # sd-scripts' SDXL UNet keeps the LDM names
            out.append(("unet." + layer.diffusers_name if peft else "lora_unet_" + name.replace(".", "_"), layer))
    if spec.text_encoder:
        encoders = [("text_encoder.", "lora_te1_", CLIP_L), ("text_encoder_2.", "lora_te2_", CLIP_G)] if sdxl \
            else [("text_encoder.", "lora_te_", CLIP_L)]
        for peft_prefix, kohya_prefix, clip in encoders:
            out += [(peft_prefix + layer.diffusers_name if peft else kohya_prefix + layer.diffusers_name.replace(".", "_"), layer)
                    for layer in clip_layers(clip) if layer.diffusers_name]
    return out


def lora_tensors(spec: LoraSpec, draw: Draw | None = None) -> dict[str, Any]:
    """The LoRA's tensors (float16 factors, float32 alphas) in the requested layout."""
    draw = draw or NumpyDraw(spec.seed)
    r = spec.rank
    alpha = float(spec.alpha if spec.alpha is not None else r)
    out: dict[str, Any] = {}

    # LoHa's delta is a Hadamard product of two low-rank products: pick its factors' scale so
    # the delta has the same magnitude as a LoRA's (rank**0.5 * scale**2).
    std = (spec.scale**2 / r**0.5) ** 0.25 if spec.layout == "loha" else spec.scale

    def factor(shape: tuple[int, ...]) -> Any:
        return draw.normal(shape, std, "float16")

    for key, layer in _targets(spec):
        out_dim, in_dim = layer.shape[0], layer.shape[1]
        kernel = layer.shape[2:]  # (k, k) for convs, () for linear layers
        if spec.layout == "loha":
            if kernel:
                continue  # LoHa here targets linear layers only
            out[f"{key}.hada_w1_a"] = factor((out_dim, r))
            out[f"{key}.hada_w1_b"] = factor((r, in_dim))
            out[f"{key}.hada_w2_a"] = factor((out_dim, r))
            out[f"{key}.hada_w2_b"] = factor((r, in_dim))
            out[f"{key}.alpha"] = draw.scalar(alpha)
        elif spec.layout == "peft":
            out[f"{key}.lora_A.weight"] = factor((r, in_dim, *kernel))
            out[f"{key}.lora_B.weight"] = factor((out_dim, r, *(1,) * len(kernel)))
            if spec.alpha is not None:
                out[f"{key}.alpha"] = draw.scalar(alpha)
        else:  # kohya / LoCon: a conv's down factor has the layer's kernel, its up factor is 1x1
            out[f"{key}.lora_down.weight"] = factor((r, in_dim, *kernel))
            out[f"{key}.lora_up.weight"] = factor((out_dim, r, *(1,) * len(kernel)))
            out[f"{key}.alpha"] = draw.scalar(alpha)
    return out


def lora_metadata(spec: LoraSpec) -> dict[str, str]:
    """kohya-style ``ss_*`` metadata (base model, rank, alpha, tag frequencies) plus modelspec."""
    tags = {spec.trigger: 12, **spec.extra_tags}
    module = "lycoris.kohya" if spec.layout == "loha" else "networks.lora"
    base, arch = ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base") if spec.unet.sdxl else ("sd_v1", "stable-diffusion-v1")
    meta = {
        "ss_base_model_version": base,
        "ss_network_module": module,
        "ss_network_dim": str(spec.rank),
        "ss_network_alpha": str(spec.alpha if spec.alpha is not None else spec.rank),
        "ss_output_name": spec.output_name,
        "ss_tag_frequency": json.dumps({f"10_{spec.trigger}": tags}),
        "modelspec.architecture": f"{arch}/lora",
        "modelspec.title": spec.output_name,
    }
    if spec.layout == "locon":
        meta["ss_network_args"] = json.dumps({"conv_dim": str(spec.rank), "conv_alpha": str(meta["ss_network_alpha"])})
    return meta


def write_lora(path: Path, spec: LoraSpec = LoraSpec()) -> Path:
    """Write a LoRA for the SD1.x / SDXL checkpoint of ``spec.unet`` and return its path."""
    return write_safetensors(Path(path), lora_tensors(spec), lora_metadata(spec))


def dit_tensors(spec: DitSpec, seed: int = 0, draw: Draw | None = None) -> dict[str, Any]:
    """All tensors of a transformer diffusion model (``spec``) with random weights (fp16 numpy unless ``draw``)."""
    draw = draw or NumpyDraw(seed)
    out: dict[str, Any] = {}
    for layer in dit_layers(spec):
        _fill(out, draw, layer.name, layer)
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


def dit_lora_tensors(spec: DitLoraSpec, draw: Draw | None = None) -> dict[str, Any]:
    """A LoRA on every targetable linear layer of ``spec.model``, in ``spec.layout`` (ComfyUI-trained:
    on every module)."""
    draw = draw or NumpyDraw(spec.seed)
    r, out = spec.rank, {}

    def small(shape: tuple[int, ...]) -> Any:  # a ".diff": the size of a rank-r delta's entries
        return draw.normal(shape, spec.scale**2 * r**0.5, "float16")

    def pair(key: str, out_dim: int, in_dim: int, down: str, up: str) -> None:
        out[f"{key}.{down}"] = draw.normal((r, in_dim), spec.scale, "float16")
        out[f"{key}.{up}"] = draw.normal((out_dim, r), spec.scale, "float16")
        if spec.layout == "kohya":  # PEFT files carry no alpha (scale 1, the same as alpha = rank)
            out[f"{key}.alpha"] = draw.scalar(float(r))

    for layer in dit_layers(spec.model):
        if spec.layout == "comfyui":
            if layer.raw or layer.scale_key != "weight":
                continue  # bare parameters and Flux's RMSNorm scales are no comfy.ops modules: not trained
            key = f"diffusion_model.{layer.name}"
            if layer.norm:
                out[f"{key}.diff"] = small(layer.shape)
            else:  # convs are trained as flattened (out, r) x (r, in * kernel) pairs
                pair(key, layer.shape[0], int(np.prod(layer.shape[1:])), "lora_down.weight", "lora_up.weight")
            if layer.bias:
                out[f"{key}.diff_b"] = small(layer.shape[:1])
            continue
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
    """Trainer-style metadata: the base architecture and a trigger word (ComfyUI's SaveLoRA writes none)."""
    wan = {1536: "wan_2.1_t2v_1.3B", 5120: "wan_2.1_t2v_14B", 3072: "wan_2.2_ti2v_5B"}.get(spec.model.width, "wan")
    arch = {"flux": "flux-1-dev/lora", "wan": f"{wan}/lora", "qwen_image": "qwen-image/lora",
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
                   lambda p: write_safetensors(p, dit_lora_tensors(spec),
                                               None if spec.layout == "comfyui" else dit_lora_metadata(spec)))


# what the shipped templates load beside the diffusion models: Flux.1's and Z-Image's ``ae.safetensors``,
# the Wan 2.1 VAE (Wan 2.1, Wan 2.2 A14B, Qwen-Image) and the CLIP vision model of Wan 2.1 I2V
AUX_MODELS: dict[str, Callable[[], Sequence[Layer]]] = {
    "flux_vae": lambda: kl_vae_layers(z=16, quant_convs=False),
    "wan21_vae": wan21_vae_layers,
    "clip_vision_h": clip_vision_layers,
}


def aux_tensors(name: str, draw: Draw) -> dict[str, Any]:
    """The tensors of ``AUX_MODELS[name]`` with random weights."""
    out: dict[str, Any] = {}
    for layer in AUX_MODELS[name]():
        _fill(out, draw, layer.name, layer)
    return out


def cached_aux_model(name: str, seed: int = 0) -> Path:
    """The file of ``AUX_MODELS[name]`` with random weights, generated once into the local cache folder."""
    layers = AUX_MODELS[name]()
    digest = hashlib.sha256(repr((layers, seed)).encode()).hexdigest()[:12]

    def write(path: Path) -> Path:
        return write_safetensors(path, aux_tensors(name, NumpyDraw(seed)), {"format": "pt"})

    return _cached(f"{name}-{digest}.safetensors", write)


def _cached(name: str, write: Callable[[Path], Path]) -> Path:
    from ..bridge.settings import cache_root

    path = cache_root() / "weights" / name
    if not path.exists():
        write(path)
    return path


def cached_checkpoint(size: CheckpointSize = "tiny", seed: int = 0) -> Path:
    """The checkpoint of ``write_checkpoint``, generated once into the local cache folder."""
    name = f"sd15-{size}" if size != "sdxl" else f"sdxl-{hashlib.sha256(repr(SDXL_UNET).encode()).hexdigest()[:12]}"
    return _cached(f"{name}-seed{seed}.safetensors", lambda p: write_checkpoint(p, size, seed))


def cached_lora(spec: LoraSpec = LoraSpec()) -> Path:
    """The LoRA of ``write_lora(spec)``, generated once into the local cache folder."""
    digest = hashlib.sha256(repr(spec).encode()).hexdigest()[:12]
    return _cached(f"lora-{spec.layout}-r{spec.rank}-{digest}.safetensors", lambda p: write_lora(p, spec))
