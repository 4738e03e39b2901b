"""ComfyUI nodes of comfyui-lora-bridge. Node modules import ComfyUI lazily, inside methods."""

from __future__ import annotations

import functools
import logging
import sys
import threading
from typing import Any

from ..bridge.errors import LoraBridgeError
from . import lora_apply, lora_files, lora_training, trigger_words


def _named_errors(node_class: Any, display_name: str) -> None:
    """Our errors from ``node_class`` start with the node's name as users see it: ComfyUI's report
    names only the class (``LoraBridgeApply``), its dialog shows the message."""
    method = getattr(node_class, node_class.FUNCTION)

    @functools.wraps(method)
    def run(self: object, *args: object, **kwargs: object) -> object:
        try:
            return method(self, *args, **kwargs)
        except LoraBridgeError as exc:
            exc.args = (f"{display_name}: {exc}", *exc.args[1:])
            raise

    setattr(node_class, node_class.FUNCTION, run)


NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
for _module in (lora_files, lora_apply, trigger_words, lora_training):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
for _name, _class in NODE_CLASS_MAPPINGS.items():
    _named_errors(_class, NODE_DISPLAY_NAME_MAPPINGS[_name])


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
