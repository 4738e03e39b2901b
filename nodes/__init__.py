"""ComfyUI nodes of comfyui-lora-bridge, on ComfyUI's V3 node schema (``comfy_api.latest``).

Importing this package imports neither torch nor ComfyUI: ComfyUI calls ``comfy_entrypoint``, which
imports the node modules.
"""

from __future__ import annotations

from typing import Any


async def comfy_entrypoint() -> Any:
    """ComfyUI's V3 entry point: start the pod's routes and services, return the extension with our nodes.

    Started here rather than in ``ComfyExtension.on_load``, which ComfyUI 0.3.75 does not call.
    """
    from .extension import LoraBridgeExtension, start_in_comfyui

    start_in_comfyui()
    return LoraBridgeExtension()
