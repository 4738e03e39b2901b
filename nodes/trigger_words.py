"""A node that prepends a LoRA's trigger words to a prompt."""

from __future__ import annotations

from ..bridge.graphs.prompts import with_trigger_words
from ..bridge.pack_protocol import NODE_TRIGGER_WORDS
from .lora_handle import LORA_TYPE, LoraHandle

CATEGORY = "LoRA Bridge"


class LoraTriggerWords:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "lora": (LORA_TYPE, {"tooltip": "The LoRA whose trigger words to add (from its metadata)."}),
                "text": ("STRING", {"multiline": True, "default": "", "tooltip": "The prompt."}),
            }
        }

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("text",)
    OUTPUT_TOOLTIPS = ("The prompt with the trigger words in front.",)
    FUNCTION = "prepend"
    CATEGORY = CATEGORY
    DESCRIPTION = "Prepends the LoRA's trigger words ('{trigger}, {prompt}'), once."

    def prepend(self, lora: LoraHandle, text: str) -> dict:
        out = with_trigger_words(text, lora.trigger_words)
        return {"ui": {"lora_bridge": [out]}, "result": (out,)}


NODE_CLASS_MAPPINGS = {NODE_TRIGGER_WORDS: LoraTriggerWords}
NODE_DISPLAY_NAME_MAPPINGS = {NODE_TRIGGER_WORDS: "LoRA Trigger Words (Bridge)"}
