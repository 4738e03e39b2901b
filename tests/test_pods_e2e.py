"""Pod client and pod pool against real ComfyUI pods: events, reconnects, routing, failover, cancel."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from comfyui_lora_bridge.bridge.errors import JobFailed, NoPodAvailable, PodError, PromptRejected
from comfyui_lora_bridge.bridge.graphs.templates import load_template
from comfyui_lora_bridge.bridge.lorafiles.sources import FetchPolicy
from comfyui_lora_bridge.bridge.pods.client import PodClient
from comfyui_lora_bridge.bridge.pods.generation import (
    describe_lora,
    parse_lora_arg,
    run_generation,
)
from comfyui_lora_bridge.bridge.pods.pool import PodConfig, PodPool
from comfyui_lora_bridge.testing.weights import LoraSpec, write_lora
from support import (
    CHECKPOINT,
    LORA_FILES,
    POD_TOKEN,
    LoraRequest,
    assert_steps,
    configured_pod,
    image_of,
    run_graph,
    stock,
    txt2img,
)
from tcp_proxy import CuttingProxy

pytestmark = pytest.mark.comfy
LOOPBACK = FetchPolicy(allowed_hosts=("127.0.0.1",))


@pytest.fixture(scope="module")
def second_pod(weights, s3):
    """Another pod like the session's one (for routing and failover)."""
    pod = configured_pod(weights, s3.endpoint)
    pod.env["LORA_BRIDGE_PRELOAD"] = LORA_FILES["loha"]  # loaded into memory at start-up
    with pod:
        yield pod


def run_events(url: str, graph: dict, on_event=None):
    async def go():
        async with PodClient(url, token=POD_TOKEN, reconnects=4, backoff=0.2) as client:
            return await client.run(graph, on_event)
    return asyncio.run(go())


def test_preload_at_start_up(second_pod) -> None:
    async def cache():
        async with PodClient(second_pod.url, token=POD_TOKEN) as client:
            for _ in range(100):
                memory = (await client.get_json("/lora_bridge/cache"))["memory"]
                if memory["items"]:
                    return memory, (await client.get_json("/lora_bridge/cache"))["disk"]
                await asyncio.sleep(0.1)
    memory, disk = asyncio.run(cache())
    assert [item["name"] for item in memory["items"]] == [LORA_FILES["loha"]]


def test_upload_image_then_img2img(comfy) -> None:
    import io

    from PIL import Image

    def png(seed: int) -> bytes:  # textured images: the random-weight VAE normalises flat colours away
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
        return buf.getvalue()

    async def img2img(data: bytes, name: str):
        async with PodClient(comfy.url, token=POD_TOKEN) as client:
            uploaded = await client.upload_image(data, name)
            graph = load_template("sd15_img2img").render(checkpoint=CHECKPOINT, image=uploaded, steps=2, denoise=0.3, seed=1)
            return uploaded, await client.run(graph)
    name, first = asyncio.run(img2img(png(1), "upload-a.png"))
    _, again = asyncio.run(img2img(png(1), "upload-a2.png"))
    _, other = asyncio.run(img2img(png(2), "upload-b.png"))
    assert name == "upload-a.png" and (comfy.base_dir / "input" / "upload-a.png").exists()
    # the uploaded image is what gets encoded: same upload, same image; another upload, another image
    assert (image_of(first) == image_of(again)).all() and np.abs(image_of(first) - image_of(other)).mean() > 0.3


def test_events_arrive_in_order_with_step_progress(comfy) -> None:
    graph = stock(txt2img(seed=41, steps=4), [LoraRequest(LORA_FILES["kohya"])])
    result = run_events(comfy.url, graph)
    types = [e.type for e in result.events]
    assert types[:3] == ["submitting", "submitted", "started"] and types[-1] == "success" and types.count("success") == 1
    steps = [e.data["value"] for e in result.events if e.type == "progress" and e.data["node"] == "3"]
    assert_steps(steps, 4)
    sampling = [i for i, e in enumerate(result.events) if e.type == "progress" and e.data["node"] == "3"]
    assert types.index("output") > max(sampling)  # the image comes after the last sampling step
    assert result.files and result.files[0].data[:4] == b"\x89PNG"


