"""``lora-bridge demo``: the bridge service with an embedded CPU pod, end to end.

Starts a local ComfyUI with this node pack, starts the bridge service in front of it,
uploads a generated LoRA for "demo character 1" to the registry, asks for the same prompt
for that character and without any LoRA while streaming progress over Server-Sent Events,
then prints both job records and writes both images.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from ..bridge.api_client import BridgeClient, ProgressPrinter
from ..bridge.http.app import create_app
from ..bridge.jobs.database import Database
from ..bridge.jobs.uploads import LoraUploads
from ..bridge.lorafiles.sources import FetchPolicy
from ..bridge.pods.pool import PodConfig, PodPool
from ..bridge.settings import settings
from .server import LocalComfy, free_port
from .weights import LoraSpec, cached_checkpoint, cached_lora


def _scenario(client: BridgeClient, lora_file: Path, out_dir: Path, params: dict[str, Any],
              strength: float) -> dict[str, dict[str, Any]]:
    lora = client.upload("demo_character.safetensors", lora_file.read_bytes(),
                         {"name": "demo character 1", "character_id": "1", "status": "ready",
                          "fallback_style": "soft portrait lighting"})
    print(f"registered LoRA {lora['id']} for character 1: {lora['family']}, rank {lora['rank']}, "
          f"trigger word {lora['trigger_word']!r}", flush=True)
    records = {}
    for label, extra in (("with_lora", {"character_id": 1, "lora_strength": strength}), ("without_lora", {})):
        job = client.json("POST", "/v1/generations", {"template": "sd15_txt2img", "params": params, **extra})
        show = ProgressPrinter(label, sys.stdout)
        for event in client.events(job["id"]):
            show(event.event, event.data)
        records[label] = client.json("GET", f"/v1/generations/{job['id']}")
        if records[label]["status"] != "succeeded":
            raise SystemExit(f"the {label} job {records[label]['status']}: {records[label].get('reason')}")
        (out_dir / f"{label}.png").write_bytes(client.request("GET", f"/v1/generations/{job['id']}/outputs/0").body)
    return records


def run_demo(out_dir: Path, steps: int = 4, size: int = 64, strength: float = 1.0) -> dict[str, Path]:
    """Run the scenario above; returns the two PNGs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    print("preparing the tiny SD1.5-layout checkpoint and a demo LoRA (generated once, cached) ...", flush=True)
    ckpt = cached_checkpoint("tiny")
    lora = cached_lora(LoraSpec(layout="kohya", output_name="demo_character"))
    store = settings().local_store_dir
    started = time.monotonic()
    print("starting a local ComfyUI on the CPU (the embedded pod) ...", flush=True)
    with LocalComfy(env={"LORA_BRIDGE_LOCAL_ROOTS": str(store)}) as pod:
        (pod.models_dir("checkpoints") / "sd15-tiny.safetensors").symlink_to(ckpt)
        print(f"ComfyUI ready at {pod.url} in {time.monotonic() - started:.0f} s", flush=True)
        params = {"checkpoint": "sd15-tiny.safetensors", "prompt": "portrait of a smiling woman", "seed": 42,
                  "steps": steps, "cfg": 5.0, "width": size, "height": size, "filename_prefix": "demo"}

        async def main() -> dict[str, dict[str, Any]]:
            db = Database(str(out_dir / "bridge.sqlite3"))
            configured = dataclasses.replace(settings(), api_keys=())
            app = create_app(db, PodPool([PodConfig(pod.url, configured.pod_route_token)], retry_delays=configured.retry_delays), out_dir / "generations",
                             configured, FetchPolicy.configured(), LoraUploads(store))
            runner = web.AppRunner(app)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            print(f"bridge service at http://127.0.0.1:{port} (embedded defaults: SQLite, local files)", flush=True)
            try:
                client = BridgeClient(f"http://127.0.0.1:{port}")
                return await asyncio.to_thread(_scenario, client, lora, out_dir, params, strength)
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
