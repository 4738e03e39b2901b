"""LoRA key names that ComfyUI's own key map lacks, mapped onto the model's weights.

Format conversion only (no weights touched): ``comfy.lora.model_lora_keys_unet`` maps most
trainers' names; this adds the ones it drops, so those keys are applied instead of logged as
``lora key not loaded``:

- SD1.x/SD2.x/SDXL in diffusers/PEFT naming (``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``):
  ComfyUI knows only the old attention-processor form (``…attn1.processor.to_q``);
- Wan 2.x in diffusers naming (``transformer.blocks.0.attn1.to_q``, ``condition_embedder.…``,
  ``proj_out``): ComfyUI has no diffusers map for Wan at all;
- Flux in DiffSynth-Studio's naming (diffusers module names without a prefix,
  ``transformer_blocks.0.attn.to_q.lora_A.default.weight``): ComfyUI 0.3.x maps only the
  ``transformer.``-prefixed form (current ComfyUI maps both);
- Z-Image in diffusers and DiffSynth naming (``transformer.layers.0.attention.to_q``, or no
  prefix): ComfyUI 0.3.x maps only the ``diffusion_model.``-prefixed form.

ComfyUI's own entries always win; these only fill gaps.
"""

from __future__ import annotations

import re
from typing import Any

from ..bridge.lorafiles.families import COMFY_MODEL_FAMILIES, UNET_FAMILIES

# Wan's module names -> diffusers' (WanTransformer3DModel)
_WAN_BLOCK = (
    (r"self_attn\.q", "attn1.to_q"), (r"self_attn\.k", "attn1.to_k"), (r"self_attn\.v", "attn1.to_v"),
    (r"self_attn\.o", "attn1.to_out.0"), (r"cross_attn\.q", "attn2.to_q"), (r"cross_attn\.k", "attn2.to_k"),
    (r"cross_attn\.v", "attn2.to_v"), (r"cross_attn\.o", "attn2.to_out.0"), (r"cross_attn\.k_img", "attn2.add_k_proj"),
    (r"cross_attn\.v_img", "attn2.add_v_proj"), (r"ffn\.0", "ffn.net.0.proj"), (r"ffn\.2", "ffn.net.2"),
)
_WAN_TOP = {
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "head.head": "proj_out",
}
_WAN_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")


def _comfy_utils() -> Any:
    import comfy.utils

    return comfy.utils


def _family(model: Any) -> str:
    return COMFY_MODEL_FAMILIES.get(type(model.model_config).__name__, "unknown")


def _wan_diffusers_name(module: str) -> str | None:
    if module in _WAN_TOP:
        return _WAN_TOP[module]
    match = _WAN_BLOCK_KEY.fullmatch(module)
    if match:
        for ours, theirs in _WAN_BLOCK:
            if re.fullmatch(ours, match.group(2)):
                return f"blocks.{match.group(1)}.{theirs}"
    return None


def _add_names(key_map: dict[str, Any], name: str, target: str) -> None:
    for key in (name, f"transformer.{name}", "lora_transformer_" + name.replace(".", "_")):
        key_map.setdefault(key, target)


def extra_unet_keys(model: Any, key_map: dict[str, Any]) -> dict[str, Any]:
    """``key_map`` (LoRA key -> model weight) with the names ComfyUI lacks for ``model`` (a BaseModel) added."""
    family = _family(model)
    if family in UNET_FAMILIES:
        for diffusers_key, ldm_key in _comfy_utils().unet_to_diffusers(model.model_config.unet_config).items():
            if diffusers_key.endswith(".weight"):
                for prefix in ("", "unet."):
                    key_map.setdefault(prefix + diffusers_key[: -len(".weight")], f"diffusion_model.{ldm_key}")
    elif family == "flux":
        for diffusers_key, target in _comfy_utils().flux_to_diffusers(model.model_config.unet_config,
                                                                     output_prefix="diffusion_model.").items():
            if diffusers_key.endswith(".weight"):
                key_map.setdefault(diffusers_key[: -len(".weight")], target)
    elif family == "lumina2" and hasattr(_comfy_utils(), "z_image_to_diffusers"):
        for diffusers_key, target in _comfy_utils().z_image_to_diffusers(model.model_config.unet_config,
                                                                        output_prefix="diffusion_model.").items():
            if diffusers_key.endswith(".weight"):
                for prefix in ("", "transformer."):
                    key_map.setdefault(prefix + diffusers_key[: -len(".weight")], target)
    elif family == "wan":
        for key in model.state_dict():
            if key.startswith("diffusion_model.") and key.endswith(".weight"):
                name = _wan_diffusers_name(key[len("diffusion_model."): -len(".weight")])
                if name is not None:
                    _add_names(key_map, name, key)
    return key_map
