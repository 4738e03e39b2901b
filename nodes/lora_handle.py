"""The ``LORA`` value passed between this pack's nodes: a verified file on the pod."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LORA_TYPE = "LORA"


@dataclass(frozen=True)
class LoraHandle:
    """A LoRA file on local disk, named as the user knows it, with what we know about it."""

    path: Path
    name: str
    info: dict[str, Any] = field(default_factory=dict, compare=False)
