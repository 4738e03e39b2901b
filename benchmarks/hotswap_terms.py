"""Benchmark: hot-swap's per-step cost on Flux-shaped layers, terms one by one vs stacked, against merged weights.

    .venv/bin/python benchmarks/hotswap_terms.py [--width 1536] [--tokens 1024] [--rank 64] [--reps 9]

One Flux double-block's fused ``qkv`` (width -> 3 x width) and MLP in (width -> 4 x width) linears on
the CPU, float32. Diffusers-layout LoRAs target ``to_q``/``to_k``/``to_v`` separately, i.e. three row
slices of the one ``qkv`` weight. Rows: 1 LoRA and 3 stacked LoRAs; per step (medians of ``--reps``
interleaved rounds): merged (the plain layer, what merged weights cost), hot-swap with each term on its
own (``OneByOne``, as before ``hotswap.LinearStack``), and hot-swap as it runs now (``LinearStack``: one
down projection per layer, the ups accumulated into the output in place). Ratios are against merged.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from comfyui_lora_bridge.nodes import hotswap


def terms_for(width: int, rank: int, loras: int) -> tuple[list[hotswap.Term], list[hotswap.Term]]:
    """(qkv terms, mlp terms) of ``loras`` diffusers-layout LoRAs."""
    qkv, mlp = [], []
    for _ in range(loras):
        for part in range(3):
            qkv.append(hotswap.Term(torch.randn(rank, width) * 0.01, torch.randn(width, rank) * 0.01, 1.0, None,
                                    rows=(part * width, width, 3 * width)))
        mlp.append(hotswap.Term(torch.randn(rank, width) * 0.01, torch.randn(4 * width, rank) * 0.01, 1.0, None))
    return qkv, mlp


class OneByOne:
    """A term added the way hot-swap added them before ``LinearStack``: two matmuls, the delta
    zero-padded to the fused layer's width, then added to the output."""

    def __init__(self, term: hotswap.Term) -> None:
        self.term = term

    def add_to(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = self.term
        delta = torch.nn.functional.linear(torch.nn.functional.linear(x, t.down), t.up) * t.scale
        if t.rows is not None:
            first, count, width = t.rows
            delta = torch.nn.functional.pad(delta, (first, width - first - count))
        return y + delta


def step(layers: list[torch.nn.Linear], terms: list[list], x: torch.Tensor) -> None:
    """One forward of each layer with its terms added (``terms[i]``: what runs on ``layers[i]``)."""
    for layer, on_layer in zip(layers, terms):
        y = layer(x)
        for term in on_layer:
            y = term.add_to(y, x)


def timed(variants: dict[str, tuple[list[torch.nn.Linear], list[list], torch.Tensor]], reps: int) -> dict[str, float]:
    """Median ms per step of each variant, timed in interleaved rounds (so drift hits all alike)."""
    for args in variants.values():
        step(*args)  # casts and stacking happen here, once
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, args in variants.items():
            start = time.perf_counter()
            step(*args)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1536)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args()
    torch.manual_seed(0)
    w = args.width
    layers = [torch.nn.Linear(w, 3 * w), torch.nn.Linear(w, 4 * w)]
    x = torch.randn(1, args.tokens, w)
    print(f"CPU ({torch.get_num_threads()} threads), float32, width {w}, {args.tokens} tokens, rank {args.rank}: "
          f"qkv {w}->{3 * w} + mlp {w}->{4 * w}, median of {args.reps} interleaved rounds (ms per step)")
    variants: dict[str, tuple[list[torch.nn.Linear], list[list], torch.Tensor]] = {"merged": (layers, [[], []], x)}
    for loras in (1, 3):
        qkv, mlp = terms_for(w, args.rank, loras)
        stacked = hotswap.TermSet({1: qkv, 2: mlp})
        variants[f"{loras} one by one"] = (layers, [[OneByOne(t) for t in qkv], [OneByOne(t) for t in mlp]], x)
        variants[f"{loras} stacked"] = (layers, [list(stacked.get(1)), list(stacked.get(2))], x)
    with torch.inference_mode():
        ms = timed(variants, args.reps)
    merged = ms["merged"]
    for loras in (1, 3):
        separate, together = ms[f"{loras} one by one"], ms[f"{loras} stacked"]
        print(f"{loras} LoRA{'s' if loras > 1 else ' '}: merged {merged:7.1f}   terms one by one {separate:7.1f} "
              f"({separate / merged - 1:+.1%})   stacked {together:7.1f} ({together / merged - 1:+.1%})")


if __name__ == "__main__":
    main()
