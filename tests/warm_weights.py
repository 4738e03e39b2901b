"""Generate the models the tests use ahead of the run (``.ci/setup`` runs this while it installs the
second ComfyUI). Files are cached under ``~/.cache/comfyui-lora-bridge/weights``, where the tests'
fixtures find them made; LoRAs are small and are made by the fixtures themselves."""

from __future__ import annotations

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


def main() -> None:
    for size in ("tiny", "sdxl"):
        cached_checkpoint(size)
    for family in FAMILIES.values():
        if family.spec is not None:
            cached_dit_model(family.spec)
    for seed in (0, 1):  # each two-expert model's high- and low-noise expert
        cached_dit_model(WAN22_EXPERT, seed)
        cached_dit_model(WAN22_I2V_EXPERT, seed)
    for name in AUX_MODELS:
        cached_aux_model(name)


if __name__ == "__main__":
    main()
