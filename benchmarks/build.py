"""Benchmark: convert + insert LoRAs + validate, on the largest official workflow templates.

    .venv/bin/python benchmarks/build.py [--repeat 200]

Starts a local ComfyUI once for its /object_info, then times the bridge's work per graph
(graph-editor JSON -> API format, two LoRAs inserted with trigger words, validation) on
the five largest templates that this ComfyUI can run. Goal: median under 5 ms.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import time
import urllib.request

import comfyui_workflow_templates_media_image as image
import comfyui_workflow_templates_media_video as video
from comfyui_lora_bridge.bridge.errors import LoraBridgeError
from comfyui_lora_bridge.bridge.graphs.convert import is_ui_workflow, ui_to_api
from comfyui_lora_bridge.bridge.graphs.lora_insertion import LoraRequest, insert_loras
from comfyui_lora_bridge.bridge.graphs.validate import GraphInvalid, validate_graph
from comfyui_lora_bridge.testing.server import LocalComfy

LORAS = [LoraRequest("a.safetensors", 0.8, 0.6, trigger_words=("ohwx",)), LoraRequest("b.safetensors", 0.5, 0.5)]


def build(workflow: dict, object_info: dict) -> None:
    graph, _ = insert_loras(ui_to_api(workflow, object_info), LORAS, object_info)
    try:
        validate_graph(graph, object_info)
    except GraphInvalid:
        pass  # model files are not on this pod; the work is the same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    with LocalComfy() as pod:
        object_info = json.load(urllib.request.urlopen(pod.url + "/object_info"))
    candidates = []
    for pkg in (image, video):
        for path in glob.glob(os.path.join(os.path.dirname(pkg.__file__), "templates", "*.json")):
            data = json.load(open(path))
            if not is_ui_workflow(data):
                continue
            try:
                build(data, object_info)
            except LoraBridgeError:
                continue  # nodes this ComfyUI lacks, or no model loader
            candidates.append((len(json.dumps(data)), os.path.basename(path), data))
    candidates.sort(reverse=True)
    print(f"{len(candidates)} templates build; timing the 5 largest, {args.repeat} runs each")
    for size, name, data in candidates[:5]:
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            build(data, object_info)
            times.append(time.perf_counter() - start)
        nodes = len(data["nodes"]) + sum(len(s.get("nodes", [])) for s in (data.get("definitions") or {}).get("subgraphs", []))
        print(f"{name:50s} {size / 1024:6.1f} KiB {nodes:3d} nodes  median {statistics.median(times) * 1000:6.2f} ms"
              f"  p95 {sorted(times)[int(len(times) * 0.95)] * 1000:6.2f} ms")


if __name__ == "__main__":
    main()
