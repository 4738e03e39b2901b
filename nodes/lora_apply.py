"""Nodes that apply ``LORA`` handles to a MODEL and CLIP: one LoRA, or a stack from JSON."""

from __future__ import annotations

from typing import Any

from ..bridge.lorafiles.sources import redact_url
from ..bridge.pack_protocol import (
    APPLY_MODES,
    NODE_APPLY,
    NODE_APPLY_STACK,
    ON_MISMATCH,
    STACK_APPLY_MODES,
    STRENGTH_MAX,
    STRENGTH_MIN,
    STRENGTH_STEP,
    ProtocolError,
    parse_stack,
)
from . import apply_mode
from .lora_handle import LORA_TYPE, LoraHandle
from .lora_loading import apply_lora
from .pod_state import fetch_handle

CATEGORY = "LoRA Bridge"
STRENGTH = {"default": 1.0, "min": STRENGTH_MIN, "max": STRENGTH_MAX, "step": STRENGTH_STEP}
MISMATCH_TIP = ("What to do when the LoRA was made for another base model or none of its keys fit: "
                "error (stop with the reason), skip (go on without it), apply anyway.")
MODE_TIP = ("merge: patch the weights like ComfyUI's loader (bit-identical). hotswap: add the LoRA at run time "
            "without touching the weights, so switching LoRAs or strengths between jobs costs no re-patching.")
STACK_MODE_TIP = MODE_TIP + (" auto: hot-swap a stack the first time, merge it when it comes again (no per-step "
                             "cost while a pod repeats the same LoRAs).")
STACK_EXAMPLE = ('[{"source": "s3://bucket/character-42.safetensors", "sha256": "", "strength_model": 1.0, '
                 '"strength_clip": 1.0, "enabled": true}]')


def _result(model: Any, clip: Any, lines: list[str]) -> dict[str, Any]:
    return {"ui": {"lora_bridge": lines or ["no LoRA"]}, "result": (model, clip)}


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
                "on_mismatch": (list(ON_MISMATCH), {"default": "error", "tooltip": MISMATCH_TIP}),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "The text encoder the LoRA is applied to (optional)."}),
                "mode": (list(APPLY_MODES), {"default": "merge", "tooltip": MODE_TIP}),
            },
        }

    RETURN_TYPES = ("MODEL", "CLIP")
    OUTPUT_TOOLTIPS = ("The model with the LoRA.", "The text encoder with the LoRA (None when no CLIP was given).")
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = "Applies a LoRA; checks that it was made for this base model; keeps loaded LoRAs in memory."

    def apply(self, model: Any, lora: LoraHandle, strength_model: float, strength_clip: float,
              on_mismatch: str = "error", clip: Any = None, mode: str = "merge") -> dict[str, Any]:
        model, clip, report = apply_lora(model, clip, lora, strength_model, strength_clip, on_mismatch, mode)
        return _result(model, clip, [report.line()])


class ApplyLoraStack:
    """Fetch what is missing and apply several LoRAs in order: the node the bridge inserts."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model the LoRAs are applied to."}),
                "loras": ("STRING", {"multiline": True, "default": "[]", "tooltip": "JSON list, applied in order: " + STACK_EXAMPLE}),
                "on_mismatch": (list(ON_MISMATCH), {"default": "error", "tooltip": MISMATCH_TIP}),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "The text encoder the LoRAs are applied to (optional)."}),
                "mode": (list(STACK_APPLY_MODES), {"default": "merge", "tooltip": STACK_MODE_TIP}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("MODEL", "CLIP")
    OUTPUT_TOOLTIPS = ("The model with every LoRA.", "The text encoder with every LoRA.")
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = "Applies a list of LoRAs (sources or names, optional SHA-256, strengths), fetching what is missing."

    @classmethod
    def VALIDATE_INPUTS(cls, loras: str) -> bool | str:
        try:
            parse_stack(loras)
        except ProtocolError as exc:
            return str(exc)
        return True

    @classmethod
    def IS_CHANGED(cls, loras: str = "[]", mode: str = "merge", unique_id: str = "", **_: Any) -> str:
        """With ``auto``, the mode it would pick now: ComfyUI runs the node again when that changes."""
        return apply_mode.fingerprint(str(unique_id), loras) if mode == "auto" else mode

    def apply(self, model: Any, loras: str, on_mismatch: str = "error", clip: Any = None, mode: str = "merge",
              unique_id: str = "") -> dict[str, Any]:
        lines = []
        if mode == "auto":
            mode = apply_mode.choose(str(unique_id), loras)
            lines.append("auto: " + ("merged: the same LoRAs as last time" if mode == "merge" else
                                     "hot-swapped: the LoRAs changed since the last run"))
        for entry in parse_stack(loras):
            if not entry.enabled:
                lines.append(f"off {entry.name or redact_url(entry.fetch_source)}")
                continue
            if entry.strength_model == 0 and entry.strength_clip == 0:
                continue
            handle = fetch_handle(entry.fetch_source, entry.sha256, entry.link_name)
            model, clip, report = apply_lora(model, clip, handle, entry.strength_model, entry.strength_clip,
                                             on_mismatch, mode)
            lines.append(report.line())
        return _result(model, clip, lines)


NODE_CLASS_MAPPINGS = {NODE_APPLY: ApplyLora, NODE_APPLY_STACK: ApplyLoraStack}
NODE_DISPLAY_NAME_MAPPINGS = {NODE_APPLY: "Apply LoRA (Bridge)", NODE_APPLY_STACK: "Apply LoRA Stack (Bridge)"}
