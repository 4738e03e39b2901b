"""The Comfy API v2 door, driven by the official client (``comfy-sdk``, sync and async) against the real bridge
in front of a real ComfyUI pod; ``comfy-api-proxy`` in front of the same pod gives the reference behaviour."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from comfy_low.errors import ApiError
from comfy_sdk import (
    AsyncComfy,
    Comfy,
    IdempotencyKeyReuse,
    InvalidWorkflow,
    MissingAsset,
    OutputReady,
    Preview,
    Progress,
    StatusChange,
    Unauthorized,
)
from comfyui_lora_bridge.bridge.pods.client import PodClient
from comfyui_lora_bridge.testing.server import free_port
from PIL import Image
from service_harness import KEY, Service
from support import LORA_FILES, POD_TOKEN, run_graph, txt2img

pytestmark = pytest.mark.comfy


def lora_graph(lora_name: object, **params: object) -> dict:
    """The SD1.5 test graph with ComfyUI's own LoraLoader between the checkpoint and its users."""
    graph = txt2img(**params)
    graph["10"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": lora_name,
                                                         "strength_model": 1.0, "strength_clip": 1.0}}
    graph["3"]["inputs"]["model"] = ["10", 0]
    graph["6"]["inputs"]["clip"] = graph["7"]["inputs"]["clip"] = ["10", 1]
    return graph


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def bridge(comfy, s3, tmp_path_factory):
    svc = Service([comfy.url], tmp_path_factory.mktemp("v2"), s3.endpoint).start()
    yield svc
    svc.kill()


@pytest.fixture
def sdk(bridge, monkeypatch):
    monkeypatch.setenv("COMFY_BASE_URL", bridge.url)
    client = Comfy(api_key=KEY, timeout=120)
    yield client
    client.close()


