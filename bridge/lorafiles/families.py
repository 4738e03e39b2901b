"""Base-model family of a LoRA, from its tensor names and shapes (metadata only as a hint).

Families: ``sd15`` (SD1.x), ``sd2``, ``sdxl``, ``sd3``, ``flux``, ``qwen_image``, ``wan``
(Wan 2.x), ``hunyuan_video``, ``lumina2`` (Z-Image / Lumina 2) and ``unknown`` when the keys
do not say so clearly. Rules follow the key layouts that kohya/musubi, diffusers/PEFT,
LyCORIS and ComfyUI itself write for each model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

UNKNOWN = "unknown"
FAMILY_NAMES = {
    "sd15": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "sd3": "SD3", "flux": "Flux",
    "qwen_image": "Qwen-Image", "wan": "Wan 2.x", "hunyuan_video": "HunyuanVideo",
    "lumina2": "Z-Image/Lumina2", UNKNOWN: "unknown",
}
UNET_FAMILIES = {"sd15", "sd2", "sdxl"}
# the base-model names of the character studio (seed 004) -> our families; the first of a family names it back
BASE_MODEL_ALIASES = {"z-image-turbo": "lumina2", "flux": "flux", "qwen-image": "qwen_image",
                      "one-2.1": "wan", "wan-2.1": "wan", "one-2.2": "wan", "wan-2.2": "wan"}

# ComfyUI model classes (comfy.supported_models) -> family
COMFY_MODEL_FAMILIES = {
    "SD15": "sd15", "SD15_instructpix2pix": "sd15", "SD20": "sd2", "SD21UnclipL": "sd2",
    "SD21UnclipH": "sd2", "SDXL": "sdxl", "SDXLRefiner": "sdxl", "SDXL_instructpix2pix": "sdxl",
    "SSD1B": "sdxl", "Segmind_Vega": "sdxl", "KOALA_700M": "sdxl", "KOALA_1B": "sdxl",
    "SD3": "sd3", "Flux": "flux", "FluxInpaint": "flux", "FluxSchnell": "flux",
    "QwenImage": "qwen_image", "Lumina2": "lumina2", "ZImage": "lumina2",
    "HunyuanVideo": "hunyuan_video", "HunyuanVideoI2V": "hunyuan_video", "HunyuanVideoSkyreelsI2V": "hunyuan_video",
    "WAN21_T2V": "wan", "WAN21_I2V": "wan", "WAN21_FunControl2V": "wan", "WAN21_Camera": "wan",
    "WAN22_Camera": "wan", "WAN21_Vace": "wan", "WAN21_HuMo": "wan", "WAN22_S2V": "wan",
    "WAN22_Animate": "wan", "WAN22_T2V": "wan",
}

_MODEL_PREFIXES = (
    "lora_unet_", "lora_transformer_", "lycoris_", "lora_prior_unet_", "model.diffusion_model.",
    "diffusion_model.", "base_model.model.", "unet.", "transformer.",
)
_TE_PREFIXES = {
    "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2", "lora_te3_": "text_encoder_3",
    "lora_te_": "text_encoder", "lora_prior_te_": "text_encoder", "text_encoder.": "text_encoder",
    "text_encoder_2.": "text_encoder_2", "text_encoder_3.": "text_encoder_3",
    "text_encoders.clip_l.": "text_encoder", "text_encoders.clip_g.": "text_encoder_2",
    "text_encoders.t5xxl.": "text_encoder_3",
}
# suffixes that name a LoRA factor / parameter, longest first
SUFFIXES = tuple(sorted((
    ".lora_down.weight", ".lora_up.weight", ".lora_mid.weight", ".lora_A.default.weight", ".lora_B.default.weight",
    ".lora_A.weight", ".lora_B.weight", ".lora_A", ".lora_B", ".lora.down.weight", ".lora.up.weight",
    "_lora.down.weight", "_lora.up.weight", ".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight",
    ".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".hada_t1", ".hada_t2",
    ".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2_a", ".lokr_w2_b", ".lokr_t2",
    ".oft_blocks", ".oft_diag", ".rescale", ".a1.weight", ".a2.weight", ".b1.weight", ".b2.weight",
    ".alpha", ".dora_scale", ".diff", ".diff_b", ".w_norm", ".b_norm", ".set_weight",
), key=len, reverse=True))
# factors whose shape[1] is the layer's input width
_DOWN_SUFFIXES = (".lora_down.weight", ".lora_A.weight", ".lora_A.default.weight", ".lora_A", ".lora.down.weight",
                  "_lora.down.weight", ".lora_linear_layer.down.weight", ".hada_w1_b")


def split_key(key: str) -> tuple[str, str]:
    """``(module, suffix)`` of a LoRA tensor name; suffix is '' when unrecognised."""
    for suffix in SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    return key, ""


def part_of(module: str) -> tuple[str, str]:
    """``(part, path)``: which model part a module belongs to and its path with '_' separators."""
    for prefix, part in _TE_PREFIXES.items():
        if module.startswith(prefix):
            return part, module[len(prefix):].replace(".", "_")
    for prefix in _MODEL_PREFIXES:
        if module.startswith(prefix):
            return "model", module[len(prefix):].replace(".", "_")
    return "model", module.replace(".", "_")


@dataclass(frozen=True)
class Detection:
    family: str
    source: str  # "keys", "metadata" or "none"
    evidence: str
    warning: str | None = None
    variant: str | None = None  # the model size a LoRA cannot cross (Wan 1.3B/14B/2.2 5B, Flux.1/Flux.2)


# model width -> variant, for families whose sizes share key names but not shapes
WAN_VARIANTS = {1536: "1.3B", 5120: "14B", 3072: "2.2 5B"}
FLUX_VARIANTS = {3072: "Flux.1", 6144: "Flux.2"}
VARIANTS = (*WAN_VARIANTS.values(), *FLUX_VARIANTS.values())
_WAN_Q = re.compile(r"^blocks_\d+_(self_attn_q|attn1_to_q)$")
_FLUX_QKV = re.compile(r"^(double_blocks_\d+_img_attn_qkv|transformer_blocks_\d+_attn_to_q)$")


def variant_of(family: str, in_dims: Mapping[str, int]) -> str | None:
    """The variant of a ``family`` LoRA from its layers' input widths (None: not decisive)."""
    pattern, table = {"wan": (_WAN_Q, WAN_VARIANTS), "flux": (_FLUX_QKV, FLUX_VARIANTS)}.get(family, (None, {}))
    widths = {w for p, w in in_dims.items() if pattern and pattern.match(p)}
    return table.get(widths.pop()) if len(widths) == 1 else None


