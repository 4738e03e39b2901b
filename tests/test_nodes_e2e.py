"""The node pack inside the real ComfyUI: same images as the stock loader, fetching, safety, routes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import aiohttp
import pytest
from comfyui_lora_bridge.bridge.errors import JobFailed
from comfyui_lora_bridge.bridge.graphs.prompts import with_trigger_words
from comfyui_lora_bridge.testing.file_server import Faults
from comfyui_lora_bridge.testing.weights import LoraSpec, cached_lora
from support import (
    CHECKPOINT,
    LORA_FILES,
    POD_TOKEN,
    LoraRequest,
    image_of,
    node_text,
    run_graph,
    stock,
    txt2img,
)

pytestmark = pytest.mark.comfy


def ours(graph: dict, lora_nodes: list[dict], on_mismatch: str = "error") -> dict:
    """Route the template's model and CLIP through our nodes: each item is a LoRA source node + strengths."""
    model, clip = ["4", 0], ["4", 1]
    for i, spec in enumerate(lora_nodes):
        src, apply = f"30{i}", f"31{i}"
        graph[src] = spec["source_node"]
        graph[apply] = {"class_type": "LoraBridgeApply", "inputs": {
            "model": model, "clip": clip, "lora": [src, 0], "strength_model": spec["sm"], "strength_clip": spec["sc"],
            "on_mismatch": on_mismatch}}
        model, clip = [apply, 0], [apply, 1]
    graph["3"]["inputs"]["model"] = model
    graph["6"]["inputs"]["clip"] = graph["7"]["inputs"]["clip"] = clip
    return graph


def load_file(name: str) -> dict:
    return {"class_type": "LoraBridgeLoadFile", "inputs": {"lora_name": name}}


def fetch_node(source: str, sha256: str = "", name: str = "") -> dict:
    return {"class_type": "LoraBridgeFetch", "inputs": {"source": source, "sha256": sha256, "name": name}}