def http(url: str, method: str = "GET", body: object = None, headers: dict | None = None) -> tuple[int, dict, dict]:
    """A plain request: (status, headers, JSON body or {})."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data, method=method, headers={"Authorization": f"Bearer {KEY}",
                                                                   "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            raw = resp.read()
            return resp.status, dict(resp.headers), json.loads(raw) if raw else {}
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, dict(err.headers), json.loads(raw) if raw else {}


def test_sdk_runs_a_lora_asset_through_the_bridge_as_stock_comfyui_would(sdk, bridge, comfy, weights, monkeypatch) -> None:
    asset = sdk.assets.from_file(weights.loras["kohya"])
    job = sdk.submit(sdk.workflows.from_json(lora_graph(asset, seed=71, steps=12)), metadata={"team": "brand-7"})
    statuses, progress, outputs, previews = [], [], [], []
    for event in job.events():
        if isinstance(event, StatusChange):
            statuses.append(event.status)
        elif isinstance(event, Progress):
            progress.append(event.value)
        elif isinstance(event, OutputReady):
            outputs.append(event.output)
        elif isinstance(event, Preview):
            previews.append(event)
    assert statuses[-1] == "succeeded" and "running" in statuses
    assert progress and progress == sorted(progress) and progress[-1] == 1.0
    assert previews and previews[0].node_id == "3" and previews[0].to_pil().size[0] > 0  # the sampler's live preview
    done = job.refresh()
    assert done.status == "succeeded" and done.metadata == {"team": "brand-7"}
    [output] = done.get_outputs("9")
    assert [o.id for o in outputs] == [output.id] and output.content_type == "image/png"
    ours = output.to_bytes()
    assert ours[:5] == output.to_bytes(range=(0, 4)) == b"\x89PNG\r"
    # the same graph with the file named directly, on the pod itself, through ComfyUI's own loader
    stock = run_graph(comfy, lora_graph(LORA_FILES["kohya"], seed=71, steps=12))
    assert np.abs(pixels(ours) - pixels(stock.files[0].data)).max() == 0
    # the pod saw a plain file name: no asset object, no URL, no credential
    _, record = bridge.call("GET", f"/v1/generations/{job.id}")  # a v2 job is a job: /v1 shows it too
    history = urllib.request.urlopen(f"{comfy.url}/history/{record['prompt_id']}", timeout=30).read().decode()
    [prompt] = json.loads(history).values()
    assert prompt["prompt"][2]["10"]["inputs"]["lora_name"].endswith(".safetensors")
    assert "core/ASSET" not in history and "s3://" not in history and "X-Amz" not in history
    # a second client finds the bytes by hash (HEAD by-hash, then from-hash): nothing is uploaded again; the
    # identical reference comes back as it is, another file name over the same bytes is a new asset
    second = Comfy(api_key=KEY)
    again = second.assets.from_file(weights.loras["kohya"])
    again.commit()
    assert again.id == asset.id and again.created_new is False and again.hash == asset.hash
    other = second._low.asset_from_hash(asset.hash, file_path="renamed.safetensors")
    assert other.id != asset.id and other.created_new is False
    job = second.run(second.workflows.from_json(lora_graph({"__type": "core/ASSET", "info": {"id": other.id}}, seed=71,
                                                           steps=12)))
    assert np.abs(pixels(job.get_outputs("9")[0].to_bytes()) - pixels(ours)).max() == 0
    second.close()


def test_async_sdk_cancels_a_running_job_and_lists_it(bridge, monkeypatch) -> None:
    monkeypatch.setenv("COMFY_BASE_URL", bridge.url)

    async def go() -> tuple[str, str, list[str]]:
        async with AsyncComfy(api_key=KEY, timeout=120) as client:
            job = await client.submit(client.workflows.from_json(txt2img(steps=150, seed=72)), metadata={"run": "cancel"})
            async for event in job.events():
                if isinstance(event, Progress) and event.step:
                    break
            cancelled = await job.cancel()
            final = await job.wait(timeout=60)
            listed = [s.id async for s in client.list_jobs(metadata={"run": "cancel"})]
            return cancelled.status, final.status, listed + [job.id]

    cancelled, final, ids = asyncio.run(go())
    assert cancelled in ("canceling", "canceled") and final == "canceled"
    assert ids[0] == ids[-1] and len(ids) == 2  # the label filter finds exactly that job


def test_outputs_are_committed_as_their_nodes_finish(sdk) -> None:
    """Two image chains: the first one's output is on the job (poll) and on the stream while the second samples."""
    graph = txt2img(seed=78, steps=2)
    graph["21"] = {"class_type": "KSampler", "inputs": {**graph["3"]["inputs"], "seed": 79, "steps": 40}}
    graph["22"] = {"class_type": "VAEDecode", "inputs": {"samples": ["21", 0], "vae": ["4", 2]}}
    graph["23"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "second", "images": ["22", 0]}}
    job = sdk.submit(sdk.workflows.from_json(graph))
    seen, early = [], None
    for event in job.events():
        if isinstance(event, OutputReady) and early is None:
            early = job.refresh()  # polled the moment the first output is committed
        seen.append(event)
        if isinstance(event, StatusChange) and event.status == "succeeded":
            break
    first = next(i for i, e in enumerate(seen) if isinstance(e, OutputReady))
    assert any(isinstance(e, Progress) and e.value < 1 for e in seen[first + 1:])  # work went on after it
    assert early is not None and early.status == "running" and len(early.outputs) == 1
    assert {o.node_id for o in job.refresh().outputs} == {"9", "23"}


@pytest.mark.bridge_logic  # the bridge's own logic: first leg only
def test_idempotent_submission_runs_once(sdk, bridge) -> None:
    key, graph = str(uuid.uuid4()), txt2img(seed=73)
    first = http(f"{bridge.url}/api/v2/jobs", "POST", {"workflow": graph}, {"Idempotency-Key": key})
    replay = http(f"{bridge.url}/api/v2/jobs", "POST", {"workflow": graph}, {"Idempotency-Key": key})
    assert first[0] == replay[0] == 201 and first[2]["id"] == replay[2]["id"]
    assert replay[1].get("Idempotency-Replayed") == "true" and "Idempotency-Replayed" not in first[1]
    with pytest.raises(IdempotencyKeyReuse):
        sdk.submit(sdk.workflows.from_json(txt2img(seed=74)), idempotency_key=key)
    job = sdk.jobs.get(first[2]["id"]).wait(timeout=120)
    assert job.status == "succeeded"
    submitted = [e for _, t, e in bridge.peek(job.id) if t == "submitted"]
    assert len(submitted) == 1  # one execution