def config_variant(family: str, unet_config: Mapping[str, Any]) -> str | None:
    """The variant of a ComfyUI model from its ``unet_config`` (the widths ``variant_of`` reads in LoRAs)."""
    if family == "wan":
        return WAN_VARIANTS.get(unet_config.get("dim"))  # type: ignore[arg-type]
    if family == "flux":
        return "Flux.2" if unet_config.get("image_model") == "flux2" else FLUX_VARIANTS.get(unet_config.get("hidden_size"))  # type: ignore[arg-type]
    return None


def made_for_another(lora_family: str, lora_variant: str | None, model_family: str, model_variant: str | None) -> bool:
    """Whether a LoRA was made for another base model than this one (unknown families and variants never count)."""
    if UNKNOWN in (lora_family, model_family):
        return False
    if lora_family != model_family:
        return True
    return None not in (lora_variant, model_variant) and lora_variant != model_variant


def variant_name(family: str, variant: str | None) -> str:
    """``"Wan 2.x 14B"``, ``"Flux.1"``: the family's name with its variant, when known."""
    if family == "flux" and variant:
        return variant
    return f"{FAMILY_NAMES.get(family, family)} {variant}" if variant else FAMILY_NAMES.get(family, family)


_SD_UNET = re.compile(r"^(down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block)_")
_ATTN2_KV = re.compile(r"attn2_to_[kv]$")
_DOUBLE = re.compile(r"^double_blocks_(\d+)_")
_SINGLE = re.compile(r"^single_blocks_(\d+)_")
_DIFF_DOUBLE = re.compile(r"^transformer_blocks_(\d+)_")
_DIFF_SINGLE = re.compile(r"^single_transformer_blocks_(\d+)_")
_QWEN = re.compile(r"^transformer_blocks_\d+_(img_mlp|txt_mlp|img_mod|txt_mod)")
_WAN = re.compile(r"^blocks_\d+_(self_attn|cross_attn|ffn|attn1|attn2)_")
_LUMINA = re.compile(r"^(layers_\d+_(attention|feed_forward|adaLN_modulation)|noise_refiner_|context_refiner_)")
_HUNYUAN = re.compile(r"(img_mlp_fc[12]|txt_mlp_fc[12]|img_mod_linear|txt_mod_linear|modulation_linear|individual_token_refiner|token_refiner)")


def _max_index(paths: list[str], pattern: re.Pattern[str]) -> int:
    return max((int(m.group(1)) for p in paths if (m := pattern.match(p))), default=-1)


def _sd_unet_family(paths: list[str], in_dims: dict[str, int], te_widths: dict[str, int]) -> tuple[str | None, str]:
    ctx = {in_dims[p] for p in paths if _ATTN2_KV.search(p) and p in in_dims}
    if len(ctx) == 1:
        dim = ctx.pop()
        family = {768: "sd15", 1024: "sd2", 2048: "sdxl", 1280: "sdxl"}.get(dim)
        if family:
            return family, f"cross-attention context width {dim}"
    if "text_encoder_2" in te_widths:
        return "sdxl", "two text encoders"
    if te_widths.get("text_encoder") in (768, 1024):
        width = te_widths["text_encoder"]
        return ("sd15" if width == 768 else "sd2"), f"one text encoder of width {width}"
    return None, "UNet keys without a decisive width"


