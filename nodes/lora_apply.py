"""Nodes that apply ``LORA`` handles to a MODEL and CLIP."""

from __future__ import annotations

from typing import Any

from .lora_handle import LORA_TYPE, LoraHandle

CATEGORY = "LoRA Bridge"
STRENGTH = {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}


class ApplyLora:
    """Apply one LoRA with separate model and CLIP strengths (ComfyUI's own weight math)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model the LoRA is applied to."}),
                "lora": (LORA_TYPE, {"tooltip": "A LoRA from Load LoRA File or Fetch LoRA."}),
                "strength_model": ("FLOAT", {**STRENGTH, "tooltip": "How strongly to modify the diffusion model; may be negative."}),
                "strength_clip": ("FLOAT", {**STRENGTH, "tooltip": "How strongly to modify the text encoder; may be negative."}),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "The text encoder the LoRA is applied to (optional)."}),
            },
        }

    RETURN_TYPES = ("MODEL", "CLIP")
    OUTPUT_TOOLTIPS = ("The model with the LoRA.", "The text encoder with the LoRA (None when no CLIP was given).")
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = "Applies a LoRA to a model and optionally its text encoder."

    def apply(self, model: Any, lora: LoraHandle, strength_model: float, strength_clip: float, clip: Any = None) -> tuple[Any, Any]:
        import comfy.sd
        import comfy.utils

        if strength_model == 0 and strength_clip == 0:
            return (model, clip)
        state_dict = comfy.utils.load_torch_file(str(lora.path), safe_load=True)
        new_model, new_clip = comfy.sd.load_lora_for_models(model, clip, state_dict, strength_model, strength_clip)
        return (new_model, new_clip)


NODE_CLASS_MAPPINGS = {"LoraBridgeApply": ApplyLora}
NODE_DISPLAY_NAME_MAPPINGS = {"LoraBridgeApply": "Apply LoRA (Bridge)"}