def test_an_output_the_pod_cannot_serve_fails_the_job_and_leaves_nothing_running(comfy) -> None:
    def on_event(event):  # the file goes before it is fetched: ComfyUI's /view answers 404
        if event.type == "output":
            for image in event.data["output"]["images"]:
                (comfy.output_dir / image["subfolder"] / image["filename"]).unlink()

    async def go():
        async with PodClient(comfy.url, token=POD_TOKEN) as client:
            with pytest.raises(PodError, match="GET /view .* answered 404"):
                await client.run(txt2img(seed=43, steps=1), on_event)
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    assert asyncio.run(go()) == []  # no fetch left behind


def test_websocket_cut_mid_job_still_reports_exactly_one_success(comfy) -> None:
    proxy = CuttingProxy(comfy.port)
    try:
        def on_event(event):
            if event.type == "progress" and proxy.cuts == 0:  # at the first step reported
                proxy.cut()

        graph = txt2img(seed=42, steps=6)
        result = run_events(proxy.url, graph, on_event)
    finally:
        proxy.close()
    types = [e.type for e in result.events]
    assert proxy.cuts == 1 and "reconnected" in types and types.count("success") == 1 and types[-1] == "success"
    assert (image_of(result) == image_of(run_graph(comfy, graph))).all()


def test_a_completion_while_disconnected_is_still_reported(comfy) -> None:
    proxy = CuttingProxy(comfy.port)

    async def go():
        async with PodClient(proxy.url, token=POD_TOKEN, reconnects=4, backoff=1.0) as client:
            def on_event(event):  # cut at the first step; the job finishes during the 1 s backoff
                if event.type == "progress" and proxy.cuts == 0:
                    proxy.cut()
            return await client.run(txt2img(seed=43, steps=2), on_event)
    try:
        result = asyncio.run(go())
    finally:
        proxy.close()
    assert [e.type for e in result.events].count("success") == 1 and result.files


def test_a_prompt_whose_end_was_recorded_before_a_restart_ends_on_reattachment(comfy) -> None:
    """A bridge process that recorded ``success`` and died before ending the job: the next one re-attaches
    to the finished prompt and returns (nothing reported twice) instead of waiting for an end already seen."""
    async def go():
        async with PodClient(comfy.url, token=POD_TOKEN) as client:
            first = await client.run(txt2img(seed=44, steps=1))
            recorded = [(e.type, e.data) for e in first.events]
            again = await asyncio.wait_for(
                client.run({}, prompt_id=first.prompt_id, follow=True, recorded=recorded), 60)
            return first, again
    first, again = asyncio.run(go())
    assert [e.type for e in again.events] == ["reattached"]
    assert [f.data for f in again.files] == [f.data for f in first.files] and first.files


def test_cancel_mid_sampling_stops_the_job(comfy) -> None:
    steps_seen: list[int] = []
    cancelled: list[bool] = []

    async def go():
        async with PodClient(comfy.url, token=POD_TOKEN) as client:
            async def on_event(event):
                if event.type == "progress":
                    steps_seen.append(event.data["value"])
                    if event.data["value"] >= 2 and not cancelled:
                        cancelled.append(True)
                        await client.cancel(event.data["prompt_id"])
            with pytest.raises(JobFailed, match="interrupted"):
                await client.run(txt2img(seed=44, steps=40), on_event)
            for _ in range(100):  # the pod lets go of the job right after
                queue = await client.get_json("/queue")
                if not queue["queue_running"] and not queue["queue_pending"]:
                    return True
                await asyncio.sleep(0.05)
            return False

    assert asyncio.run(go())
    assert max(steps_seen) < 10  # stopped, not run to step 40


def test_bad_graph_returns_the_node_error(comfy) -> None:
    graph = txt2img(checkpoint="missing.safetensors")
    graph["3"]["inputs"]["steps"] = 0
    with pytest.raises(PromptRejected) as err:
        run_events(comfy.url, graph)
    text = str(err.value)
    assert "node 4 (CheckpointLoaderSimple) input 'ckpt_name'" in text and "missing.safetensors" in text
    assert "node 3 (KSampler) input 'steps'" in text


def test_lora_argument_parsing() -> None:
    assert parse_lora_arg("s3://b/k.safetensors:0.8:0.6") == ("s3://b/k.safetensors", 0.8, 0.6)
    assert parse_lora_arg("https://h:8080/x.safetensors:0.5") == ("https://h:8080/x.safetensors", 0.5, 0.5)
    assert parse_lora_arg("https://h:8080/x.safetensors") == ("https://h:8080/x.safetensors", 1.0, 1.0)
    assert parse_lora_arg("char42.safetensors:-1") == ("char42.safetensors", -1.0, -1.0)


