"""The seed-compatible routes (``/compat``), called with the request examples of the teams'
product documents verbatim, against the real service and ComfyUI: each makes the same job (LoRA,
strength, trigger word, image) as its ``/v1`` equivalent; the seeds' ranges are enforced; the
brand store, preloading, cache routes and the trainer's signed webhook work as the seeds say.
The video templates are the shipped Wan 2.2 ones with generated models (``video_templates.py``)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
import urllib.request
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from comfyui_lora_bridge.bridge.jobs.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
)
from comfyui_lora_bridge.testing.dit_layout import WAN22_EXPERT
from comfyui_lora_bridge.testing.weights import DitLoraSpec, cached_dit_lora
from PIL import Image
from service_harness import KEY, Service
from support import CHECKPOINT, POD_TOKEN, frames_of
from video_templates import install_video_models

pytestmark = pytest.mark.comfy
TRAINER_SECRET = "trainer-secret"
SMALL_VIDEO = {"width": 64, "height": 64, "length": 5, "steps": 2}
SD15_V1 = {"checkpoint": CHECKPOINT, "width": 64, "height": 64, "steps": 3}  # the deployment's, written out in /v1 requests
DEFAULTS = {"sd15_txt2img": SD15_V1, "wan22_t2v": SMALL_VIDEO, "wan22_i2v": SMALL_VIDEO}


def put(s3, key: str, path: Path | str) -> str:
    s3.client.put_object(Bucket="loras", Key=key, Body=Path(path).read_bytes())
    return f"s3://loras/{key}"


@pytest.fixture(scope="module")
def wan_lora() -> Path:
    return cached_dit_lora(DitLoraSpec(WAN22_EXPERT, "kohya"))


@pytest.fixture(scope="module")
def service(comfy, s3, weights, wan_lora, tmp_path_factory):
    put(s3, "brandstore/brand_abc123/style.safetensors", weights.loras["kohya"])  # seed 002's layout, not registered
    put(s3, "brandstore/brand_pre/lora.safetensors", weights.loras["kohya_b"])
    put(s3, "brandstore/brand_idle/brand_idle.safetensors", weights.loras["peft"])
    templates = install_video_models(comfy, tmp_path_factory.mktemp("compat-templates"), ("wan22_t2v", "wan22_i2v"))
    svc = Service([comfy.url], tmp_path_factory.mktemp("compat-svc"), s3.endpoint, env={
        "LORA_BRIDGE_TEMPLATES_DIR": str(templates), "LORA_BRIDGE_BRAND_STORE": "s3://loras/brandstore",
        "LORA_PRELOAD_BRANDS": "brand_pre", "LORA_BRIDGE_TRAINER_BUCKET": "loras",
        "LORA_BRIDGE_TRAINER_SECRET": TRAINER_SECRET, "LORA_BRIDGE_COMPAT_DEFAULTS": json.dumps(DEFAULTS)}).start()
    yield svc
    svc.kill()


def pixels(service: Service, job: dict) -> np.ndarray:
    status, data = service.call("GET", f"/v1/generations/{job['id']}/outputs/0")
    assert status == 200
    if data[:4] != b"\x89PNG":
        return frames_of(data)  # a clip
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)


def same_job(service: Service, compat: dict, native_request: dict) -> dict:
    """Run the /v1 equivalent; assert both applied the same LoRAs, strengths and trigger words and drew the same image."""
    status, native = service.call("POST", "/v1/generations?wait=true", native_request)
    assert status == 200 and native["status"] == compat["status"] == "succeeded", (native, compat)
    for key in ("applied", "trigger_words", "warnings"):
        assert compat[key] == native[key], key
    assert compat["resolved"] == native["resolved"]
    # the same picture: the default apply mode (auto) hot-swaps a stack the first time and merges it the next, and
    # the two round apart (a level here and there; a lossy video codec can carry that further), while another LoRA
    # or strength moves most pixels by several levels
    assert np.abs(pixels(service, compat) - pixels(service, native)).mean() < 0.5
    return native


# -- seed 002: the brand image service --------------------------------------------------------------


def submitted(service: Service, comfy, path: str, body: dict) -> tuple[dict, dict]:
    """Start a job, stop it once it runs on the pod (a 512x512 image takes minutes on this CPU), and
    return its record with the graph the pod received (from the pod's own history)."""
    status, job = service.call("POST", f"{path}?wait=false", body)
    assert status == 202, job
    service.wait_for(job["id"], "running", timeout=120)
    assert service.call("DELETE", f"/v1/generations/{job['id']}")[0] == 200
    record = service.wait_end(job["id"])
    deadline = time.monotonic() + 60
    while not (history := pod_get(comfy, f"/history/{record['prompt_id']}")) and time.monotonic() < deadline:
        time.sleep(0.2)
    return record, history[record["prompt_id"]]["prompt"][2]


def test_seed_002_examples_make_the_same_jobs_as_v1(service, comfy) -> None:
    with_lora = {"prompt": "a beautiful sunset", "width": 512, "height": 512, "num_inference_steps": 20,
                 "brand_id": "brand_abc123", "lora_weights": 0.8}
    without = {"prompt": "a beautiful sunset", "width": 512, "height": 512, "num_inference_steps": 20}
    params = {**SD15_V1, "prompt": "a beautiful sunset", "width": 512, "height": 512, "steps": 20}
    jobs = []
    for example, native in ((with_lora, {"template": "sd15_txt2img", "params": params, "brand_id": "brand_abc123",
                                         "lora_strength": 0.8}),
                            (without, {"template": "sd15_txt2img", "params": params})):
        job, graph = submitted(service, comfy, "/compat/generate", example)
        twin, twin_graph = submitted(service, comfy, "/v1/generations", native)
        assert graph == twin_graph and graph["5"]["inputs"]["width"] == 512 and graph["3"]["inputs"]["steps"] == 20
        for key in ("applied", "trigger_words", "warnings", "resolved"):
            assert job[key] == twin[key], key
        jobs.append(job)
    (applied,) = jobs[0]["applied"]
    assert applied["strength_model"] == applied["strength_clip"] == 0.8  # lora_weights is the strength, not ignored
    assert jobs[0]["trigger_words"] == ["ohwx"] and jobs[1]["applied"] == jobs[1]["resolved"] == []


def test_a_brand_lora_from_the_store_at_its_weight(service) -> None:
    example = {"prompt": "a beautiful sunset", "brand_id": "brand_abc123", "lora_weights": 0.8}
    status, job = service.call("POST", "/compat/generate", example)
    assert status == 200 and job["status"] == "succeeded", job
    assert job["trigger_words"] == ["ohwx"] and job["images"] == [f"/v1/generations/{job['id']}/outputs/0"]
    (resolved,) = job["resolved"]
    assert resolved["for"] == "brand brand_abc123" and resolved["name"] == "brand_abc123/style.safetensors"
    same_job(service, job, {"template": "sd15_txt2img", "params": {**SD15_V1, "prompt": "a beautiful sunset"},
                            "brand_id": "brand_abc123", "lora_strength": 0.8})
    status, weaker = service.call("POST", "/compat/generate", {**example, "lora_weights": 0.3})
    assert weaker["applied"][0]["strength_model"] == 0.3 and not np.array_equal(pixels(service, weaker), pixels(service, job))
    status, lora = service.call("GET", f"/v1/loras/{resolved['lora_id']}")  # registered from the store once, then reused
    assert lora["owner_kind"] == "brand" and lora["source"] == "s3://loras/brandstore/brand_abc123/style.safetensors"
    assert [r["lora_id"] for r in weaker["resolved"]] == [resolved["lora_id"]]
    status, plain = service.call("POST", "/compat/generate", {"prompt": "a beautiful sunset"})
    assert plain["applied"] == plain["resolved"] == plain["warnings"] == []
    same_job(service, plain, {"template": "sd15_txt2img", "params": {**SD15_V1, "prompt": "a beautiful sunset"}})


def test_lora_configs_compose_brands_with_their_weights_and_types(service, s3, weights) -> None:
    for brand, key in (("apple_brand_style", "kohya"), ("iphone_16_product", "kohya_b"), ("product_photography", "peft")):
        status, _ = service.call("POST", "/v1/loras", {"name": f"{brand} v1", "brand_id": brand, "status": "ready",
                                                       "source": put(s3, f"brands/{brand}.safetensors", weights.loras[key])})
        assert status == 201
    example = {
        "prompt": "Create a dramatic, ultra-premium product showcase of the iPhone 16...",
        "lora_configs": [
            {"brand_id": "apple_brand_style", "weight": 0.7, "type": "style"},
            {"brand_id": "iphone_16_product", "weight": 0.8, "type": "product"},
            {"brand_id": "product_photography", "weight": 0.6, "type": "photography"},
        ],
    }
    status, job = service.call("POST", "/compat/generate", example)
    assert status == 200 and job["status"] == "succeeded", job
    assert [a["strength_model"] for a in job["applied"]] == [0.7, 0.8, 0.6]
    assert [(r["for"], r["type"]) for r in job["resolved"]] == [("brand apple_brand_style", "style"),
                                                                ("brand iphone_16_product", "product"),
                                                                ("brand product_photography", "photography")]
    loras = [{"brand_id": c["brand_id"], "strength_model": c["weight"], "type": c["type"]} for c in example["lora_configs"]]
    same_job(service, job, {"template": "sd15_txt2img", "params": {**SD15_V1, "prompt": example["prompt"]}, "loras": loras})
    status, unknown = service.call("POST", "/compat/generate", {"prompt": "x", "brand_id": "no_such_brand"})
    assert unknown["status"] == "succeeded" and unknown["applied"] == []  # the seed's fallback: the base model, said
    assert unknown["warnings"] == ["LoRA brand no_such_brand not found for base model sd15; generating without it"]


@pytest.mark.bridge_logic  # the bridge's own logic: first leg only
@pytest.mark.parametrize("body, field", [
    ({"prompt": "x", "brand_id": "brand_abc123", "lora_weights": 1.5}, "lora_weights"),
    ({"prompt": "x", "lora_configs": [{"brand_id": "brand_abc123", "weight": -0.1}]}, "lora_configs[0].weight"),
    ({"prompt": "x", "brand_id": "brand_abc123", "lora_scale": 0.5}, "lora_scale"),
    ({"prompt": "x", "lora_weights": 0.5}, "give 'brand_id' with it"),
    ({"prompt": "x", "brand_id": "../../etc"}, "brand_id"),
    ({"prompt": "x", "width": 500}, "width"),
    ({"prompt": "x", "brand_id": "a", "lora_configs": [{"brand_id": "b"}]}, "not both"),
])
def test_seed_002_requests_are_validated_strictly(service, body, field) -> None:
    status, err = service.call("POST", "/compat/generate", body)
    assert status == 400 and field in err["error"]["message"], err


def test_brand_routes_preload_and_cache(service, comfy, weights) -> None:
    deadline = time.monotonic() + 60
    while True:  # LORA_PRELOAD_BRANDS: fetched and loaded into the pod's memory at start
        status, stats = service.call("GET", "/compat/lora/cache/stats")
        if stats["preloaded"].get("brand_pre") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status == 200 and stats["preloaded"] == {"brand_pre": [comfy.url]}, stats
    pre_sha = hashlib.sha256(Path(weights.loras["kohya_b"]).read_bytes()).hexdigest()
    pod = pod_cache(comfy)
    assert pre_sha in {item["sha256"] for item in pod["memory"]["items"]}
    assert {k: stats[k] for k in ("hits", "misses", "evictions")} == {k: pod["memory"][k] for k in ("hits", "misses", "evictions")}
    assert stats["size"] == pod["memory"]["entries"] and 0 <= stats["hit_rate"] <= 1
    status, listing = service.call("GET", "/compat/lora/list")
    brands = {e["brand_id"]: e for e in listing["loras"]}
    assert brands["brand_pre"]["registered"] and brands["brand_pre"]["base_model"] == "sd15"
    assert brands["brand_idle"] == {"brand_id": "brand_idle", "lora_id": None, "name": None, "status": "available",
                                    "base_model": None, "trigger_word": None, "version": None, "registered": False}
    status, meta = service.call("GET", "/compat/lora/brand_pre/metadata")
    assert status == 200 and meta["trigger_word"] == "zwx" and meta["version"] == 1
    assert meta["metadata"]["ss_output_name"] == "second_lora" and meta["metadata"]["registered_from"] == "brand store"
    assert service.call("GET", "/compat/lora/nobody/metadata")[0] == 404
    status, cleared = service.call("POST", "/compat/lora/cache/clear")
    assert status == 200 and cleared["cleared"] and cleared["pods"][0]["memory"] >= 1
    assert pod_cache(comfy)["memory"]["entries"] == 0 and service.call("GET", "/compat/lora/cache/stats")[1]["size"] == 0
    assert service.call("GET", "/compat/lora/list", key=None)[0] == 401  # the API key guards /compat like /v1


def pod_get(comfy, path: str) -> dict:
    req = urllib.request.Request(f"{comfy.url}{path}", headers={"Authorization": f"Bearer {POD_TOKEN}"})
    with urllib.request.urlopen(req) as resp:
        return json.load(resp)


def pod_cache(comfy) -> dict:
    return pod_get(comfy, "/lora_bridge/cache")


# -- seed 000: the video backend --------------------------------------------------------------------


def progress_messages(service: Service, task_id: str) -> list[dict]:
    """Every message of the task's WebSocket, until the service closes it."""
    async def read() -> list[dict]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            async with session.ws_connect(f"{service.url}/compat/video/ws/{task_id}",
                                          headers={"Authorization": f"Bearer {KEY}"}) as ws:
                return [json.loads(m.data) async for m in ws if m.type == aiohttp.WSMsgType.TEXT]

    return asyncio.run(read())


def test_video_parameters_and_websocket_progress(service, s3, wan_lora, comfy) -> None:
    status, lora = service.call("POST", "/v1/loras", {"name": "anime_style.safetensors", "status": "ready",
                                                      "source": put(s3, "video/anime_style.safetensors", wan_lora)})
    assert status == 201 and lora["family"] == "wan"
    example = {"prompt": "a beautiful landscape", "model_type": "t2v-A14B", "lora_path": "anime_style.safetensors",
               "lora_strength": 0.8}
    status, task = service.call("POST", "/compat/video/generate", example)
    assert status == 202 and task["websocket"] == f"/compat/video/ws/{task['task_id']}"
    messages = progress_messages(service, task["task_id"])
    updates, end = messages[:-1], messages[-1]
    assert end["type"] == "task_completed" and end["progress"] == 100 and end["outputs"], end
    assert {m["type"] for m in updates} == {"progress_update"} and updates[0]["stage"] == "queued"
    percents = [m["progress"] for m in updates]
    assert percents == sorted(percents) and percents[-1] > 12 and any(m["stage"] == "progress" for m in updates)
    status, job = service.call("GET", f"/v1/generations/{task['task_id']}")
    assert [(a["strength_model"], a["name"]) for a in job["applied"]] == [(0.8, f"lora-{lora['id']}")] * 2  # both experts
    same_job(service, job, {"template": "wan22_t2v", "params": {"prompt": "a beautiful landscape", **SMALL_VIDEO},
                            "loras": [{"name": "anime_style.safetensors", "strength_model": 0.8}]})

    # the start image in S3, not on the pod: the bridge reads it once and uploads it to the chosen pod
    start = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(start, format="JPEG")
    s3.client.put_object(Bucket="loras", Key="video/start.jpg", Body=start.getvalue())
    example = {"prompt": "portrait of a character", "model_type": "i2v-A14B", "image_path": "s3://loras/video/start.jpg",
               "lora_path": "realistic_photo.pt", "lora_strength": 1.2}
    status, task = service.call("POST", "/compat/video/generate", example)
    assert status == 202
    end = progress_messages(service, task["task_id"])[-1]
    assert end["type"] == "task_completed" and end["applied"] == []
    assert end["warnings"] == ["LoRA named 'realistic_photo.pt' not found for base model wan; generating without it"]
    _, job = service.call("GET", f"/v1/generations/{task['task_id']}")
    graph = pod_get(comfy, f"/history/{job['prompt_id']}")[job["prompt_id"]]["prompt"][2]
    [image] = [n["inputs"]["image"] for n in graph.values() if n["class_type"] == "LoadImage"]
    assert image.endswith("-start.jpg") and (comfy.base_dir / "input" / image).read_bytes() == start.getvalue()


@pytest.mark.bridge_logic  # the bridge's own logic: first leg only
@pytest.mark.parametrize("body, status, text", [
    ({"prompt": "x", "model_type": "t2v-A14B", "lora_path": "anime_style.safetensors", "lora_strength": 2.5}, 400, "lora_strength"),
    ({"prompt": "x", "model_type": "t2v-A14B", "lora_strength": -0.1}, 400, "lora_strength"),
    ({"prompt": "x", "model_type": "i2v-A14B"}, 400, "image_path"),
    ({"prompt": "x", "model_type": "t2v-A14B", "image_path": "../secret.png"}, 400, "image_path"),
    ({"prompt": "x", "model_type": "ti2v-5B"}, 400, "model_type"),
    ({"prompt": "x", "model_type": "t2v-A14B", "lora_file": "a"}, 400, "lora_file"),
    ({"prompt": "x", "model_type": "t2v-A14B", "lora_path": "s3://loras/video/realistic_photo.pt"}, 400, "pickle"),
])
def test_seed_000_requests_are_validated_strictly(service, s3, body, status, text) -> None:
    s3.client.put_object(Bucket="loras", Key="video/realistic_photo.pt", Body=b"\x80\x02}q\x00.")
    answer, err = service.call("POST", "/compat/video/generate", body)
    assert answer == status and text in err["error"]["message"], err


# -- seed 004: the character studio -----------------------------------------------------------------


def webhook(service: Service, body: dict, secret: str = TRAINER_SECRET) -> tuple[int, dict]:
    raw = json.dumps(body).encode()
    ts = int(time.time())
    return service.call("POST", "/compat/studio/lora-webhook", raw=raw, key=None, headers={
        "Content-Type": "application/json", TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign(secret, ts, raw)})


def test_trainer_webhook_and_studio_generation(service, s3, wan_lora, weights) -> None:
    status, model = service.call("POST", "/compat/studio/lora-models", {"characterId": "char-77", "baseModel": "one-2.2",
                                                                         "triggerWord": "wnx"})
    assert status == 201 and model["status"] == "pending" and model["baseModel"] == "one-2.2" and model["triggerWord"] == "wnx"
    put(s3, "loras/wan-character-77/job-1.safetensors", wan_lora)
    put(s3, "loras/wan-character-77/job-0.safetensors", weights.loras["kohya"])  # an SD1.5 file under a Wan claim
    done = {"loraModelId": model["id"], "status": "completed", "s3Key": "loras/wan-character-77/job-1.safetensors",
            "s3Url": "https://cdn.example/loras/wan-character-77/job-1.safetensors", "baseModel": "one-2.2"}
    refusals = [
        (webhook(service, done, secret="wrong"), 401),
        (webhook(service, {**done, "loraModelId": "unknown"}), 404),
        (webhook(service, {**done, "s3Key": "loras/wan-character-77/job-0.safetensors"}), 422),
        (webhook(service, {**done, "s3Key": "loras/wan-character-77/missing.safetensors"}), None),
        (webhook(service, {**done, "s3Key": "loras/../other/job-1.safetensors"}), 400),
        (service.call("POST", "/compat/studio/lora-webhook", done, key=None), 401),  # unsigned
    ]
    for (status, body), expected in refusals:
        assert status == expected if expected else status in (422, 502), body
    assert "SD1.x LoRA, not Wan 2.x" in refusals[2][0][1]["error"]["message"]
    assert service.call("GET", f"/compat/studio/lora-models/{model['id']}")[1] == model  # nothing changed
    status, ready = webhook(service, done)
    assert status == 200 and ready["status"] == "ready" and ready["modelPath"] == done["s3Key"]
    assert ready["modelUrl"] == done["s3Url"] and ready["triggerWord"] == "wnx"
    status, lora = service.call("GET", f"/v1/loras/{model['id']}")
    assert lora["sha256"] == hashlib.sha256(Path(wan_lora).read_bytes()).hexdigest() and lora["family"] == "wan"
    status, listed = service.call("GET", "/compat/studio/lora-models?characterId=char-77&baseModel=one-2.2")
    assert [m["id"] for m in listed] == [model["id"]] and set(listed[0]) >= {"characterId", "triggerWord", "baseModel"}

    status, gen = service.call("POST", "/compat/studio/generations", {"characterId": "char-77", "prompt": "a portrait",
                                                                       "baseModel": "one-2.2"})
    assert status == 200 and gen["status"] == "succeeded", gen
    assert gen["input"] == {"prompt": "a portrait", "characterId": "char-77", "loraModelId": model["id"], "triggerWord": "wnx"}
    status, job = service.call("GET", f"/v1/generations/{gen['id']}")
    assert len(job["applied"]) == 2 and job["resolved"][0]["trigger_word"] == "wnx"  # the test encoder has no prompt node
    same_job(service, job, {"template": "wan22_t2v", "params": {"prompt": "a portrait", **SMALL_VIDEO},
                            "character_id": "char-77"})
    status, err = service.call("POST", "/compat/studio/generations", {"characterId": "char-77", "prompt": "x",
                                                                       "baseModel": "sdxl"})
    assert status == 400 and "baseModel" in err["error"]["message"]
