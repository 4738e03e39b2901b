"""A node that prepends a LoRA's trigger words to a prompt (leaving out those the user turned off)."""

from __future__ import annotations

from comfy_api.latest import io

from ..bridge.graphs.prompts import with_trigger_words
from ..bridge.pack_protocol import NODE_TRIGGER_WORDS
from .lora_handle import LoraHandle
from .node_base import CATEGORY, BridgeNode, Lora


class LoraTriggerWords(BridgeNode):
    """Put the LoRA's trigger words in front of the prompt, each once; ``leave_out`` turns words off."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE_TRIGGER_WORDS,
            display_name="LoRA Trigger Words (Bridge)",
            category=CATEGORY,
            description="Prepends the LoRA's trigger words ('{trigger}, {prompt}'), once; leave_out names those not to add.",
            inputs=[
                Lora.Input("lora", tooltip="The LoRA whose trigger words to add (from its metadata)."),
                io.String.Input("text", multiline=True, default="", tooltip="The prompt."),
                io.String.Input("leave_out", default="", optional=True,
                                tooltip="Trigger words not to add, comma-separated (in the graph editor, click a word's "
                                        "tag to leave it out or take it back)."),
            ],
            # V3 ids are unique across inputs and outputs: the output keeps the name "text" as its display name
            outputs=[io.String.Output("prompt", display_name="text", tooltip="The prompt with the trigger words in front.")],
        )

    @classmethod
    def run(cls, lora: LoraHandle, text: str, leave_out: str = "") -> io.NodeOutput:  # type: ignore[override]
        left_out = {word.strip().casefold() for word in leave_out.split(",") if word.strip()}
        out = with_trigger_words(text, [w for w in lora.trigger_words if w.casefold() not in left_out])
        return io.NodeOutput(out, ui={"lora_bridge": [out], "trigger_words": list(lora.trigger_words)})


NODES: list[type[BridgeNode]] = [LoraTriggerWords]
