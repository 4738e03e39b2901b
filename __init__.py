"""comfyui-lora-bridge: a ComfyUI node pack (this folder, placed in ``custom_nodes/``) and the
bridge service that drives ComfyUI pods (``comfyui_lora_bridge.bridge``).

Importing this package never imports torch or ComfyUI; the node classes import ComfyUI only
when ComfyUI calls them.
"""

WEB_DIRECTORY = "./web"  # front-end extension: shows on each node what it applied

if __package__:  # imported as a package: by ComfyUI, or as comfyui_lora_bridge
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, start_in_comfyui

    start_in_comfyui()
else:  # a bare module: pytest collecting a checkout whose folder name is not an identifier
    NODE_CLASS_MAPPINGS = {}
    NODE_DISPLAY_NAME_MAPPINGS = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
__version__ = "0.1.0"
