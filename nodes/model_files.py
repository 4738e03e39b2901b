"""Base-model family of the pod's checkpoint and diffusion-model files, read from their headers.

ComfyUI's own detection (``comfy.model_detection``) runs on tensors that have shapes and no data
(``device="meta"``), so a multi-gigabyte checkpoint is told apart in milliseconds, before any run,
with the same answer ``model_family`` gives for the loaded MODEL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..bridge.errors import LoraBridgeError
from ..bridge.lorafiles.families import (
    COMFY_MODEL_FAMILIES,
    UNKNOWN,
    config_variant,
    variant_name,
)
from .pod_state import per_file_version


class ModelFileNotFound(LoraBridgeError):
    """No such file in that model folder of the pod."""


_described: dict[tuple[str, int, int], dict[str, Any]] = {}


def _shapes_only(path: Path) -> dict[str, Any]:
    import torch
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        return {key: torch.empty(f.get_slice(key).get_shape(), device="meta") for key in f.keys()}


def _detect(path: Path) -> dict[str, Any]:
    import comfy.model_detection as detection

    def unknown(note: str) -> dict[str, Any]:
        return {"family": UNKNOWN, "variant": None, "detected_as": None, "note": note}

    if path.suffix != ".safetensors":
        return unknown("only .safetensors files are read")
    try:
        state_dict = _shapes_only(path)
        prefix = detection.unet_prefix_from_state_dict(state_dict)
        if not any(key.startswith(prefix) for key in state_dict):  # a bare diffusion model (UNETLoader's rule)
            prefix = ""
        config = detection.model_config_from_unet(state_dict, prefix)
    except Exception as exc:  # a damaged header, or a layout ComfyUI's detection trips over: not knowable, not fatal
        return unknown(f"unreadable: {type(exc).__name__}: {exc}")
    if config is None:
        return unknown("ComfyUI does not recognise this model")
    family = COMFY_MODEL_FAMILIES.get(type(config).__name__, UNKNOWN)
    return {"family": family, "variant": config_variant(family, config.unet_config), "detected_as": type(config).__name__}


def describe_model_file(folder: str, name: str) -> dict[str, Any]:
    """``{folder, name, family, family_name, variant, detected_as}`` of a file in ComfyUI's ``folder``
    (``ModelFileNotFound`` when it is not listed there); cached per file size and modification time."""
    import folder_paths

    if name not in folder_paths.get_filename_list(folder):
        raise ModelFileNotFound(f"no {folder} file named {name!r} on this pod")
    found = per_file_version(_described, Path(folder_paths.get_full_path(folder, name) or ""), _detect)[0]
    return {"folder": folder, "name": name, **found, "family_name": variant_name(found["family"], found["variant"])}
