"""Benchmark (headline): switching LoRAs between jobs: stock LoraLoader, native bypass, hot-swap.

    .venv/bin/python benchmarks/switch.py [--device cpu|cuda] [--jobs 9] [--steps 4] [--size 128]
    COMFYUI_DIR=<ComfyUI 0.33> .venv-comfy033/bin/python benchmarks/switch.py ...   (adds native bypass)

One process running ComfyUI's own modules, the full-size SD1.5-shaped checkpoint (~1.07 B
parameters) and three rank-64 LoRAs (UNet + text encoder), the LoRA alternating on every job:
(a) per-switch latency: LoRA node + ComfyUI loading the model and text encoder for use
    (stock: re-patches every affected weight; native bypass and hotswap: nothing to patch);
(b) jobs per minute: switch + prompt encoding + sampling at a small fixed step count + VAE decode;
(c) per-step sampling overhead with no switching (same LoRA: merged vs bypass vs hot-swapped);
(d) correctness against stock (merged) LoRAs: two stacked LoRAs, a strength change, a text-encoder-only
    LoRA; the deviation is given as a share of the LoRAs' own effect (0 % = same result as stock).
The native column appears where ComfyUI has ``LoraLoaderBypass`` (``comfy.sd.load_bypass_lora_for_models``).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

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

        logging.getLogger().setLevel(logging.ERROR)  # native bypass warns once per key it tries on the wrong model
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
        stock_node, ours = nodes.LoraLoader(), ApplyLora
        appliers: dict[str, Callable[[Any, Any, int, float, float], tuple[Any, Any]]] = {
            "stock": lambda m, c, k, sm, sc: stock_node.load_lora(m, c, names[k], sm, sc),
        }
        if hasattr(comfy.sd, "load_bypass_lora_for_models"):  # ComfyUI's native run-time LoRA
            from comfy_extras.nodes_lora_debug import LoraLoaderBypass

            native_node = LoraLoaderBypass()
            appliers["native"] = lambda m, c, k, sm, sc: native_node.load_lora(m, c, names[k], sm, sc)
        appliers["hotswap"] = lambda m, c, k, sm, sc: ours.run(m, handles[k], sm, sc, "error", c, "hotswap").result
        for h in handles:  # warm the memory cache: hot-swap reads each file once
            ours.run(model, h, 1.0, 1.0, "error", clip, "hotswap")

        def sync() -> None:
            if args.device == "cuda":
                torch.cuda.synchronize()

        def switch(label: str, k: int):
            start = time.perf_counter()
            m, c = appliers[label](model, clip, k, 1.0, 1.0)
            mm.load_models_gpu([m, c.patcher])
            sync()
            return m, c, time.perf_counter() - start

        def encode(c, text: str):
            return nodes.CLIPTextEncode().encode(c, text)[0]

        def sample(m, c, seed: int):
            latent = nodes.EmptyLatentImage().generate(args.size, args.size, 1)[0]
            return nodes.common_ksampler(m, seed, args.steps, 5.0, "euler", "normal",
                                         encode(c, "ohwx, a portrait"), encode(c, "blurry"), latent)[0]["samples"]

        def job(m, c, seed: int) -> float:
            start = time.perf_counter()
            vae.decode(sample(m, c, seed))
            sync()
            return time.perf_counter() - start

        labels = list(appliers)
        results = {label: {"switch": [], "job": []} for label in labels}
        for label in labels:
            switch(label, 2)  # one warm-up switch each
            for i in range(args.jobs):
                m, c, s = switch(label, i % 3)
                results[label]["switch"].append(s)
                results[label]["job"].append(s + job(m, c, i))
        # (c) no switching: the same LoRA merged, bypassed or hot-swapped, sampling only; the paths take
        # turns (stock's merged model stays patched in its own clone) so drift on the machine hits all alike
        applied = {label: appliers[label](model, clip, 0, 1.0, 1.0) for label in labels}
        runs: dict[str, list[float]] = {label: [] for label in labels}
        for i in range(max(3, args.jobs // 2) + 1):
            for label in labels:
                m, c = applied[label]
                mm.load_models_gpu([m, c.patcher])
                sync()
                start = time.perf_counter()
                sample(m, c, i)
                sync()
                if i:  # the first round warms up
                    runs[label].append((time.perf_counter() - start) / args.steps)
        step_times = {label: statistics.median(r) for label, r in runs.items()}
        correctness = compare_with_stock(appliers, model, clip, sample, encode)

    med = {label: {k: statistics.median(v) for k, v in r.items()} for label, r in results.items()}
    print(f"device {args.device}, {args.checkpoint} SD1.5-shaped checkpoint, 3 rank-64 LoRAs alternating, "
          f"{args.jobs} jobs each, {args.steps} steps at {args.size}x{args.size}")
    print("                         " + "".join(f"{label:>14}" for label in labels) + "   stock/hotswap"
          + ("   native/hotswap" if "native" in labels else ""))

    def row(title: str, values: dict[str, float], fmt: str, ratio: Callable[[float, float], float]) -> None:
        line = f"{title:25}" + "".join(f"{format(values[label], fmt):>14}" for label in labels)
        line += f"   {ratio(values['stock'], values['hotswap']):12.2f}x"
        if "native" in values:
            line += f"   {ratio(values['native'], values['hotswap']):13.2f}x"
        print(line)

    row("(a) per-switch ms", {k: v["switch"] * 1000 for k, v in med.items()}, ".1f", lambda a, b: a / b)
    row("(b) jobs per minute", {k: 60 / v["job"] for k, v in med.items()}, ".1f", lambda a, b: b / a)
    row("(c) per-step ms", {k: v * 1000 for k, v in step_times.items()}, ".1f", lambda a, b: a / b)
    print("(d) deviation from stock, share of the LoRA effect (0 % = same as stock):")
    for case, by_label in correctness.items():
        print(f"    {case:44}" + "".join(f"{label} {value * 100:7.2f} %   " for label, value in by_label.items()))


def compare_with_stock(appliers: dict[str, Callable], model: Any, clip: Any, sample: Callable, encode: Callable) -> dict[str, dict[str, float]]:
    """How far each non-stock path lands from stock merged LoRAs, as a share of the LoRAs' effect."""
    def stacked(label: str, spec: list[tuple[int, float, float]]):
        m, c = model, clip
        for k, sm, sc in spec:
            m, c = appliers[label](m, c, k, sm, sc)
        return m, c

    def deviation(out: Any, ref: Any, base: Any) -> float:
        return float((out - ref).abs().max() / (ref - base).abs().max())

    base = sample(model, clip, 5)
    cases = {"two stacked LoRAs (0 then 1)": [(0, 0.7, 0.7), (1, 0.5, 0.5)],
             "strength change (0 at 1.0, then 0.4)": [(0, 0.4, 0.4)],
             "text-encoder-only LoRA (clip 1.0)": [(2, 0.0, 1.0)]}
    report: dict[str, dict[str, float]] = {}
    for case, spec in cases.items():
        if case.startswith("strength"):
            for label in appliers:  # the same LoRA at another strength first, then the one measured
                stacked(label, [(0, 1.0, 1.0)])
        ref = sample(*stacked("stock", spec), 5)
        report[case] = {label: deviation(sample(*stacked(label, spec), 5), ref, base) for label in appliers if label != "stock"}
    # rounding control: the same two LoRAs merged by stock in the other order (equal math, other rounding);
    # a deviation of this size is how far float rounding alone carries through this model
    stacked_ref = sample(*stacked("stock", cases["two stacked LoRAs (0 then 1)"]), 5)
    reordered = sample(*stacked("stock", [(1, 0.5, 0.5), (0, 0.7, 0.7)]), 5)
    report["control: stock, stacked in the other order"] = {"stock": deviation(reordered, stacked_ref, base)}
    if "native" in appliers:  # what native bypass does with two stacked loaders: the second alone?
        only_second = sample(*stacked("stock", [(1, 0.5, 0.5)]), 5)
        native_two = sample(*stacked("native", cases["two stacked LoRAs (0 then 1)"]), 5)
        report["native two stacked vs the second alone"] = {"native": deviation(native_two, only_second, base)}
    cond = encode(stacked("stock", [(2, 0.0, 1.0)])[1], "ohwx, a portrait")[0][0]
    plain = encode(clip, "ohwx, a portrait")[0][0]
    report["text encoder output, clip-only LoRA"] = {
        label: float((encode(stacked(label, [(2, 0.0, 1.0)])[1], "ohwx, a portrait")[0][0] - cond).abs().max()
                     / (cond - plain).abs().max()) for label in appliers if label != "stock"}
    return report


if __name__ == "__main__":
    main()