def test_bad_input_is_refused_with_the_spec_codes_and_keeps_nothing(sdk, bridge, weights, tmp_path) -> None:
    ui = {"nodes": [], "links": [], "version": 0.4}
    status, _, body = http(f"{bridge.url}/api/v2/jobs", "POST", {"workflow": ui})
    assert status == 422 and body["error"]["code"] == "workflow_format_ui" and "/v1/generations" in body["error"]["message"]
    broken = txt2img()
    broken["3"]["class_type"] = "NoSuchSampler"
    broken["8"]["inputs"]["samples"] = ["99", 0]
    with pytest.raises(InvalidWorkflow) as err:
        sdk.submit(sdk.workflows.from_json(broken))
    assert set(err.value.details["node_errors"]) == {"3", "8"}
    ghost = {"__type": "core/ASSET", "info": {"id": str(uuid.uuid4())}}
    with pytest.raises(MissingAsset):
        sdk.submit(sdk.workflows.from_json(lora_graph(ghost)))
    wrong = tmp_path / "style.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(wrong)
    data = wrong.read_bytes()
    with pytest.raises(ApiError) as mismatch:
        sdk._low.post_assets(io.BytesIO(data), "image/png", "style.png", expected_hash="blake3:" + "0" * 64)
    assert mismatch.value.http_status == 409 and mismatch.value.code == "hash_mismatch"
    from comfyui_lora_bridge.bridge.jobs.assets import blake3_of

    assert not sdk._low.head_asset_by_hash(blake3_of(data))  # nothing kept from the refused upload
    with pytest.raises(ApiError) as header:  # the media type is sent back as a header: nothing else gets in
        sdk._low.post_assets(io.BytesIO(data), "image/png\r\nX-Injected: 1", "style.png")
    assert header.value.http_status == 400 and "media type" in header.value.message
    pickle = tmp_path / "evil.ckpt"
    pickle.write_bytes(b"\x80\x04not a lora")
    with pytest.raises(ApiError) as refused:
        sdk._low.post_assets(io.BytesIO(pickle.read_bytes()), "application/octet-stream", "evil.ckpt")
    assert refused.value.http_status == 422 and refused.value.code == "invalid_asset"
    assert http(f"{bridge.url}/api/v2/health", headers={"Authorization": ""})[0] == 200
    with pytest.raises(Unauthorized):
        Comfy(api_key="wrong-key").jobs.get(str(uuid.uuid4()))


def test_lora_of_another_family_is_refused_naming_both(sdk, comfy) -> None:
    sdxl = comfy.models_dir("loras") / LORA_FILES["sdxl"]
    asset = sdk.assets.from_file(sdxl)
    with pytest.raises(InvalidWorkflow) as err:
        sdk.submit(sdk.workflows.from_json(lora_graph(asset)))
    message = str(err.value)
    assert "SDXL" in message and "SD1.x" in message and "node 4" in message, message


def test_input_image_asset_reaches_the_pod(sdk, comfy, tmp_path) -> None:
    start = tmp_path / "start.png"
    Image.new("RGB", (64, 64), (20, 200, 30)).save(start)

    def img2img(image: object) -> dict:
        graph = txt2img(seed=75)
        graph["11"] = {"class_type": "LoadImage", "inputs": {"image": image}}
        graph["12"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["11", 0], "vae": ["4", 2]}}
        graph["3"]["inputs"].update(latent_image=["12", 0], denoise=0.3)
        return graph

    job = sdk.run(sdk.workflows.from_json(img2img(sdk.assets.from_file(start))), timeout=120)
    ours = pixels(job.get_outputs("9")[0].to_bytes())

    async def upload() -> str:
        async with PodClient(comfy.url, token=POD_TOKEN) as client:
            return await client.upload_image(start, "stock-start.png")

    stock = run_graph(comfy, img2img(asyncio.run(upload())))  # the same file put there by hand, ComfyUI's own way
    assert np.abs(ours - pixels(stock.files[0].data)).max() == 0


