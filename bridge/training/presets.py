"""Training presets (from the LoRA creator's: fast, balanced, quality) and the settings a request ends with.

A preset fixes rank, resolution, learning rate, batch size and epochs; steps follow from the
epochs and the dataset's size unless given. Every value can be overridden explicitly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

PresetName = Literal["fast", "balanced", "quality"]


@dataclass(frozen=True)
class TrainingSettings:
    rank: int
    resolution: int
    learning_rate: float
    batch_size: int
    epochs: int
    steps: int | None = None  # None: epochs x images / batch size

    def steps_for(self, images: int) -> int:
        return self.steps if self.steps is not None else max(1, math.ceil(self.epochs * images / self.batch_size))

    def to_dict(self, images: int) -> dict[str, Any]:
        return {**asdict(self), "steps": self.steps_for(images)}


PRESETS: dict[str, TrainingSettings] = {
    "fast": TrainingSettings(rank=8, resolution=512, learning_rate=5e-4, batch_size=1, epochs=5),
    "balanced": TrainingSettings(rank=16, resolution=512, learning_rate=2e-4, batch_size=1, epochs=15),
    "quality": TrainingSettings(rank=64, resolution=768, learning_rate=1e-4, batch_size=1, epochs=20),
}


def settings_for(preset: str, overrides: dict[str, Any]) -> TrainingSettings:
    """The preset with the request's explicit values (``None`` leaves the preset's)."""
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