def detect_family(
    shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str] | None = None
) -> Detection:
    """Detect the base-model family from tensor names and shapes; metadata breaks ties only."""
    model_paths: list[str] = []
    in_dims: dict[str, int] = {}
    te_widths: dict[str, int] = {}
    for key, shape in shapes.items():
        module, suffix = split_key(key)
        part, path = part_of(module)
        if part == "model":
            model_paths.append(path)
            if suffix in _DOWN_SUFFIXES and len(shape) >= 2:
                in_dims[path] = shape[1]
        elif suffix in _DOWN_SUFFIXES and len(shape) >= 2 and re.search(r"self_attn_q_proj$", path):
            te_widths[part] = shape[1]
        else:
            te_widths.setdefault(part, 0)
    family, evidence = _family_from_keys(model_paths, in_dims, te_widths)
    hint = metadata_family(metadata or {})
    if family:
        warning = None
        if hint and hint != family:
            warning = f"metadata says {FAMILY_NAMES[hint]} but the keys are {FAMILY_NAMES[family]}"
        return Detection(family, "keys", evidence, warning, variant_of(family, in_dims))
    if hint:
        return Detection(hint, "metadata", f"keys undecided ({evidence}); metadata names {FAMILY_NAMES[hint]}")
    return Detection(UNKNOWN, "none", evidence)


def _family_from_keys(paths: list[str], in_dims: dict[str, int], te_widths: dict[str, int]) -> tuple[str | None, str]:
    if not paths:
        if te_widths:
            return _sd_unet_family([], in_dims, te_widths)
        return None, "no model keys"
    if any(_SD_UNET.match(p) for p in paths):
        return _sd_unet_family(paths, in_dims, te_widths)
    if any(p.startswith("joint_blocks_") for p in paths):
        return "sd3", "MMDiT joint_blocks"
    if any(_QWEN.match(p) for p in paths):
        return "qwen_image", "transformer_blocks with img_mlp/txt_mlp"
    if any(_WAN.match(p) for p in paths):
        return "wan", "blocks with self_attn/cross_attn/ffn"
    if any(_LUMINA.match(p) for p in paths):
        return "lumina2", "NextDiT layers with attention/feed_forward"
    double, single = _max_index(paths, _DOUBLE), _max_index(paths, _SINGLE)
    if double >= 0 or single >= 0:
        if any(_HUNYUAN.search(p) for p in paths) or double >= 19 or single >= 38:
            return "hunyuan_video", "double/single blocks in HunyuanVideo's naming or count"
        return "flux", "double_blocks/single_blocks in Flux's naming"
    d_double, d_single = _max_index(paths, _DIFF_DOUBLE), _max_index(paths, _DIFF_SINGLE)
    if d_single >= 0:
        if any(_HUNYUAN.search(p) for p in paths) or d_double >= 19 or d_single >= 38:
            return "hunyuan_video", "diffusers transformer blocks in HunyuanVideo's count"
        return "flux", "diffusers single_transformer_blocks"
    if d_double >= 0:
        widths = {in_dims[p] for p in paths if p in in_dims and re.search(r"attn_(to_q|add_q_proj)$", p)}
        if widths & {1536, 2432}:
            return "sd3", f"diffusers joint attention of width {sorted(widths)[0]}"
        if widths == {3072}:
            return "flux", "diffusers double blocks of width 3072"
    return None, "no known key layout"


_META_RULES = (
    ("sdxl", "sdxl"), ("stable-diffusion-xl", "sdxl"), ("sd_v2", "sd2"), ("stable-diffusion-v2", "sd2"),
    ("sd_v1", "sd15"), ("stable-diffusion-v1", "sd15"), ("stable-diffusion-3", "sd3"), ("sd3", "sd3"),
    ("flux", "flux"), ("qwen-image", "qwen_image"), ("qwen_image", "qwen_image"), ("wan", "wan"),
    ("hunyuan-video", "hunyuan_video"), ("hunyuan_video", "hunyuan_video"), ("lumina", "lumina2"),
    ("z-image", "lumina2"), ("z_image", "lumina2"),
)


def metadata_family(metadata: Mapping[str, str]) -> str | None:
    """The family that ``modelspec.architecture`` or ``ss_base_model_version`` declares, if any."""
    for field in ("modelspec.architecture", "ss_base_model_version"):
        value = metadata.get(field, "").lower()
        for needle, family in _META_RULES:
            if needle in value:
                return family
    return None
