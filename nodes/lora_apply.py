"""Nodes that apply ``LORA`` handles to a MODEL and CLIP: one LoRA, or a stack from JSON."""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

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
from .lora_handle import LoraHandle
from .lora_loading import apply_lora
from .node_base import CATEGORY, BridgeNode, Lora, running_node_id
from .pod_state import fetch_handle

MISMATCH_TIP = ("What to do when the LoRA was made for another base model or none of its keys fit: "
                "error (stop with the reason), skip (go on without it), apply anyway.")
MODE_TIP = ("merge: patch the weights like ComfyUI's loader (bit-identical). hotswap: add the LoRA at run time "
            "without touching the weights, so switching LoRAs or strengths between jobs costs no re-patching.")
STACK_MODE_TIP = MODE_TIP + (" auto: hot-swap a stack the first time, merge it when it comes again (no per-step "
                             "cost while a pod repeats the same LoRAs).")
STACK_EXAMPLE = ('[{"source": "s3://bucket/character-42.safetensors", "sha256": "", "strength_model": 1.0, '
                 '"strength_clip": 1.0, "enabled": true}]')


def _result(model: Any, clip: Any, lines: list[str]) -> io.NodeOutput:
    return io.NodeOutput(model, clip, ui={"lora_bridge": lines or ["no LoRA"]})


def _strength(name: str, tooltip: str) -> io.Float.Input:
    return io.Float.Input(name, default=1.0, min=STRENGTH_MIN, max=STRENGTH_MAX, step=STRENGTH_STEP, tooltip=tooltip)


def _on_mismatch() -> io.Combo.Input:
    return io.Combo.Input("on_mismatch", options=list(ON_MISMATCH), default="error", tooltip=MISMATCH_TIP)


class ApplyLora(BridgeNode):
    """Apply one LoRA with separate model and CLIP strengths (ComfyUI's own weight math)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE_APPLY,
            display_name="Apply LoRA (Bridge)",
            category=CATEGORY,
            description="Applies a LoRA; checks that it was made for this base model; keeps loaded LoRAs in memory.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model the LoRA is applied to."),
                Lora.Input("lora", tooltip="A LoRA from Load LoRA File or Fetch LoRA."),
                _strength("strength_model", "How strongly to modify the diffusion model; may be negative."),
                _strength("strength_clip", "How strongly to modify the text encoder; may be negative."),
                _on_mismatch(),
                io.Clip.Input("clip", optional=True, tooltip="The text encoder the LoRA is applied to (optional)."),
                io.Combo.Input("mode", options=list(APPLY_MODES), default="merge", optional=True, tooltip=MODE_TIP),
            ],
            outputs=[
                io.Model.Output(tooltip="The model with the LoRA."),
                io.Clip.Output(tooltip="The text encoder with the LoRA (None when no CLIP was given)."),
            ],
        )

    @classmethod
    def run(cls, model: Any, lora: LoraHandle, strength_model: float, strength_clip: float,  # type: ignore[override]
            on_mismatch: str = "error", clip: Any = None, mode: str = "merge") -> io.NodeOutput:
        model, clip, report = apply_lora(model, clip, lora, strength_model, strength_clip, on_mismatch, mode)
        return _result(model, clip, [report.line()])


class ApplyLoraStack(BridgeNode):
    """Fetch what is missing and apply several LoRAs in order: the node the bridge inserts."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE_APPLY_STACK,
            display_name="Apply LoRA Stack (Bridge)",
            category=CATEGORY,
            description="Applies a list of LoRAs (sources or names, optional SHA-256, strengths), fetching what is missing.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model the LoRAs are applied to."),
                io.String.Input("loras", multiline=True, default="[]",
                                tooltip="JSON list, applied in order: " + STACK_EXAMPLE),
                _on_mismatch(),
                io.Clip.Input("clip", optional=True, tooltip="The text encoder the LoRAs are applied to (optional)."),
                io.Combo.Input("mode", options=list(STACK_APPLY_MODES), default="merge", optional=True,
                               tooltip=STACK_MODE_TIP),
            ],
            outputs=[
                io.Model.Output(tooltip="The model with every LoRA."),
                io.Clip.Output(tooltip="The text encoder with every LoRA."),
            ],
        )

    @classmethod
    def validate_inputs(cls, loras: str, **_: Any) -> bool | str:  # type: ignore[override]
        try:
            parse_stack(loras)
        except ProtocolError as exc:
            return str(exc)
        return True

    @classmethod
    def fingerprint_inputs(cls, loras: str = "[]", mode: str = "merge", **_: Any) -> str:  # type: ignore[override]
        """With ``auto``, the mode it would pick now: ComfyUI runs the node again when that changes."""
        return apply_mode.fingerprint(running_node_id() or "", loras) if mode == "auto" else mode

    @classmethod
    def run(cls, model: Any, loras: str, on_mismatch: str = "error", clip: Any = None,  # type: ignore[override]
            mode: str = "merge") -> io.NodeOutput:
        lines = []
        if mode == "auto":
            mode = apply_mode.choose(running_node_id() or "", loras)
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


NODES: list[type[BridgeNode]] = [ApplyLora, ApplyLoraStack]
