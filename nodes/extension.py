"""The pack as a V3 ComfyUI extension: its nodes, and what it starts inside a running ComfyUI."""

from __future__ import annotations

import logging
import sys
import threading

from comfy_api.latest import ComfyExtension

from . import lora_apply, lora_files, lora_training, trigger_words
from .node_base import BridgeNode


class LoraBridgeExtension(ComfyExtension):
    """The six nodes of category *LoRA Bridge*."""

    async def get_node_list(self) -> list[type[BridgeNode]]:  # type: ignore[override]
        return [*lora_files.NODES, *lora_apply.NODES, *trigger_words.NODES, *lora_training.NODES]


def start_in_comfyui() -> None:
    """Inside a running ComfyUI: add the pod routes, start preloading ``LORA_BRIDGE_PRELOAD`` and, with
    ``LORA_BRIDGE_REGISTER_URL``, join that bridge's fleet."""
    server = sys.modules.get("server")
    if server is None or getattr(getattr(server, "PromptServer", None), "instance", None) is None:
        return
    from .lora_loading import preload_configured
    from .pod_membership import start_membership
    from .routes import register_routes

    register_routes()
    start_membership()
    threading.Thread(target=preload_configured, name="lora-bridge-preload", daemon=True).start()
    logging.getLogger("lora_bridge").info("lora_bridge: routes under /lora_bridge/ ready")
