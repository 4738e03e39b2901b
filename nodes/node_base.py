"""What every node of the pack shares on ComfyUI's V3 node schema (``comfy_api.latest``).

``BridgeNode.execute`` runs the node's ``run`` and puts the node's display name in front of our errors:
ComfyUI's report names only the node id (``LoraBridgeApply``), its dialog shows the message.
"""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..bridge.errors import LoraBridgeError
from .lora_handle import LORA_TYPE

CATEGORY = "LoRA Bridge"
Lora = io.Custom(LORA_TYPE)  # the verified LoRA file passed between our nodes (``LoraHandle``)


def running_node_id() -> str | None:
    """The id (in the prompt) of the node ComfyUI is running or fingerprinting now, where it says."""
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:
        return None
    context = get_executing_context()
    return None if context is None else str(context.node_id)


class BridgeNode(io.ComfyNode):
    """A pack node: subclasses define ``define_schema`` and ``run`` (same arguments as the inputs)."""

    @classmethod
    def run(cls, **inputs: Any) -> io.NodeOutput:
        raise NotImplementedError

    @classmethod
    def execute(cls, **inputs: Any) -> io.NodeOutput:
        try:
            return cls.run(**inputs)
        except LoraBridgeError as exc:
            exc.args = (f"{cls.define_schema().display_name}: {exc}", *exc.args[1:])
            raise
