"""Benchmark (headline): switching LoRAs between jobs, stock LoraLoader vs hot-swap.

    .venv/bin/python benchmarks/switch.py [--device cpu|cuda] [--jobs 9] [--steps 4] [--size 128]

One process running ComfyUI's own modules, the full-size SD1.5-shaped checkpoint (~1.07 B
parameters) and three rank-64 LoRAs (UNet + text encoder), the LoRA alternating on every job:
(a) per-switch latency: LoRA node + ComfyUI loading the model and text encoder for use
    (stock: re-patches every affected weight; hotswap: nothing to patch);
(b) jobs per minute: switch + prompt encoding + sampling at a small fixed step count + VAE decode;
(c) per-step sampling overhead of hotswap with no switching (same LoRA, merged vs hot-swapped).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from comfy_inprocess import import_comfyui
from comfyui_lora_bridge.bridge.localpod.sd15_layout import FULL_UNET, TINY_UNET
from comfyui_lora_bridge.bridge.localpod.weights import (
    LoraSpec,
    cached_checkpoint,
    cached_lora,
)
from comfyui_lora_bridge.bridge.lorafiles.inspect import inspect_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--jobs", type=int, default=9)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--checkpoint", choices=["full", "tiny"], default="full")
    args = parser.parse_args()
    unet = FULL_UNET if args.checkpoint == "full" else TINY_UNET
    ckpt = cached_checkpoint(args.checkpoint)
    loras = [cached_lora(LoraSpec(rank=64, unet=unet, seed=100 + i, output_name=f"bench{i}")) for i in range(3)]
    with tempfile.TemporaryDirectory() as tmp:
        names = []
        for i, path in enumerate(loras):
            (Path(tmp) / f"bench{i}.safetensors").symlink_to(path)
            names.append(f"bench{i}.safetensors")
        import_comfyui(Path(tmp), args.device)
        import comfy.model_management as mm
        import comfy.sd
        import torch
        from comfyui_lora_bridge.nodes.lora_apply import ApplyLora
        from comfyui_lora_bridge.nodes.lora_handle import LoraHandle

        import nodes

        torch.manual_seed(0)
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(ckpt), output_vae=True, output_clip=True)[:3]
        handles = []
        for name, path in zip(names, loras):
            info = inspect_file(path)
            handles.append(LoraHandle(path, name, info.sha256, {**info.to_dict(), "metadata": {}}))
        stock_node, ours = nodes.LoraLoader(), ApplyLora()
        for h in handles:  # warm the memory cache: hot-swap reads each file once
            ours.apply(model, h, 1.0, 1.0, "error", clip, "hotswap")

        def sync() -> None:
            if args.device == "cuda":
                torch.cuda.synchronize()

        def switch(label: str, k: int):
            start = time.perf_counter()
            if label == "stock":
                m, c = stock_node.load_lora(model, clip, names[k], 1.0, 1.0)
            else:
                m, c = ours.apply(model, handles[k], 1.0, 1.0, "error", clip, "hotswap")["result"]
            mm.load_models_gpu([m, c.patcher])
            sync()
            return m, c, time.perf_counter() - start

        def job(m, c, seed: int) -> float:
            start = time.perf_counter()
            pos = nodes.CLIPTextEncode().encode(c, "ohwx, a portrait")[0]
            neg = nodes.CLIPTextEncode().encode(c, "blurry")[0]
            latent = nodes.EmptyLatentImage().generate(args.size, args.size, 1)[0]
            samples = nodes.common_ksampler(m, seed, args.steps, 5.0, "euler", "normal", pos, neg, latent)[0]
            vae.decode(samples["samples"])
            sync()
            return time.perf_counter() - start

        results = {"stock": {"switch": [], "job": []}, "hotswap": {"switch": [], "job": []}}
        for label in ("stock", "hotswap"):
            switch(label, 2)  # one warm-up switch each
            for i in range(args.jobs):
                m, c, s = switch(label, i % 3)
                results[label]["switch"].append(s)
                results[label]["job"].append(s + job(m, c, i))
        # (c) no switching: the same LoRA merged vs hot-swapped, sampling only
        step_times = {}
        for mode in ("merge", "hotswap"):
            m, c = ours.apply(model, handles[0], 1.0, 1.0, "error", clip, mode)["result"]
            mm.load_models_gpu([m, c.patcher])
            pos = nodes.CLIPTextEncode().encode(c, "ohwx, a portrait")[0]
            neg = nodes.CLIPTextEncode().encode(c, "blurry")[0]
            latent = nodes.EmptyLatentImage().generate(args.size, args.size, 1)[0]
            nodes.common_ksampler(m, 0, args.steps, 5.0, "euler", "normal", pos, neg, latent)  # warm-up
            runs = []
            for i in range(max(3, args.jobs // 3)):
                sync()
                start = time.perf_counter()
                nodes.common_ksampler(m, i, args.steps, 5.0, "euler", "normal", pos, neg, latent)
                sync()
                runs.append((time.perf_counter() - start) / args.steps)
            step_times[mode] = statistics.median(runs)

    med = {label: {k: statistics.median(v) for k, v in r.items()} for label, r in results.items()}
    print(f"device {args.device}, {args.checkpoint} SD1.5-shaped checkpoint, 3 rank-64 LoRAs alternating, "
          f"{args.jobs} jobs each, {args.steps} steps at {args.size}x{args.size}")
    s_stock, s_hot = med["stock"]["switch"], med["hotswap"]["switch"]
    print(f"(a) per-switch latency : stock {s_stock * 1000:8.1f} ms   hotswap {s_hot * 1000:8.1f} ms   "
          f"stock/hotswap {s_stock / s_hot:6.1f}x")
    j_stock, j_hot = 60 / med["stock"]["job"], 60 / med["hotswap"]["job"]
    print(f"(b) jobs per minute    : stock {j_stock:8.1f}      hotswap {j_hot:8.1f}      hotswap/stock {j_hot / j_stock:6.2f}x")
    overhead = step_times["hotswap"] / step_times["merge"] - 1
    print(f"(c) per-step sampling  : merged {step_times['merge'] * 1000:7.1f} ms   hotswap {step_times['hotswap'] * 1000:7.1f} ms"
          f"   overhead {overhead * 100:+.1f} %")


if __name__ == "__main__":
    main()
