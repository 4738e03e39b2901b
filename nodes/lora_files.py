"""Nodes that turn a LoRA file (on the pod, in S3, or at a URL) into a ``LORA`` handle."""

from __future__ import annotations

from typing import Any

from ..bridge.pack_protocol import NODE_FETCH, NODE_LOAD
from ..bridge.settings import settings
from .lora_handle import LORA_TYPE, LoraHandle
from .pod_state import fetch_handle, handle_for_name

CATEGORY = "LoRA Bridge"


def _ui(handle: LoraHandle, prefix: str) -> dict[str, Any]:
    info = handle.info
    text = f"{prefix} {handle.name}: {info.get('family_name', 'unknown')}, rank {max(info.get('ranks') or [0]) or '?'}"
    if handle.trigger_words:
        text += f", trigger: {', '.join(handle.trigger_words)}"
    return {"lora_bridge": [text]}


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
    DESCRIPTION = "Selects a LoRA file from the pod's loras folders and inspects it (base model, rank, trigger words)."

    def load(self, lora_name: str) -> dict[str, Any]:
        handle = handle_for_name(lora_name)
        return {"ui": _ui(handle, "loaded"), "result": (handle,)}


class FetchLora:
    """Download a LoRA from S3 or a URL into the pod's verified disk cache (or use a local name)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "source": ("STRING", {"default": "", "tooltip": "s3://bucket/key, https://… (presigned S3, Hugging Face, Civitai), or a file name in the loras folders."}),
            },
            "optional": {
                "sha256": ("STRING", {"default": "", "tooltip": "Expected SHA-256 (64 hex digits). Verified; also lets the cache skip the download."}),
                "name": ("STRING", {"default": "", "tooltip": "Link the file into the loras folder under this name (e.g. character-42)."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = (LORA_TYPE,)
    RETURN_NAMES = ("lora",)
    OUTPUT_TOOLTIPS = ("The verified LoRA file, ready for Apply LoRA.",)
    FUNCTION = "fetch"
    CATEGORY = CATEGORY
    DESCRIPTION = "Fetches a LoRA (verified, resumable, cached on disk) and inspects it."

    @classmethod
    def IS_CHANGED(cls, source: str, sha256: str = "", name: str = "", unique_id: str | None = None) -> str:
        return f"{source.strip()}|{sha256.strip().lower()}|{name.strip()}"

    def fetch(self, source: str, sha256: str = "", name: str = "", unique_id: str | None = None) -> dict[str, Any]:
        import comfy.utils

        bar = comfy.utils.ProgressBar(100)

        def progress(done: int, total: int) -> None:
            bar.update_absolute(done * 100 // max(total, 1), 100)

        def retrying(attempt: int, reason: str, delay: float) -> None:
            show_progress_text(f"retrying ({attempt} of {len(settings().fetch_retry_delays)}) in {delay:.0f} s: {reason}",
                               unique_id)

        handle = fetch_handle(source.strip(), sha256.strip() or None, name.strip() or None, progress, on_retry=retrying)
        return {"ui": _ui(handle, "fetched"), "result": (handle,)}


def show_progress_text(text: str, node_id: str | None) -> None:
    """A line of text on the running node in the editor, where this ComfyUI can show one."""
    from server import PromptServer

    send = getattr(PromptServer.instance, "send_progress_text", None)  # ComfyUI 0.3.4x and later
    if send is not None and node_id is not None:
        send(text, node_id)


NODE_CLASS_MAPPINGS = {NODE_LOAD: LoadLoraFile, NODE_FETCH: FetchLora}
NODE_DISPLAY_NAME_MAPPINGS = {NODE_LOAD: "Load LoRA File (Bridge)", NODE_FETCH: "Fetch LoRA (Bridge)"}
