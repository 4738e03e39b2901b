"""``lora-bridge demo``: the bridge service with an embedded CPU pod, end to end.

Starts a local ComfyUI with this node pack, starts the bridge service in front of it,
uploads a generated LoRA for "demo character 1" to the registry, asks for the same prompt
for that character and without any LoRA while streaming progress over Server-Sent Events,
then prints both job records and writes both images.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from .config import cache_root
from .localpod.server import LocalComfy, free_port
from .localpod.weights import LoraSpec, cached_checkpoint, cached_lora
from .lorafiles.sources import FetchPolicy
from .pod_pool import PodConfig, PodPool
from .registry import Database
from .service import create_app
from .uploads import LoraUploads


class ProgressPrinter:
    """Prints a job's node and step progress on one line (a new line per node on non-TTYs)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stdout.isatty()

    def _show(self, text: str, final: bool = False) -> None:
        if self.tty:
            print(f"\r\033[K[{self.label}] {text}", end="\n" if final else "", flush=True)
        else:
            print(f"[{self.label}] {text}", flush=True)

    def __call__(self, event: str, d: dict[str, Any]) -> None:
        if event == "warning":
            self._show(f"warning: {d['message']}", final=True)
        elif event == "started":
            self._show("started")
        elif event == "executing":
            self._show(f"node {d.get('node')}")
        elif event == "progress":
            bar = "#" * int(20 * d["value"] / max(d["max"], 1))
            if self.tty or d["value"] == d["max"]:
                self._show(f"node {d.get('node')} step {d['value']}/{d['max']} [{bar:<20}]")
        elif event == "success":
            self._show("done", final=True)


async def _sse(session: aiohttp.ClientSession, url: str, show: ProgressPrinter) -> None:
    async with session.get(url) as resp:
        event = None
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event:
                show(event, json.loads(line[6:]))


async def _scenario(api: str, lora_file: Path, out_dir: Path, params: dict[str, Any], strength: float) -> dict[str, dict[str, Any]]:
    records = {}
    async with aiohttp.ClientSession() as session:
        form = aiohttp.FormData()
        for key, value in (("name", "demo character 1"), ("character_id", "1"), ("status", "ready"),
                           ("fallback_style", "soft portrait lighting")):
            form.add_field(key, value)
        form.add_field("file", lora_file.read_bytes(), filename="demo_character.safetensors")
        async with session.post(f"{api}/v1/loras/upload", data=form) as resp:
            lora = await resp.json()
            if resp.status != 201:
                raise SystemExit(f"registering the demo LoRA failed: {lora}")
        print(f"registered LoRA {lora['id']} for character 1: {lora['family']}, rank {lora['rank']}, "
              f"trigger word {lora['trigger_word']!r}", flush=True)
        for label, extra in (("with_lora", {"character_id": 1, "lora_strength": strength}), ("without_lora", {})):
            async with session.post(f"{api}/v1/generations", json={"template": "sd15_txt2img", "params": params, **extra}) as resp:
                job = await resp.json()
            await _sse(session, f"{api}/v1/generations/{job['id']}/events", ProgressPrinter(label))
            async with session.get(f"{api}/v1/generations/{job['id']}") as resp:
                records[label] = await resp.json()
            async with session.get(f"{api}/v1/generations/{job['id']}/outputs/0") as resp:
                (out_dir / f"{label}.png").write_bytes(await resp.read())
    return records


def run_demo(out_dir: Path, steps: int = 4, size: int = 64, strength: float = 1.0) -> dict[str, Path]:
    """Run the scenario above; returns the two PNGs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    print("preparing the tiny SD1.5-layout checkpoint and a demo LoRA (generated once, cached) ...", flush=True)
    ckpt = cached_checkpoint("tiny")
    lora = cached_lora(LoraSpec(layout="kohya", output_name="demo_character"))
    store = cache_root() / "bridge-local-store"
    started = time.monotonic()
    print("starting a local ComfyUI on the CPU (the embedded pod) ...", flush=True)
    with LocalComfy(env={"LORA_BRIDGE_LOCAL_ROOTS": str(store)}) as pod:
        (pod.models_dir("checkpoints") / "sd15-tiny.safetensors").symlink_to(ckpt)
        print(f"ComfyUI ready at {pod.url} in {time.monotonic() - started:.0f} s", flush=True)
        params = {"checkpoint": "sd15-tiny.safetensors", "prompt": "portrait of a smiling woman", "seed": 42,
                  "steps": steps, "cfg": 5.0, "width": size, "height": size, "filename_prefix": "demo"}

        async def main() -> dict[str, dict[str, Any]]:
            db = Database(str(out_dir / "bridge.sqlite3"))
            app = create_app(db, PodPool([PodConfig(pod.url)]), out_dir / "generations", [], FetchPolicy.from_env(),
                             LoraUploads(store))
            runner = web.AppRunner(app)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            print(f"bridge service at http://127.0.0.1:{port} (embedded defaults: SQLite, local files)", flush=True)
            try:
                return await _scenario(f"http://127.0.0.1:{port}", lora, out_dir, params, strength)
            finally:
                await runner.cleanup()

        records = asyncio.run(main())
    for label, record in records.items():
        print(f"--- job record, {label} ---")
        print(json.dumps({k: record.get(k) for k in ("id", "status", "pod", "applied", "trigger_words", "warnings",
                                                      "gpu_seconds", "cost", "outputs")}, indent=2))
    written = {label: out_dir / f"{label}.png" for label in records}
    for label, path in written.items():
        print(f"{label:>13}: {path}")
    same = written["with_lora"].read_bytes() == written["without_lora"].read_bytes()
    print("WARNING: both images are identical" if same else "the LoRA changed the image")
    return written
