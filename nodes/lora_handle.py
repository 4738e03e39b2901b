"""The ``LORA`` value passed between this pack's nodes: a verified file on the pod."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LORA_TYPE = "LORA"


@dataclass(frozen=True)
class LoraHandle:
    """A LoRA file on local disk, named as the user knows it, with what inspection found.

    ``source``/``sha256`` let a node fetch the file again if the disk cache evicted it.
    """

    path: Path
    name: str
    sha256: str
    info: dict[str, Any] = field(default_factory=dict, compare=False)
    source: str | None = None

    @property
    def family(self) -> str:
        return self.info.get("family", "unknown")

    @property
    def variant(self) -> str | None:
        return self.info.get("variant")

    @property
    def trigger_words(self) -> list[str]:
        return list(self.info.get("trigger_words", []))
