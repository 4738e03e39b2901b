"""Nodes that turn a LoRA file on the pod into a ``LORA`` handle."""

from __future__ import annotations

from pathlib import Path

from .lora_handle import LORA_TYPE, LoraHandle

CATEGORY = "LoRA Bridge"


class LoadLoraFile:
    """Pick a file from ComfyUI's ``loras`` folders (like the stock loader's drop-down)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        import folder_paths

        return {
            "required": {
                "lora_name": (folder_paths.get_filename_list("loras"), {"tooltip": "A LoRA file in ComfyUI's models/loras folders."}),
            }
        }

    RETURN_TYPES = (LORA_TYPE,)
    RETURN_NAMES = ("lora",)
    OUTPUT_TOOLTIPS = ("The LoRA file, ready for Apply LoRA.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Selects a LoRA file from the pod's loras folders."

    def load(self, lora_name: str) -> tuple[LoraHandle]:
        import folder_paths

        path = Path(folder_paths.get_full_path_or_raise("loras", lora_name))
        return (LoraHandle(path=path, name=lora_name),)


NODE_CLASS_MAPPINGS = {"LoraBridgeLoadFile": LoadLoraFile}
NODE_DISPLAY_NAME_MAPPINGS = {"LoraBridgeLoadFile": "Load LoRA File (Bridge)"}
