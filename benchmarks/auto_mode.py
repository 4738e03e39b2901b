"""Benchmark: the ``auto`` apply mode against the stock LoraLoader and against fixed hot-swap, one ComfyUI.

    .venv/bin/python benchmarks/auto_mode.py [--checkpoint tiny|full] [--jobs 8] [--steps 8] [--size 64]

One local CPU ComfyUI with the pack and three rank-64 LoRAs. Each path runs the same graphs over HTTP
(request to image, distinct seeds, interleaved path by path so drift hits all alike) in two patterns:
*repeat* (one LoRA, the same strengths, job after job: what a pod rendering one character for hours
does) and *switch* (the three LoRAs in turn). Per pattern: the median wall time per job of stock
(``LoraLoader``: ComfyUI patches the weights, and keeps the patched model while the inputs repeat),
of ``hotswap`` and of ``auto`` (hot-swap on a switch, merge on a repeat), and the ratio of each to
stock (goal: ``auto`` ≤ 1.0 on every row). The first job of each path is a warm-up, not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from comfyui_lora_bridge.bridge.graphs.lora_insertion import LoraRequest, insert_loras
from comfyui_lora_bridge.bridge.graphs.templates import load_template
from comfyui_lora_bridge.bridge.pods.client import PodClient
from comfyui_lora_bridge.testing.server import LocalComfy
from comfyui_lora_bridge.testing.unet_layout import FULL_UNET, TINY_UNET
from comfyui_lora_bridge.testing.weights import LoraSpec, cached_checkpoint, cached_lora

PATHS = ("stock", "hotswap", "auto")


def graph(path: str, lora: str, seed: int, steps: int, size: int) -> dict[str, Any]:
    base = load_template("sd15_txt2img").render(checkpoint="bench.safetensors", prompt="a portrait", seed=seed,
                                                steps=steps, cfg=5.0, width=size, height=size)
    request = LoraRequest(lora, 0.8, 0.8, family="sd15", text_encoder=True)
    if path == "stock":
        return insert_loras(base, [request], mode="stock")[0]
    out, _ = insert_loras(base, [request], mode="pack", apply_mode="hotswap" if path == "hotswap" else "auto")
    return out


async def one(client: PodClient, prompt: dict[str, Any]) -> float:
    start = time.perf_counter()
    await client.run(prompt)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--jobs", type=int, default=8, help="timed jobs per path and pattern")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    unet = FULL_UNET if args.checkpoint == "full" else TINY_UNET
    loras = [cached_lora(LoraSpec(rank=64, unet=unet, seed=200 + i, output_name=f"auto{i}")) for i in range(3)]
    with LocalComfy() as pod:
        (pod.models_dir("checkpoints") / "bench.safetensors").symlink_to(cached_checkpoint(args.checkpoint))
        names = []
        for i, path in enumerate(loras):
            (pod.models_dir("loras") / f"auto{i}.safetensors").symlink_to(path)
            names.append(f"auto{i}.safetensors")
        print(f"CPU ComfyUI, {args.checkpoint} SD1.5-shaped checkpoint, rank-64 LoRAs, {args.steps} steps at "
              f"{args.size}x{args.size}, {args.jobs} timed jobs per path and pattern (medians, request to image)")

        async def go() -> dict[tuple[str, str], float]:
            times: dict[tuple[str, str], list[float]] = {(p, k): [] for p in PATHS for k in ("repeat", "switch")}
            async with PodClient(pod.url, timeout=600) as client:
                seed = 0
                for pattern in ("repeat", "switch"):
                    for job in range(args.jobs + 1):
                        for path in PATHS:  # interleaved: each path's jobs follow the same pattern of LoRAs
                            lora = names[0] if pattern == "repeat" else names[job % 3]
                            seed += 1
                            took = await one(client, graph(path, lora, seed, args.steps, args.size))
                            if job:
                                times[(path, pattern)].append(took)
            return {key: statistics.median(values) for key, values in times.items()}

        medians = asyncio.run(go())
    for pattern in ("repeat", "switch"):
        stock = medians[("stock", pattern)]
        cells = "   ".join(f"{p} {medians[(p, pattern)] * 1000:7.1f} ms" for p in PATHS)
        ratios = "   ".join(f"{p}/stock {medians[(p, pattern)] / stock:.2f}" for p in PATHS[1:])
        print(f"{pattern:<7}: {cells}   |   {ratios}")
    print(json.dumps({f"{p}/{k}": round(v * 1000, 1) for (p, k), v in medians.items()}))


if __name__ == "__main__":
    main()