def test_pool_routes_to_the_pod_holding_the_lora_and_survives_a_dead_pod(comfy, second_pod, file_server, tmp_path) -> None:
    # a LoRA no other test uses, so only the prefetch below puts it in a pod's cache
    data = write_lora(tmp_path / "char9.safetensors", LoraSpec(seed=99, trigger="zwx")).read_bytes()
    file_server.add("/pool/char9.safetensors", data)
    url = file_server.url("/pool/char9.safetensors")
    sha = hashlib.sha256(data).hexdigest()
    async def prefetch():
        async with PodClient(second_pod.url, token=POD_TOKEN) as client:
            await client.post_json("/lora_bridge/prefetch", {"source": url, "sha256": sha, "name": "char9"})
    asyncio.run(prefetch())
    # the session pod is configured first: only the cache can send the job to the second one
    pool = PodPool([PodConfig(comfy.url, POD_TOKEN), PodConfig(second_pod.url, POD_TOKEN)], reconnects=2, backoff=0.2)
    async def idle(url: str) -> None:  # earlier tests' jobs must not tilt the queue-length comparison
        async with PodClient(url, token=POD_TOKEN) as client:
            for _ in range(600):
                queue = await client.get_json("/queue")
                if not queue["queue_running"] and not queue["queue_pending"]:
                    return
                await asyncio.sleep(0.05)
    asyncio.run(idle(comfy.url))
    asyncio.run(pool.refresh(force=True))
    assert pool.choose([]).config.url == comfy.url and pool.choose([{sha}]).config.url == second_pod.url
    lora = describe_lora(url, 1.0, 1.0, sha256=sha, policy=LOOPBACK)
    assert lora.family == "sd15" and lora.trigger_words == ("zwx",)
    params = {"checkpoint": CHECKPOINT, "width": 64, "height": 64, "steps": 3, "seed": 45}
    outcome = asyncio.run(run_generation(pool, [lora], template="sd15_txt2img", params=params))
    assert outcome.pod.endswith(f":{second_pod.port}")  # routed by its cache
    assert outcome.report.trigger_words == ["zwx"] and outcome.report.applied[0]["name"] == lora.name
    # now kill the pod in the middle of a job: the job must finish on the other pod
    events = []

    def on_event(event):
        events.append(event)
        if event.type == "progress" and event.data["value"] >= 2 and second_pod.process is not None:
            second_pod.kill()

    long = {**params, "steps": 30}
    outcome = asyncio.run(run_generation(pool, [lora], template="sd15_txt2img", params=long, on_event=on_event))
    types = [e.type for e in events]
    assert "failover" in types and types.count("success") == 1 and types[-1] == "success"
    assert outcome.pod.endswith(f":{comfy.port}") and outcome.files
    assert [e.data["pod"] for e in events if e.type == "assigned"] == [pool.status[second_pod.url].config.name,
                                                                        pool.status[comfy.url].config.name]


@pytest.mark.bridge_logic  # when the pool reads a pod's health is its own policy: first leg only
def test_a_job_does_not_wait_for_the_health_check_of_a_pod_seen_healthy(comfy) -> None:
    """A pod never seen is read before the job is routed; one seen healthy, but longer ago than ``health_ttl``,
    is read again beside the job, which routes on what the pod last said (no health check on a warm job's path)."""
    pool = PodPool([PodConfig(comfy.url, POD_TOKEN)], health_ttl=0.0)
    pod = pool.status[comfy.url]
    checked_when_assigned: list[float] = []

    def on_event(event) -> None:
        if event.type == "assigned":
            checked_when_assigned.append(pod.checked)

    async def go() -> None:
        params = {"checkpoint": CHECKPOINT, "width": 64, "height": 64, "steps": 1, "seed": 3}
        before = pod.checked
        await run_generation(pool, [], template="sd15_txt2img", params=params, on_event=on_event)
        assert checked_when_assigned[0] > before and pod.healthy  # read first
        seen = pod.checked
        await run_generation(pool, [], template="sd15_txt2img", params={**params, "seed": 4}, on_event=on_event)
        assert checked_when_assigned[1] == seen  # routed on the last reading ...
        for _ in range(200):
            if pod.checked > seen:
                break
            await asyncio.sleep(0.05)
        assert pod.checked > seen and pod.healthy  # ... while it was read again beside the job

    asyncio.run(go())


