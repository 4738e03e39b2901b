"""Saving a LoRA that ComfyUI's ``TrainLoraNode`` trained, so that an API client can find it.

ComfyUI's own ``SaveLoRA`` writes the file under a name with a counter and reports nothing in the
prompt's history; this node writes it to ``output/lora_bridge_trainings/<folder>/`` (atomically:
a hidden temporary name, then a rename), with the trigger word and base model in the header, and
reports file, steps and the loss history as the node's UI output.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

from comfy_api.latest import io

from ..bridge.pack_protocol import (
    JOB_FOLDER,
    NODE_SAVE_TRAINED,
    TRAINING_OUTPUTS,
    TRAINING_UI_KEY,
)
from .node_base import CATEGORY, BridgeNode

FILE_NAME = "lora.safetensors"


class LoraBridgeSaveTrainedLora(BridgeNode):
    """Write a trained LoRA where an API client finds it, and report it in the prompt's history."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE_SAVE_TRAINED,
            display_name="Save Trained LoRA (Bridge)",
            category=CATEGORY,
            description=("Saves a trained LoRA to output/lora_bridge_trainings/<folder>/lora.safetensors with its trigger "
                         "word and reports the file, its SHA-256, the steps and the loss history in the prompt's history."),
            inputs=[
                io.LoraModel.Input("lora", tooltip="The trained LoRA weights (TrainLoraNode's 'lora' output)."),
                io.LossMap.Input("loss_map", tooltip="TrainLoraNode's loss history; reported with the file."),
                io.Int.Input("steps", force_input=True, tooltip="TrainLoraNode's total training steps."),
                io.String.Input("folder", default="my-lora",
                                tooltip="Folder under output/lora_bridge_trainings/ (letters, digits, - and _)."),
                io.String.Input("trigger_word", default="", tooltip="Written to the file's header (modelspec.trigger_phrase)."),
                io.String.Input("base_model", default="sd15", tooltip="The base model family, written to the header."),
            ],
            is_output_node=True,
        )

    @classmethod
    def run(cls, lora: dict, loss_map: dict, steps: int, folder: str, trigger_word: str,  # type: ignore[override]
            base_model: str) -> io.NodeOutput:
        import folder_paths
        import safetensors.torch

        if not JOB_FOLDER.match(folder):
            raise ValueError(f"folder {folder!r}: use 1-64 letters, digits, '-' and '_'")
        target_dir = Path(folder_paths.get_output_directory()) / TRAINING_OUTPUTS / folder
        target_dir.mkdir(parents=True, exist_ok=True)
        losses = [float(v) for v in (loss_map or {}).get("loss", []) if math.isfinite(float(v))]
        metadata = {"modelspec.trigger_phrase": trigger_word.strip(), "lora_bridge.base_model": base_model,
                    "lora_bridge.training_steps": str(int(steps))}
        if losses:
            metadata["lora_bridge.final_loss"] = f"{losses[-1]:.6f}"
        tmp = target_dir / f".{FILE_NAME}.partial"
        tensors = {k: v.detach().contiguous() for k, v in lora.items()}
        safetensors.torch.save_file(tensors, str(tmp), metadata={k: v for k, v in metadata.items() if v})
        digest = hashlib.sha256()
        with open(tmp, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        os.replace(tmp, target_dir / FILE_NAME)
        report = {"filename": FILE_NAME, "subfolder": f"{TRAINING_OUTPUTS}/{folder}", "type": "output",
                  "sha256": digest.hexdigest(), "steps": int(steps), "loss": losses}
        return io.NodeOutput(ui={TRAINING_UI_KEY: [report]})


NODES: list[type[BridgeNode]] = [LoraBridgeSaveTrainedLora]
