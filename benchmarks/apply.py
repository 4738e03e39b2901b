"""Benchmark: applying LoRAs in one ComfyUI process, stock LoraLoader vs Apply LoRA (warm memory cache).

    .venv/bin/python benchmarks/apply.py [--switches 9] [--size full|tiny]

SD1.5-shaped checkpoint (full: ~1.07 B parameters) and three rank-64 LoRAs (UNet + text
encoder), alternated on every call as a pod serving many characters does. Reports, per
switch: node time (node start -> patched MODEL/CLIP objects: file read, key conversion,
add_patches) and node + weight patching (ComfyUI loading the patched model, which applies
the patches to the weights; the same work for both, see benchmarks/switch.py for hotswap).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from comfyui_lora_bridge.bridge.lorafiles.inspect import inspect_file
from comfyui_lora_bridge.testing.inprocess import import_comfyui
from comfyui_lora_bridge.testing.unet_layout import FULL_UNET, TINY_UNET
from comfyui_lora_bridge.testing.weights import (
    LoraSpec,
    cached_checkpoint,
    cached_lora,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switches", type=int, default=9)
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    args = parser.parse_args()
    unet = FULL_UNET if args.size == "full" else TINY_UNET
    print(f"generating (once, cached) the {args.size} checkpoint and three rank-64 LoRAs ...", flush=True)
    ckpt = cached_checkpoint(args.size)
    loras = [cached_lora(LoraSpec(rank=64, unet=unet, seed=100 + i, output_name=f"bench{i}")) for i in range(3)]
    with tempfile.TemporaryDirectory() as tmp:
        loras_dir = Path(tmp)
        names = []
        for i, path in enumerate(loras):
            (loras_dir / f"bench{i}.safetensors").symlink_to(path)
            names.append(f"bench{i}.safetensors")
        import_comfyui(loras_dir)
        import comfy.model_management
        import comfy.sd
        from comfyui_lora_bridge.nodes.lora_apply import ApplyLora
        from comfyui_lora_bridge.nodes.lora_handle import LoraHandle

        import nodes

        model, clip = comfy.sd.load_checkpoint_guess_config(str(ckpt), output_vae=False, output_clip=True)[:2]
        handles = []
        for name, path in zip(names, loras):
            info = inspect_file(path)
            handles.append(LoraHandle(path, name, info.sha256, {**info.to_dict(), "metadata": {}}))
        print(f"LoRA size: {loras[0].stat().st_size / 2**20:.0f} MiB each, {len(handles)} alternating", flush=True)

        stock_node, ours_node = nodes.LoraLoader(), ApplyLora
        for h in handles:  # warm our memory cache (one read + conversion per LoRA)
            ours_node.run(model, h, 1.0, 1.0, "error", clip)

        def patch(m: object) -> None:
            comfy.model_management.load_models_gpu([m])

        results: dict[str, dict[str, list[float]]] = {"stock": {"node": [], "total": []}, "ours": {"node": [], "total": []}}
        for i in range(args.switches):
            k = i % 3
            for label in ("stock", "ours"):
                start = time.perf_counter()
                if label == "stock":
                    m, _ = stock_node.load_lora(model, clip, names[k], 1.0, 1.0)
                else:
                    m, _ = ours_node.run(model, handles[k], 1.0, 1.0, "error", clip).result
                node = time.perf_counter() - start
                patch(m)
                results[label]["node"].append(node)
                results[label]["total"].append(time.perf_counter() - start)
        med = {label: {k: statistics.median(v) for k, v in r.items()} for label, r in results.items()}
        print(f"{args.size} SD1.5-shaped checkpoint, {args.switches} switches, median per switch")
        print(f"node time    : stock {med['stock']['node'] * 1000:8.1f} ms   ours {med['ours']['node'] * 1000:8.1f} ms"
              f"   stock/ours {med['stock']['node'] / med['ours']['node']:.1f}x")
        print(f"node + patch : stock {med['stock']['total'] * 1000:8.1f} ms   ours {med['ours']['total'] * 1000:8.1f} ms"
              f"   stock/ours {med['stock']['total'] / med['ours']['total']:.2f}x")


if __name__ == "__main__":
    main()
