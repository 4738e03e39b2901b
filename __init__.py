"""comfyui-lora-bridge: a ComfyUI node pack (this folder, placed in ``custom_nodes/``) and the
bridge service that drives ComfyUI pods (``comfyui_lora_bridge.bridge``).

Importing this package never imports torch or ComfyUI: ComfyUI calls ``comfy_entrypoint`` (its V3
extension entry point), which loads the nodes.
"""

WEB_DIRECTORY = "./web"  # front-end extension: shows on each node what it applied

if __package__:  # imported as a package: by ComfyUI, or as comfyui_lora_bridge
    from .nodes import comfy_entrypoint

    __all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
__version__ = "0.1.0"