async def _call(pod, method: str, path: str, token: str | None = POD_TOKEN, body: dict | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.request(method, pod.url + path, json=body, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)


def call(pod, method: str, path: str, **kw):
    return asyncio.run(_call(pod, method, path, **kw))


@pytest.mark.parametrize("layout", ["kohya", "peft", "loha"])
def test_apply_lora_is_bit_identical_to_the_stock_loader(comfy, layout) -> None:
    """Where the stock loader maps every key, ours gives its very image. The PEFT file holds the same
    factors as the kohya one, but ComfyUI maps none of its UNet attention keys (``…attn1.to_q.lora_A``):
    ours maps them, so its image is stock's image of the kohya twin."""
    name = LORA_FILES[layout]
    twin = LORA_FILES["kohya"] if layout == "peft" else name
    for strength in (1.0, 0.5, -0.5):
        expected = image_of(run_graph(comfy, stock(txt2img(seed=21), [LoraRequest(twin, strength, strength)])))
        mine = run_graph(comfy, ours(txt2img(seed=21), [{"source_node": load_file(name), "sm": strength, "sc": strength}]))
        assert (image_of(mine) == expected).all(), (layout, strength)
    (line,) = node_text(mine, "310")
    assert line.startswith(f"applied {name} (SD1.x, rank 8)") and "trigger: ohwx" in line
    matched, total = map(int, re.search(r"(\d+)/(\d+) keys", line).groups())
    assert matched == total, line  # no key dropped


def test_stack_equals_two_chained_loaders(comfy) -> None:
    a, b = LORA_FILES["kohya"], LORA_FILES["kohya_b"]
    expected = image_of(run_graph(comfy, stock(txt2img(seed=22), [LoraRequest(a, 0.8, 0.6), LoraRequest(b, -0.4, 1.0)])))
    graph = txt2img(seed=22)
    graph["40"] = {"class_type": "LoraBridgeApplyStack", "inputs": {"model": ["4", 0], "clip": ["4", 1], "on_mismatch": "error",
                   "loras": json.dumps([{"name": a, "strength_model": 0.8, "strength_clip": 0.6},
                                        {"name": b, "strength_model": -0.4, "strength_clip": 1.0},
                                        {"name": a, "strength_model": 0, "strength_clip": 0}])}}
    graph["3"]["inputs"]["model"] = ["40", 0]
    graph["6"]["inputs"]["clip"] = graph["7"]["inputs"]["clip"] = ["40", 1]
    result = run_graph(comfy, graph)
    assert (image_of(result) == expected).all()
    assert len(node_text(result, "40")) == 2  # the strength-0 entry is skipped


def test_broken_stack_json_is_refused_before_running(comfy) -> None:
    graph = txt2img()
    graph["40"] = {"class_type": "LoraBridgeApplyStack", "inputs": {"model": ["4", 0], "clip": ["4", 1], "on_mismatch": "error",
                   "loras": '[{"name": "x", "strength_model": 500}]'}}
    graph["3"]["inputs"]["model"] = ["40", 0]
    with pytest.raises(Exception, match=r"loras\[0\]\.strength_model: Input should be less than or equal to 100"):
        run_graph(comfy, graph)


def test_fetch_from_url_and_s3_in_a_graph(comfy, weights, s3, file_server) -> None:
    data = Path(weights.loras["kohya"]).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    file_server.add("/graph/char.safetensors", data)
    s3.client.put_object(Bucket="loras", Key="graph/char.safetensors", Body=data)
    expected = image_of(run_graph(comfy, stock(txt2img(seed=23), [LoraRequest(LORA_FILES["kohya"])])))
    url = file_server.url("/graph/char.safetensors")
    first = run_graph(comfy, ours(txt2img(seed=23), [{"source_node": fetch_node(url), "sm": 1.0, "sc": 1.0}]))
    assert (image_of(first) == expected).all()
    assert file_server.bytes_sent("/graph/char.safetensors") == len(data) + 1
    # same inputs: ComfyUI reuses the fetch node's output without running it
    again = run_graph(comfy, ours(txt2img(seed=24), [{"source_node": fetch_node(url), "sm": 1.0, "sc": 1.0}]))
    assert "300" in next(e.data["nodes"] for e in again.events if e.type == "cached")
    # a new node input runs it again: the disk cache answers, nothing is downloaded
    s3_graph = ours(txt2img(seed=23), [{"source_node": fetch_node("s3://loras/graph/char.safetensors", sha, "char-7"), "sm": 1.0, "sc": 1.0}])
    hits_before = call(comfy, "GET", "/lora_bridge/cache")[1]["disk"]["hits"]
    via_s3 = run_graph(comfy, s3_graph)
    assert (image_of(via_s3) == expected).all()
    assert call(comfy, "GET", "/lora_bridge/cache")[1]["disk"]["hits"] == hits_before + 1
    assert file_server.bytes_sent("/graph/char.safetensors") == len(data) + 1
    assert (comfy.models_dir("loras") / "char-7.safetensors").read_bytes() == data  # linked for the stock loader too


def test_wrong_sha256_fails_the_node_and_leaves_no_file(comfy, file_server) -> None:
    data = cached_lora(LoraSpec(layout="kohya", seed=99, output_name="never_fetched_elsewhere")).read_bytes()
    file_server.add("/graph/wrong.safetensors", data)
    graph = ours(txt2img(), [{"source_node": fetch_node(file_server.url("/graph/wrong.safetensors"), "ab" * 32, "wrong"), "sm": 1, "sc": 1}])
    with pytest.raises(JobFailed, match="SHA-256 is .* expected abab") as err:
        run_graph(comfy, graph)
    assert err.value.node_id == "300"
    assert not (comfy.models_dir("loras") / "wrong.safetensors").exists()
    blobs = comfy.models_dir("lora_bridge_store") / "blobs"
    assert hashlib.sha256(data).hexdigest() not in {p.stem for p in blobs.iterdir()}


def test_lora_for_another_base_model(comfy) -> None:
    graph = ours(txt2img(seed=25), [{"source_node": load_file(LORA_FILES["sdxl"]), "sm": 1, "sc": 1}])
    with pytest.raises(JobFailed, match=r"LoraMismatch: Apply LoRA \(Bridge\): LoRA 'test_sdxl.safetensors' is SDXL; model is SD1.x; "
                       r"1 of 5 keys match"):  # the node named as users see it
        run_graph(comfy, graph)
    base = image_of(run_graph(comfy, txt2img(seed=25)))
    skipped = run_graph(comfy, ours(txt2img(seed=25), [{"source_node": load_file(LORA_FILES["sdxl"]), "sm": 1, "sc": 1}], "skip"))
    assert (image_of(skipped) == base).all()
    assert node_text(skipped, "310")[0].startswith("skipped test_sdxl.safetensors")


def test_trigger_words_node(comfy) -> None:
    graph = txt2img(prompt="portrait of a man")
    graph["50"] = load_file(LORA_FILES["kohya_b"])
    graph["51"] = {"class_type": "LoraBridgeTriggerWords", "inputs": {"lora": ["50", 0], "text": "portrait of a man"}}
    graph["6"]["inputs"]["text"] = ["51", 0]
    assert node_text(run_graph(comfy, graph), "51") == ["zwx, portrait of a man"]
    graph["51"]["inputs"]["leave_out"] = " ZWX , other"  # the tags the user turned off
    assert node_text(run_graph(comfy, graph), "51") == ["portrait of a man"]
    assert with_trigger_words("a ZWX portrait", ["zwx"]) == "a ZWX portrait"
    assert with_trigger_words("zwxx portrait", ["zwx"]) == "zwx, zwxx portrait"
    assert with_trigger_words("", ["zwx", "zwx"]) == "zwx"


def test_memory_cache_serves_repeated_applications(comfy) -> None:
    call(comfy, "POST", "/lora_bridge/cache/clear", body={"memory": True})
    before = call(comfy, "GET", "/lora_bridge/cache")[1]["memory"]
    for strength in (0.3, 0.4, 0.6):
        run_graph(comfy, ours(txt2img(seed=26), [{"source_node": load_file(LORA_FILES["kohya_b"]), "sm": strength, "sc": strength}]))
    after = call(comfy, "GET", "/lora_bridge/cache")[1]["memory"]
    assert after["misses"] - before["misses"] == 1 and after["hits"] - before["hits"] == 2
    assert after["entries"] == 1 and after["bytes"] > 0
    (entry,) = call(comfy, "GET", "/lora_bridge/cache")[1]["memory"]["items"]
    assert entry["name"] == LORA_FILES["kohya_b"] and len(entry["converted_for"]) == 1


def test_routes_require_the_token(comfy) -> None:
    assert call(comfy, "GET", "/lora_bridge/cache", token=None)[0] == 401
    assert call(comfy, "GET", "/lora_bridge/loras", token="wrong")[0] == 401
    assert call(comfy, "POST", "/lora_bridge/prefetch", token=None, body={"source": "x"})[0] == 401
    status, body = call(comfy, "GET", "/lora_bridge/loras")
    assert status == 200
    by_name = {item["name"]: item for item in body["loras"]}
    assert by_name[LORA_FILES["loha"]]["format"] == "lycoris_loha" and by_name[LORA_FILES["sdxl"]]["family"] == "sdxl"


def test_stack_presets_are_saved_listed_replaced_and_removed_on_the_pod(comfy) -> None:
    rows = [{"name": LORA_FILES["kohya_b"], "strength_model": 0.5}, {"source": "s3://loras/x.safetensors", "name": "x",
                                                                  "sha256": "A" * 64, "enabled": False}]
    status, saved = call(comfy, "PUT", "/lora_bridge/presets/my%20look", body={"loras": rows})
    assert status == 200 and saved["name"] == "my look"
    assert saved["loras"] == rows  # the rows as given (checked as a stack node checks them)
    status, listed = call(comfy, "GET", "/lora_bridge/presets")
    assert status == 200 and [p["loras"] for p in listed["presets"] if p["name"] == "my look"] == [saved["loras"]]
    status, again = call(comfy, "PUT", "/lora_bridge/presets/my%20look", body={"loras": rows[:1]})
    assert status == 200 and again["loras"] == rows[:1] and again["updated"] >= saved["updated"]
    folder = Path(comfy.base_dir) / "user" / "lora_bridge_presets"
    assert sorted(p.name for p in folder.iterdir() if "look" in p.name) == ["my look.json"]  # no partial file left
    for path, body, why in (("my%20look", {"loras": [{"name": "a", "strength_model": 500}]}, "loras[0].strength_model"),
                            ("my%20look", {"loras": "[]"}, "loras"), ("..escape", {"loras": []}, "name"),
                            ("a*b", {"loras": []}, "name")):
        status, err = call(comfy, "PUT", f"/lora_bridge/presets/{path}", body=body)
        assert status == 400 and why in err["error"]["message"], (path, err)
    assert call(comfy, "GET", "/lora_bridge/presets", token=None)[0] == 401
    assert call(comfy, "DELETE", "/lora_bridge/presets/my%20look")[0] == 200
    status, err = call(comfy, "DELETE", "/lora_bridge/presets/my%20look")
    assert status == 404 and err["error"]["type"] == "not_found"


def test_lora_info_and_which_loras_fit_a_model_file(comfy, weights) -> None:
    status, info = call(comfy, "GET", f"/lora_bridge/loras/info?name={LORA_FILES['kohya']}")
    assert status == 200 and info["sha256"] == hashlib.sha256(Path(weights.loras["kohya"]).read_bytes()).hexdigest()
    assert info["trigger_words"] == ["ohwx"] and info["family"] == "sd15" and info["metadata"] and info["source"] == LORA_FILES["kohya"]
    assert call(comfy, "GET", "/lora_bridge/loras/info?name=../../comfy/sd.py")[0] == 400  # only what the loras folders list
    status, body = call(comfy, "GET", "/lora_bridge/loras/info?name=test_kohya.safetensor")
    assert status == 404 and "did you mean" in body["error"]["message"]
    assert call(comfy, "GET", "/lora_bridge/loras/info")[0] == 400
    status, listing = call(comfy, "GET", f"/lora_bridge/loras?model_folder=checkpoints&model_name={CHECKPOINT}")
    assert status == 200 and listing["model"]["family"] == "sd15" and listing["model"]["family_name"] == "SD1.x"
    fits = {item["name"]: item["fits_model"] for item in listing["loras"]}
    assert fits[LORA_FILES["kohya"]] is fits[LORA_FILES["peft"]] is True and fits[LORA_FILES["sdxl"]] is False
    damaged = comfy.models_dir("checkpoints") / "damaged.safetensors"
    damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    time.sleep(1.1)  # the folder's mtime moves on: ComfyUI lists the new file
    try:
        status, listing = call(comfy, "GET", "/lora_bridge/loras?model_folder=checkpoints&model_name=damaged.safetensors")
    finally:
        damaged.unlink()
    assert status == 200 and listing["model"]["family"] == "unknown" and listing["model"]["note"].startswith("unreadable")
    assert all(item["fits_model"] is not False for item in listing["loras"])  # nothing marked on a guess
    assert call(comfy, "GET", "/lora_bridge/loras?model_folder=checkpoints&model_name=none.safetensors")[0] == 404
    assert call(comfy, "GET", "/lora_bridge/loras?model_folder=checkpoints")[0] == 400
    assert call(comfy, "GET", f"/lora_bridge/loras?model_folder=vae&model_name={CHECKPOINT}")[0] == 400


def test_prefetch_then_run_downloads_nothing(comfy, weights, file_server) -> None:
    data = Path(weights.loras["peft"]).read_bytes()
    file_server.add("/pre/brand.safetensors", data)
    url = file_server.url("/pre/brand.safetensors")
    status, body = call(comfy, "POST", "/lora_bridge/prefetch", body={"source": url, "name": "brand-abc", "memory": True})
    assert status == 200 and body["sha256"] == hashlib.sha256(data).hexdigest() and body["in_memory"]
    sent = file_server.bytes_sent("/pre/brand.safetensors")
    run_graph(comfy, ours(txt2img(seed=27), [{"source_node": fetch_node(url, "", "brand-abc"), "sm": 1, "sc": 1}]))
    assert file_server.bytes_sent("/pre/brand.safetensors") == sent + 1  # only the revalidation of a hash-less source
    assert "brand-abc.safetensors" in {n for e in call(comfy, "GET", "/lora_bridge/cache")[1]["disk"]["items"] for n in e["names"]}
    status, body = call(comfy, "POST", "/lora_bridge/prefetch", body={"source": "http://169.254.169.254/x"})
    assert status == 400 and body["error"]["type"] == "refused" and "169.254.169.254" in body["error"]["message"]
    assert call(comfy, "POST", "/lora_bridge/prefetch", body={"nope": 1})[0] == 400


def test_interrupt_stops_a_stalled_fetch(comfy, weights, file_server) -> None:
    data = Path(weights.loras["kohya_b"]).read_bytes()
    file_server.add("/slow/x.safetensors", data, Faults(stall_at=1_000_000, stall_seconds=20))
    graph = ours(txt2img(), [{"source_node": fetch_node(file_server.url("/slow/x.safetensors"), "", "slow"), "sm": 1, "sc": 1}])
    timer = threading.Timer(3.0, lambda: call(comfy, "POST", "/interrupt"))
    timer.start()
    started = time.monotonic()
    with pytest.raises(JobFailed, match="interrupted"):
        run_graph(comfy, graph)
    assert time.monotonic() - started < 15
    assert not (comfy.models_dir("loras") / "slow.safetensors").exists()


def test_nodes_in_object_info_and_front_end(comfy) -> None:
    status, info = call(comfy, "GET", "/object_info")
    names = {"LoraBridgeLoadFile", "LoraBridgeFetch", "LoraBridgeApply", "LoraBridgeApplyStack", "LoraBridgeTriggerWords"}
    assert names <= set(info)
    for name in names:
        node = info[name]
        assert node["category"] == "LoRA Bridge" and node["display_name"].endswith("(Bridge)")
        for section in ("required", "optional"):  # what the editor shows (hidden inputs have no widget)
            for spec in node["input"].get(section, {}).values():
                assert spec[1].get("tooltip"), (name, spec)
    status, roles = call(comfy, "GET", "/lora_bridge/nodes", token=None)  # what the editor's views go by, no token
    assert status == 200 and set(roles.values()) == names | {"LoraBridgeSaveTrainedLora"} and roles["apply_stack"] in info
    kind, options = info["LoraBridgeApply"]["input"]["required"]["on_mismatch"]  # a V3 combo
    assert (kind, options["options"], options["default"]) == ("COMBO", ["error", "skip", "apply anyway"], "error")
    assert info["LoraBridgeApply"]["input"]["required"]["strength_model"][1]["min"] == -100.0
    async def js() -> tuple[int, str]:
        async with aiohttp.ClientSession() as s, s.get(comfy.url + "/extensions/comfyui-lora-bridge/lora_bridge.js") as r:
            return r.status, await r.text()

    status, text = asyncio.run(js())
    assert status == 200 and "registerExtension" in text
    if shutil.which("node"):
        check = subprocess.run(["node", "--input-type=module", "--check"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, check.stderr

