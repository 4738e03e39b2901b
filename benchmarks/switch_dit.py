"""Benchmark: switching LoRAs on transformer models (Flux.1- and Wan 2.1-shaped), merge vs hot-swap.

    .venv/bin/python benchmarks/switch_dit.py [--device cpu|cuda] [--switches 6] [--steps 4] [--rank 32]

One process running ComfyUI's own modules, the generated Flux.1 (width 3072, one double and one
single block) and Wan 2.1 (1.3B width, one block) diffusion models, three LoRAs on every
targetable layer alternating on every switch:
(a) per-switch latency: LoRA node + ComfyUI loading the model for use (merge re-patches every
    targeted weight; hot-swap only records the active terms);
(b) per-step sampling overhead of hot-swap against the merged model, with no switching.
Conditioning is random of the text encoders' width (T5-XXL / UMT5-XXL cannot be generated here).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from comfyui_lora_bridge.bridge.lorafiles.inspect import inspect_file
from comfyui_lora_bridge.testing.dit_layout import FLUX, WAN21_T2V, DitSpec
from comfyui_lora_bridge.testing.inprocess import import_comfyui
from comfyui_lora_bridge.testing.weights import (
    DitLoraSpec,
    cached_dit_lora,
    cached_dit_model,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--switches", type=int, default=6)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args()
    models = {"Flux.1": (FLUX, {"width": 256, "height": 256}), "Wan 2.1 1.3B": (WAN21_T2V, {"width": 256, "height": 256, "frames": 9})}
    with tempfile.TemporaryDirectory() as tmp:
        import_comfyui(Path(tmp), args.device)
        import comfy.model_management as mm
        import comfy.sd
        import torch
        from comfyui_lora_bridge.nodes.lora_apply import ApplyLora
        from comfyui_lora_bridge.nodes.lora_handle import LoraHandle

        import nodes

        ours = ApplyLora

        def sync() -> None:
            if args.device == "cuda":
                torch.cuda.synchronize()

        print(f"device {args.device}, 3 rank-{args.rank} LoRAs on every targetable layer, alternating; "
              f"{args.switches} switches, {args.steps} steps")
        for label, (spec, size) in models.items():
            model = comfy.sd.load_diffusion_model(str(cached_dit_model(spec)))
            handles = []
            for i in range(3):
                path = cached_dit_lora(DitLoraSpec(spec, "kohya", rank=args.rank, seed=200 + i))
                info = inspect_file(path)
                handles.append(LoraHandle(path, path.name, info.sha256, {**info.to_dict(), "metadata": {}}))
            for mode in ("merge", "hotswap"):  # warm the memory cache: one read + conversion per LoRA
                ours.run(model, handles[0], 1.0, 0.0, "error", None, mode)
            cond = _conditioning(spec, torch)
            latent = _latent(spec, size, torch)

            switch_times: dict[str, list[float]] = {"merge": [], "hotswap": []}
            for mode in switch_times:  # one run of switches per mode, as a pod serving that mode sees them
                for i in range(args.switches + 1):
                    start = time.perf_counter()
                    m = ours.run(model, handles[i % 3], 1.0, 0.0, "error", None, mode).result[0]
                    mm.load_models_gpu([m])
                    sync()
                    if i:  # the first switch warms up
                        switch_times[mode].append(time.perf_counter() - start)
            step_times: dict[str, list[float]] = {"merge": [], "hotswap": []}
            applied = {mode: ours.run(model, handles[0], 1.0, 0.0, "error", None, mode).result[0] for mode in step_times}
            for i in range(4):
                for mode, m in applied.items():
                    mm.load_models_gpu([m])
                    sync()
                    start = time.perf_counter()
                    nodes.common_ksampler(m, i, args.steps, 2.0, "euler", "simple", cond, cond, latent)
                    sync()
                    if i:
                        step_times[mode].append((time.perf_counter() - start) / args.steps)
            s_merge, s_hot = (statistics.median(switch_times[k]) for k in ("merge", "hotswap"))
            p_merge, p_hot = (statistics.median(step_times[k]) for k in ("merge", "hotswap"))
            print(f"{label:14} (a) per-switch: merge {s_merge * 1000:8.1f} ms   hotswap {s_hot * 1000:7.1f} ms   "
                  f"merge/hotswap {s_merge / s_hot:6.1f}x")
            print(f"{'':14} (b) per-step  : merge {p_merge * 1000:8.1f} ms   hotswap {p_hot * 1000:7.1f} ms   "
                  f"overhead {(p_hot / p_merge - 1) * 100:+.1f} %")
            del model, applied
            mm.unload_all_models()


def _conditioning(spec: DitSpec, torch) -> list:
    generator = torch.Generator().manual_seed(0)
    extra = {"pooled_output": torch.randn((1, spec.pooled_width), generator=generator) * 0.1} if spec.family == "flux" else {}
    return [[torch.randn((1, 32, spec.text_width), generator=generator) * 0.1, extra]]


def _latent(spec: DitSpec, size: dict, torch) -> dict:
    h, w = size["height"] // 8, size["width"] // 8
    if spec.family == "wan":
        return {"samples": torch.zeros((1, 16, (size["frames"] - 1) // 4 + 1, h, w))}
    return {"samples": torch.zeros((1, 16, h, w))}


if __name__ == "__main__":
    main()
