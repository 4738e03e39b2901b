"""Nodes that turn a LoRA file (on the pod, in S3, or at a URL) into a ``LORA`` handle."""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..bridge.pack_protocol import NODE_FETCH, NODE_LOAD
from ..bridge.settings import settings
from .lora_handle import LoraHandle
from .node_base import CATEGORY, BridgeNode, Lora, running_node_id
from .pod_state import fetch_handle, handle_for_name


def _ui(handle: LoraHandle, prefix: str) -> dict[str, Any]:
    info = handle.info
    text = f"{prefix} {handle.name}: {info.get('family_name', 'unknown')}, rank {max(info.get('ranks') or [0]) or '?'}"
    if handle.trigger_words:
        text += f", trigger: {', '.join(handle.trigger_words)}"
    return {"lora_bridge": [text]}


class LoadLoraFile(BridgeNode):
    """Pick a file from ComfyUI's ``loras`` folders (like the stock loader's drop-down)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        import folder_paths

        return io.Schema(
            node_id=NODE_LOAD,
            display_name="Load LoRA File (Bridge)",
            category=CATEGORY,
            description="Selects a LoRA file from the pod's loras folders and inspects it (base model, rank, trigger words).",
            inputs=[io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras"),
                                   tooltip="A LoRA file in ComfyUI's models/loras folders.")],
            outputs=[Lora.Output("lora", display_name="lora", tooltip="The LoRA file, ready for Apply LoRA.")],
        )

    @classmethod
    def run(cls, lora_name: str) -> io.NodeOutput:  # type: ignore[override]
        handle = handle_for_name(lora_name)
        return io.NodeOutput(handle, ui=_ui(handle, "loaded"))


class FetchLora(BridgeNode):
    """Download a LoRA from S3 or a URL into the pod's verified disk cache (or use a local name)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE_FETCH,
            display_name="Fetch LoRA (Bridge)",
            category=CATEGORY,
            description="Fetches a LoRA (verified, resumable, cached on disk) and inspects it.",
            inputs=[
                io.String.Input("source", default="", tooltip="s3://bucket/key, https://… (presigned S3, Hugging Face, "
                                                              "Civitai), or a file name in the loras folders."),
                io.String.Input("sha256", default="", optional=True, tooltip="Expected SHA-256 (64 hex digits). Verified; "
                                                                            "also lets the cache skip the download."),
                io.String.Input("name", default="", optional=True, tooltip="Link the file into the loras folder under this "
                                                                          "name (e.g. character-42)."),
            ],
            outputs=[Lora.Output("lora", display_name="lora", tooltip="The verified LoRA file, ready for Apply LoRA.")],
        )

    @classmethod
    def fingerprint_inputs(cls, source: str, sha256: str = "", name: str = "") -> str:  # type: ignore[override]
        return f"{source.strip()}|{sha256.strip().lower()}|{name.strip()}"

    @classmethod
    def run(cls, source: str, sha256: str = "", name: str = "") -> io.NodeOutput:  # type: ignore[override]
        import comfy.utils

        bar = comfy.utils.ProgressBar(100)
        node_id = running_node_id()

        def progress(done: int, total: int) -> None:
            bar.update_absolute(done * 100 // max(total, 1), 100)

        def retrying(attempt: int, reason: str, delay: float) -> None:
            show_progress_text(f"retrying ({attempt} of {len(settings().fetch_retry_delays)}) in {delay:.0f} s: {reason}",
                               node_id)

        handle = fetch_handle(source.strip(), sha256.strip() or None, name.strip() or None, progress, on_retry=retrying)
        return io.NodeOutput(handle, ui=_ui(handle, "fetched"))


def show_progress_text(text: str, node_id: str | None) -> None:
    """A line of text on the running node in the editor, where this ComfyUI can show one."""
    from server import PromptServer

    send = getattr(PromptServer.instance, "send_progress_text", None)  # ComfyUI 0.3.4x and later
    if send is not None and node_id is not None:
        send(text, node_id)


NODES: list[type[BridgeNode]] = [LoadLoraFile, FetchLora]
