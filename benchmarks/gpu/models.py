"""Full-size random models and LoRAs for the GPU check, drawn on the device through the test layouts.

The layouts are the ones the tests use (``comfyui_lora_bridge.testing``); only the sizes
differ: SDXL's own UNet (2.6 B parameters, transformer depth 10) with the real CLIP-L and CLIP-G,
Flux.1 at 12 B (19 double and 38 single blocks) in bf16, Wan 2.1 14B (40 blocks) in bf16. A dry run
(``tiny``) takes the test sizes. Files are written tensor by tensor (a 24 GB model never sits in
host memory twice). torch is imported only to draw: ``measure.py`` reads this module's tables before
ComfyUI sets torch up.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from comfyui_lora_bridge.testing.dit_layout import FLUX, WAN21_T2V, DitSpec
from comfyui_lora_bridge.testing.unet_layout import SDXL_UNET, TINY_UNET, UNetSpec
from comfyui_lora_bridge.testing.weights import (
    DitLoraSpec,
    LoraSpec,
    checkpoint_tensors,
    dit_lora_tensors,
    dit_tensors,
    lora_tensors,
)

if TYPE_CHECKING:
    import torch

Size = Literal["full", "tiny"]
SAFETENSORS_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}

SDXL_FULL = replace(SDXL_UNET, transformer_depth=(0, 2, 10), middle_depth=10)  # SDXL base 1.0: 2.6 B
FLUX_FULL = replace(FLUX, blocks=19, single_blocks=38)  # Flux.1: 12 B
WAN14B = DitSpec("wan", 5120, blocks=40, ffn_width=13824)  # Wan 2.1 T2V 14B
LORA_SCALE = 0.03


@dataclass(frozen=True)
class Bench:
    """One model of the check: its layout at each size, dtype, and the image it renders."""

    name: str
    kind: Literal["checkpoint", "diffusion_model"]
    full: UNetSpec | DitSpec
    tiny: UNetSpec | DitSpec
    dtype: str
    width: int
    height: int
    frames: int = 0  # video models: frames rendered

    def spec(self, size: Size) -> UNetSpec | DitSpec:
        return self.full if size == "full" else self.tiny


BENCHES = {
    "sdxl": Bench("sdxl", "checkpoint", SDXL_FULL, TINY_UNET, "float16", 1024, 1024),
    "flux": Bench("flux", "diffusion_model", FLUX_FULL, FLUX, "bfloat16", 1024, 1024),
    "wan": Bench("wan", "diffusion_model", WAN14B, WAN21_T2V, "bfloat16", 832, 480, frames=5),
}


class TorchDraw:
    """The weights module's ``Draw`` on a torch device: N(0, std²) drawn in float32, then cast."""

    def __init__(self, seed: int, dtype: str, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.dtype = dtype

    def normal(self, shape: tuple[int, ...], std: float, dtype: str | None = None) -> torch.Tensor:
        out = self.torch.randn(shape, generator=self.gen, device=self.device, dtype=self.torch.float32) * std
        return out.to(getattr(self.torch, dtype or self.dtype))

    def constant(self, shape: tuple[int, ...], value: float) -> torch.Tensor:
        return self.torch.full(shape, value, device=self.device, dtype=getattr(self.torch, self.dtype))

    def scalar(self, value: float) -> torch.Tensor:
        return self.torch.tensor(value, device=self.device, dtype=self.torch.float32)


def save_streaming(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file one tensor at a time (device → host per tensor), atomically."""
    import torch

    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for key, t in tensors.items():
        size = t.numel() * t.element_size()
        header[key] = {"dtype": SAFETENSORS_DTYPES[str(t.dtype).removeprefix("torch.")], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for t in tensors.values():
            f.write(t.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    os.replace(tmp, path)


@dataclass(frozen=True)
class BenchFiles:
    """The model file and its LoRAs: three at each rank (jobs switch between them)."""

    model: Path
    loras: dict[int, list[Path]]


def generate(bench: Bench, size: Size, ranks: tuple[int, int], folder: Path, device: str, log: Callable[[str], None]) -> BenchFiles:
    """Write ``bench``'s model and LoRAs into ``folder`` (kept when already there) and return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = bench.spec(size)
    model = folder / f"{bench.name}-{size}.safetensors"
    if not model.exists():
        start = time.perf_counter()
        draw = TorchDraw(0, bench.dtype, device)
        tensors = checkpoint_tensors(spec, draw=draw) if isinstance(spec, UNetSpec) else dit_tensors(spec, draw=draw)
        count = sum(t.numel() for t in tensors.values())
        save_streaming(model, tensors, {"format": "pt"})
        del tensors
        log(f"{bench.name}: {count / 1e9:.2f} B parameters written in {time.perf_counter() - start:.1f} s")
    low, high = ranks
    loras: dict[int, list[Path]] = {}
    for rank, seeds in ((high, (100, 101, 102)), (low, (200, 201, 202))):
        loras[rank] = []
        for seed in seeds:
            path = folder / f"{bench.name}-{size}-r{rank}-{seed}.safetensors"
            if not path.exists():
                draw = TorchDraw(seed, "float16", device)
                if isinstance(spec, UNetSpec):  # factors of std 0.03: a rank-64 delta about a third of the weights' size
                    lora_spec = LoraSpec(rank=rank, unet=spec, seed=seed, scale=LORA_SCALE, output_name=path.stem)
                    save_streaming(path, lora_tensors(lora_spec, draw=draw))
                else:
                    lora = DitLoraSpec(spec, "kohya", rank=rank, seed=seed, scale=LORA_SCALE)
                    save_streaming(path, dit_lora_tensors(lora, draw=draw))
            loras[rank].append(path)
    return BenchFiles(model, loras)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write one benchmark model and its LoRAs.")
    parser.add_argument("--bench", choices=list(BENCHES), required=True)
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--ranks", default="16,64")
    args = parser.parse_args()
    low, high = (int(r) for r in args.ranks.split(","))
    files = generate(BENCHES[args.bench], args.size, (low, high), args.folder, args.device, lambda text: print(text, flush=True))
    print(f"RESULT {json.dumps({'model': str(files.model), 'model_gib': round(files.model.stat().st_size / 2**30, 2)})}")


if __name__ == "__main__":
    main()