def test_a_job_waits_for_a_pod_that_is_down_and_one_that_keeps_failing_ends_the_job(comfy) -> None:
    """No usable pod: the job waits (one ``waiting`` event, no retry spent) and runs once the pod is back; still
    none after ``wait_s``: it fails with the reason. A pod that fails the job once it has it is retried after 2,
    4 and 8 s (± jitter; scaled down here), each one an event, then the job fails with the reason."""
    proxy = CuttingProxy(comfy.port)
    proxy.down = True  # the pod is restarting when the job comes
    delays = (0.4, 0.8, 1.6)
    pool = PodPool([PodConfig(proxy.url, POD_TOKEN)], retry_delays=delays, reconnects=1, backoff=0.1, wait_s=60,
                   health_ttl=0.2)
    events = []

    def on_event(event):
        events.append(event)
        if event.type == "waiting":
            threading.Timer(1.0, setattr, (proxy, "down", False)).start()  # ... and back a second later

    params = {"checkpoint": CHECKPOINT, "width": 64, "height": 64, "steps": 2, "seed": 46}
    try:
        outcome = asyncio.run(run_generation(pool, [], template="sd15_txt2img", params=params, on_event=on_event))
        types = [e.type for e in events]
        assert types.count("waiting") == 1 and "retry" not in types and types[-1] == "success" and outcome.files
        assert "unreachable" in events[types.index("waiting")].data["reason"]

        def fail_when_assigned(event):  # the pod answers its health check, then drops the job it was given
            events.append(event)
            proxy.down = event.type != "retry"

        events[:] = []
        with pytest.raises(NoPodAvailable, match="failed after 3 retries; last: .*(unreachable|WebSocket)"):
            asyncio.run(run_generation(pool, [], template="sd15_txt2img", params=params, on_event=fail_when_assigned))
        retries = [e.data for e in events if e.type == "retry"]
        assert [r["retry"] for r in retries] == [1, 2, 3] and all(r["of"] == 3 for r in retries)
        assert [e.type for e in events].count("failover") == 4
        # ± 25 % jitter; the event rounds the delay to 10 ms (0.75 * 0.4 is 0.30000000000000004 in floats)
        assert all(0.75 * d - 0.01 <= r["delay_s"] <= 1.25 * d + 0.01 for r, d in zip(retries, delays))

        proxy.down, pool.wait_s = True, 1.0
        with pytest.raises(NoPodAvailable, match=r"no pod could take the job within 1 s .*unreachable"):
            asyncio.run(run_generation(pool, [], template="sd15_txt2img", params=params))
    finally:
        proxy.close()


def test_cli_run_and_pods(comfy, tmp_path, weights, s3) -> None:
    data = Path(weights.loras["kohya"]).read_bytes()
    s3.client.put_object(Bucket="loras", Key="cli/char.safetensors", Body=data)
    env = {"PATH": "/usr/bin:/bin", "LORA_BRIDGE_POD_TOKEN": POD_TOKEN, "LORA_BRIDGE_S3_ENDPOINT": s3.endpoint,
           "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    exe = str(Path(sys.executable).with_name("lora-bridge"))
    out = subprocess.run([exe, "run", "--pod", comfy.url, "--template", "sd15_txt2img", "--param", f"checkpoint={CHECKPOINT}",
                          "--param", "width=64", "--param", "height=64", "--param", "steps=3",
                          "--lora", "s3://loras/cli/char.safetensors:0.8:0.5", "--out", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["applied"][0]["strength_model"] == 0.8 and summary["trigger_words"] == ["ohwx"]
    assert Path(summary["outputs"][0]).read_bytes()[:4] == b"\x89PNG"
    assert "step 3/3" in out.stderr
    pods = subprocess.run([exe, "pods", "--pod", comfy.url, "--pod", "http://127.0.0.1:9"], env=env,
                          capture_output=True, text=True, timeout=60)
    lines = [json.loads(line) for line in pods.stdout.splitlines()]
    assert lines[0]["healthy"] and lines[0]["mode"] == "pack" and not lines[1]["healthy"]
