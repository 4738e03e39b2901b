"""``lora-bridge demo``: a local CPU ComfyUI renders the same prompt with and without a LoRA."""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

from .localpod.server import LocalComfy
from .localpod.weights import LoraSpec, cached_checkpoint, cached_lora
from .lora_insertion import LoraRequest, insert_loras
from .pod_client import PodClient, PodEvent
from .templates import load_template


class ProgressPrinter:
    """Prints a job's node and step progress on one line (a new line per node on non-TTYs)."""

    def __init__(self, label: str, graph: dict[str, Any]) -> None:
        self.label = label
        self.classes = {k: v.get("class_type", "?") for k, v in graph.items()}
        self.tty = sys.stdout.isatty()

    def _show(self, text: str, final: bool = False) -> None:
        if self.tty:
            print(f"\r\033[K[{self.label}] {text}", end="\n" if final else "", flush=True)
        else:
            print(f"[{self.label}] {text}", flush=True)

    def __call__(self, event: PodEvent) -> None:
        d = event.data
        if event.type == "started":
            self._show("started")
        elif event.type == "executing" and d.get("node") is not None:
            self._show(f"node {d['node']} ({self.classes.get(d['node'], '?')})")
        elif event.type == "progress":
            node = d.get("node")
            bar = "#" * int(20 * d["value"] / max(d["max"], 1))
            text = f"node {node} ({self.classes.get(node, '?')}) step {d['value']}/{d['max']} [{bar:<20}]"
            if self.tty or d["value"] == d["max"]:
                self._show(text)
        elif event.type == "success":
            self._show("done", final=True)


async def _render(pod: LocalComfy, graphs: dict[str, dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    written = {}
    async with PodClient(pod.url, timeout=300) as client:
        for label, graph in graphs.items():
            result = await client.run(graph, on_event=ProgressPrinter(label, graph))
            path = out_dir / f"{label}.png"
            path.write_bytes(result.files[0].data)
            written[label] = path
    return written


def run_demo(out_dir: Path, steps: int = 4, size: int = 64, strength: float = 1.0) -> dict[str, Path]:
    """Start ComfyUI, make the tiny checkpoint and a LoRA, render with and without it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    print("preparing the tiny SD1.5-layout checkpoint and a demo LoRA (generated once, cached) ...", flush=True)
    ckpt = cached_checkpoint("tiny")
    lora = cached_lora(LoraSpec(layout="kohya", output_name="demo_character"))
    started = time.monotonic()
    print("starting a local ComfyUI on the CPU ...", flush=True)
    with LocalComfy() as pod:
        print(f"ComfyUI ready at {pod.url} in {time.monotonic() - started:.0f} s", flush=True)
        (pod.models_dir("checkpoints") / "sd15-tiny.safetensors").symlink_to(ckpt)
        (pod.models_dir("loras") / "demo_character.safetensors").symlink_to(lora)
        base = load_template("sd15_txt2img").render(
            checkpoint="sd15-tiny.safetensors", prompt="ohwx, portrait of a smiling woman", seed=42,
            steps=steps, cfg=5.0, width=size, height=size, filename_prefix="demo",
        )
        graphs = {
            "without_lora": base,
            "with_lora": insert_loras(base, [LoraRequest("demo_character.safetensors", strength, strength)])[0],
        }
        written = asyncio.run(_render(pod, graphs, out_dir))
    digests = {label: hashlib.sha256(path.read_bytes()).hexdigest()[:12] for label, path in written.items()}
    for label, path in written.items():
        print(f"{label:>13}: {path}  (sha256 {digests[label]})")
    print("the LoRA changed the image" if len(set(digests.values())) == 2 else "WARNING: both images are identical")
    return written
