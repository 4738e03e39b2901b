"""Where local state lives, from the environment (``LORA_BRIDGE_*``), with embedded defaults."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Folder for reusable local state (``LORA_BRIDGE_CACHE``, default ``~/.cache/comfyui-lora-bridge``)."""
    base = os.environ.get("LORA_BRIDGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "comfyui-lora-bridge"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def store_root() -> Path:
    """The LoRA disk cache (``LORA_BRIDGE_STORE``, default ``<cache>/store``)."""
    return Path(os.environ.get("LORA_BRIDGE_STORE") or cache_root() / "store")


def disk_budget_bytes() -> int | None:
    """``LORA_BRIDGE_DISK_BUDGET_GB`` (unset or 0: no limit)."""
    value = float(os.environ.get("LORA_BRIDGE_DISK_BUDGET_GB") or 0)
    return int(value * 1024**3) if value > 0 else None
