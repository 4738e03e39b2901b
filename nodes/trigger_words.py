"""A node that prepends a LoRA's trigger words to a prompt (leaving out those the user turned off)."""

from __future__ import annotations

from ..bridge.graphs.prompts import with_trigger_words
from ..bridge.pack_protocol import NODE_TRIGGER_WORDS
from .lora_handle import LORA_TYPE, LoraHandle

CATEGORY = "LoRA Bridge"


class LoraTriggerWords:
    """Put the LoRA's trigger words in front of the prompt, each once; ``leave_out`` turns words off."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "lora": (LORA_TYPE, {"tooltip": "The LoRA whose trigger words to add (from its metadata)."}),
                "text": ("STRING", {"multiline": True, "default": "", "tooltip": "The prompt."}),
            },
            "optional": {
                "leave_out": ("STRING", {"default": "", "tooltip": "Trigger words not to add, comma-separated "
                                         "(in the graph editor, click a word's tag to leave it out or take it back)."}),
            },
        }

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("text",)
    OUTPUT_TOOLTIPS = ("The prompt with the trigger words in front.",)
    FUNCTION = "prepend"
    CATEGORY = CATEGORY
    DESCRIPTION = "Prepends the LoRA's trigger words ('{trigger}, {prompt}'), once; leave_out names those not to add."

    def prepend(self, lora: LoraHandle, text: str, leave_out: str = "") -> dict:
        left_out = {word.strip().casefold() for word in leave_out.split(",") if word.strip()}
        out = with_trigger_words(text, [w for w in lora.trigger_words if w.casefold() not in left_out])
        return {"ui": {"lora_bridge": [out], "trigger_words": list(lora.trigger_words)}, "result": (out,)}


NODE_CLASS_MAPPINGS = {NODE_TRIGGER_WORDS: LoraTriggerWords}
NODE_DISPLAY_NAME_MAPPINGS = {NODE_TRIGGER_WORDS: "LoRA Trigger Words (Bridge)"}