@pytest.mark.bridge_logic  # no ComfyUI in it: the bridge's own limits (first leg only)
def test_a_full_queue_answers_429_and_an_oversize_upload_413(tmp_path, monkeypatch) -> None:
    svc = Service(["http://127.0.0.1:1"], tmp_path, env={"LORA_BRIDGE_MAX_QUEUED": "1", "LORA_BRIDGE_MAX_MB": "0.001",
                                                          "LORA_BRIDGE_RETRY_DELAYS": "3,3"}).start()
    try:
        first = http(f"{svc.url}/api/v2/jobs", "POST", {"workflow": txt2img()})
        second = http(f"{svc.url}/api/v2/jobs", "POST", {"workflow": txt2img(seed=2)})
        assert first[0] == 201 and second[0] == 429
        assert second[2]["error"]["code"] == "queue_full" and int(second[1]["Retry-After"]) > 0
        monkeypatch.setenv("COMFY_BASE_URL", svc.url)
        client = Comfy(api_key=KEY)
        with pytest.raises(ApiError) as big:
            client._low.post_assets(io.BytesIO(b"x" * 4096), "image/png", "big.png")
        assert big.value.http_status == 413 and big.value.code == "too_large"
        assert not (tmp_path / "uploads" / "assets").exists() or not any((tmp_path / "uploads" / "assets").iterdir())
        client.close()
    finally:
        svc.kill()


def test_a_registry_lora_in_s3_is_minted_by_hash_and_runs(sdk, bridge, s3, comfy, weights) -> None:
    s3.client.put_object(Bucket="loras", Key="v2/second.safetensors", Body=Path(weights.loras["kohya_b"]).read_bytes())
    status, rec = bridge.call("POST", "/v1/loras", {"name": "second", "status": "ready",
                                                    "source": "s3://loras/v2/second.safetensors"})
    assert status == 201
    deadline = time.monotonic() + 30
    while not rec.get("blake3") and time.monotonic() < deadline:  # the bridge reads the file once for its blake3
        time.sleep(0.2)
        rec = bridge.call("GET", f"/v1/loras/{rec['id']}")[1]
    assert rec["blake3"].startswith("blake3:") and sdk._low.head_asset_by_hash(rec["blake3"])
    asset = sdk._low.asset_from_hash(rec["blake3"])
    ref = {"__type": "core/ASSET", "info": {"id": asset.id}}
    job = sdk.run(sdk.workflows.from_json(lora_graph(ref, seed=77)), timeout=120)
    stock = run_graph(comfy, lora_graph(LORA_FILES["kohya_b"], seed=77))
    assert np.abs(pixels(job.get_outputs("9")[0].to_bytes()) - pixels(stock.files[0].data)).max() == 0


def test_same_sdk_script_against_comfy_api_proxy_and_the_bridge(bridge, comfy, monkeypatch, tmp_path) -> None:
    """The reference: comfy-api-proxy in front of the same pod. Both answer the SDK's script the same way."""
    port = free_port()
    proxy = subprocess.Popen([str(Path(sys.executable).with_name("comfy-api-proxy")), "--comfyui", comfy.url,
                              "--port", str(port)], stdout=open(tmp_path / "proxy.log", "wb"), stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        seen = {}
        for name, url, key in (("proxy", f"http://127.0.0.1:{port}", None), ("bridge", bridge.url, KEY)):
            monkeypatch.setenv("COMFY_BASE_URL", url)
            client = Comfy(api_key=key, timeout=120)
            job = client.run(client.workflows.from_json(copy.deepcopy(txt2img(seed=76))), timeout=120)
            [out] = job.get_outputs("9")
            seen[name] = (job.status, out.type, out.content_type, pixels(out.to_bytes()))
            client.close()
        assert seen["proxy"][:3] == seen["bridge"][:3] == ("succeeded", "image", "image/png")
        assert np.abs(seen["proxy"][3] - seen["bridge"][3]).max() == 0  # the same image either way
    finally:
        proxy.kill()
