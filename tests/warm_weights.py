"""Generate the models the tests use ahead of the run (``.ci/setup`` runs this while it installs the
second ComfyUI). Files are cached under ``~/.cache/comfyui-lora-bridge/weights``, where the tests'
fixtures find them made; LoRAs are small and are made by the fixtures themselves."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial

from comfyui_lora_bridge.testing.dit_layout import (
    WAN22_EXPERT,
    WAN22_I2V_EXPERT,
)
from comfyui_lora_bridge.testing.weights import (
    AUX_MODELS,
    cached_aux_model,
    cached_checkpoint,
    cached_dit_model,
)
from test_families_e2e import FAMILIES


def jobs() -> list[Callable[[], object]]:
    """What makes each model file the tests load (LoRAs are made by the fixtures)."""
    made: list[Callable[[], object]] = [lambda: cached_checkpoint("sdxl"), lambda: cached_checkpoint("tiny")]
    for family in FAMILIES.values():
        if family.spec is not None:
            made.append(partial(cached_dit_model, family.spec))
    for seed in (0, 1):  # each two-expert model's high- and low-noise expert
        made += [partial(cached_dit_model, WAN22_EXPERT, seed), partial(cached_dit_model, WAN22_I2V_EXPERT, seed)]
    return made + [partial(cached_aux_model, name) for name in AUX_MODELS]


def main() -> None:
    """``warm_weights.py [PART PARTS]``: make every PARTS-th file from the PART-th (default: all), so that
    several processes share the work (each file is written under a temporary name, then renamed)."""
    part, parts = (int(arg) for arg in sys.argv[1:3]) if len(sys.argv) == 3 else (0, 1)
    for make in jobs()[part::parts]:
        make()


if __name__ == "__main__":
    main()
