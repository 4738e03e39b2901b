"""Generate the models the tests use ahead of the run (``.ci/setup`` runs this while it installs the
second ComfyUI). Files are cached under ``~/.cache/comfyui-lora-bridge/weights``, where the tests'
fixtures find them made; LoRAs are small and are made by the fixtures themselves."""

from __future__ import annotations

import multiprocessing
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


def make(index: int) -> None:
    jobs()[index]()


def main() -> None:
    """``warm_weights.py [PROCESSES]``: make every file, PROCESSES at a time (default 2), each process taking
    the next file as it finishes one (the SDXL checkpoint, the largest, first), so that they end together
    (each file is written under a temporary name, then renamed)."""
    processes = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    with multiprocessing.Pool(processes) as pool:
        for _ in pool.imap_unordered(make, range(len(jobs())), chunksize=1):
            pass


if __name__ == "__main__":
    main()
