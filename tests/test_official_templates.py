"""Official ComfyUI workflow templates (graph-editor files nobody here wrote) convert, receive
LoRAs, and pass the real ComfyUI's own ``/prompt`` validation (with placeholder model files)."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import pkgutil
import re
import time
import urllib.request
from pathlib import Path

import pytest
from comfyui_lora_bridge.bridge.graphs.convert import (
    WorkflowError,
    is_ui_workflow,
    ui_to_api,
)
from comfyui_lora_bridge.bridge.graphs.lora_insertion import (
    InsertionError,
    LoraRequest,
    insert_loras,
)
from comfyui_lora_bridge.bridge.graphs.validate import validate_graph
from comfyui_lora_bridge.testing.server import LocalComfy
from support import CHECKPOINT, txt2img

pytestmark = pytest.mark.comfy
FILE = re.compile(r"^[^/\\]+\.(safetensors|ckpt|pt|pth|bin|gguf|sft|png|jpg|jpeg|webp|mp4|webm|wav|mp3|flac)$", re.I)
FOLDERS = ["checkpoints", "diffusion_models", "unet", "text_encoders", "clip", "vae", "loras", "controlnet", "clip_vision",
           "upscale_models", "style_models", "model_patches", "audio_encoders", "latent_upscale_models", "diffusers"]
LORA = "bridge_test_lora.safetensors"


def official_templates() -> list[Path]:
    """The editor workflows of every ``comfyui_workflow_templates*`` package this environment has
    (the 0.1 series keeps them in the media packages, the 0.11 series in ``…_json``)."""
    files: dict[str, Path] = {}
    for module in pkgutil.iter_modules():
        if not module.name.startswith("comfyui_workflow_templates"):
            continue
        spec = importlib.util.find_spec(module.name)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            for path in sorted(glob.glob(os.path.join(folder, "templates", "*.json"))):
                files.setdefault(os.path.basename(path), Path(path))
    return [f for _, f in sorted(files.items()) if is_ui_workflow(json.loads(f.read_text()))]


@pytest.fixture(scope="module")
def pod(weights):
    """A ComfyUI of its own, its worker held by a long job so no template ever runs (some call
    outside services): each template is validated by ``POST /prompt``, then removed from the queue."""
    with LocalComfy(extra_args=["--listen", "0.0.0.0"]) as pod:  # all interfaces, no route token: a warning
        (pod.models_dir("checkpoints") / CHECKPOINT).symlink_to(weights.checkpoint)
        holder = txt2img(seed=7)
        holder["3"]["inputs"]["steps"] = 10000  # ComfyUI's own limit: minutes of work, interrupted at the end
        status, body = post(pod, "/prompt", {"prompt": holder})
        assert status == 200, body
        for _ in range(200):  # until the holder runs
            if json.load(urllib.request.urlopen(pod.url + "/queue"))["queue_running"]:
                break
            time.sleep(0.05)
        yield pod
        post(pod, "/interrupt", {})


def post(pod: LocalComfy, path: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(pod.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def submit_and_cancel(pod: LocalComfy, graph: dict) -> tuple[int, dict]:
    """Validate by ``POST /prompt``; an accepted prompt waits behind the holder and is removed unrun."""
    status, body = post(pod, "/prompt", {"prompt": graph})
    if status == 200:
        post(pod, "/queue", {"delete": [body["prompt_id"]]})
        history = json.load(urllib.request.urlopen(f"{pod.url}/history/{body['prompt_id']}"))
        assert history == {}, f"template prompt {body['prompt_id']} ran"
    return status, body


def placeholders(pod: LocalComfy, graph: dict) -> None:
    for node in graph.values():
        for value in node["inputs"].values():
            if isinstance(value, str) and FILE.match(value):
                for folder in FOLDERS:
                    (pod.models_dir(folder) / value).touch()
                (pod.base_dir / "input" / value).touch()


def test_an_exposed_pod_without_a_token_warns(pod, comfy) -> None:
    warning = "without LORA_BRIDGE_TOKEN: anyone who reaches it can use the /lora_bridge/ routes"
    assert warning in pod.log_tail(200_000)
    assert warning not in comfy.log_tail(200_000)  # loopback, token set


def test_official_templates_accept_loras(pod) -> None:
    object_info = json.load(urllib.request.urlopen(pod.url + "/object_info"))
    (pod.models_dir("loras") / LORA).touch()
    graphs = {}
    for path in official_templates():
        try:
            graphs[path.name] = ui_to_api(json.loads(path.read_text()), object_info)
        except WorkflowError:
            continue  # needs nodes this ComfyUI lacks (audio without torchaudio, other packs)
        placeholders(pod, graphs[path.name])
    time.sleep(1.1)  # folder mtimes move on, so ComfyUI's cached file lists see the placeholders
    object_info = json.load(urllib.request.urlopen(pod.url + "/object_info"))
    accepted, with_lora, failures = 0, [], []
    # templates whose character needs the trigger: a CLIPTextEncode wired straight into a `positive` input (its
    # negative may be its own output zeroed out, its text may come from a switch or a prompt generator)
    prompted: list[tuple[str, list[str]]] = []
    for name, graph in graphs.items():
        status, body = submit_and_cancel(pod, graph)
        if status != 200:
            continue  # not valid even as converted (e.g. API nodes needing a login)
        accepted += 1
        try:
            lora_graph, report = insert_loras(graph, [LoraRequest(LORA, 0.7, 0.7, trigger_words=("ohwx",))], object_info)
        except InsertionError:
            continue  # no model loader (API-only graphs)
        validate_graph(lora_graph, object_info)  # our own check agrees with ComfyUI's
        status, body = submit_and_cancel(pod, lora_graph)
        if status != 200:
            failures.append((name, body.get("node_errors") or body.get("error")))
        with_lora.append(name)
        encoders = {k for k, n in graph.items() if n["class_type"] == "CLIPTextEncode"}
        if any(isinstance(p := n["inputs"].get("positive"), list) and p[0] in encoders for n in graph.values()):
            prompted.append((name, report.trigger_words))
        assert report.applied and all(n["class_type"] in ("LoraLoader", "LoraLoaderModelOnly", "StringConcatenate")
                                      for k, n in lora_graph.items() if k.startswith("lora:"))
    converted = len(graphs)
    print(f"official templates: {converted} converted, {accepted} accepted as converted, {len(with_lora)} with a LoRA")
    assert not failures, failures
    missing = [name for name, words in prompted if words != ["ohwx"]]
    assert len(prompted) >= 40 and not missing, missing  # every one of them gets its character's trigger
    assert converted >= 70 and accepted >= 70 and len(with_lora) >= 70, (converted, accepted, len(with_lora))
    for must in ("sdxl_simple_example.json", "flux_dev_full_text_to_image.json", "image_qwen_image.json",
                 "01_qwen_t2i_subgraphed.json", "text_to_video_wan.json", "video_wan2_2_14B_t2v.json",
                 "03_video_wan2_2_14B_i2v_subgraphed.json"):
        assert must in with_lora or must not in {p.name for p in official_templates()}, must  # the ones this ComfyUI ships
