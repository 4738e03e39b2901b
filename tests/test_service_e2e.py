"""The bridge HTTP service against a real pod: registry, generations with SSE, fallback, auth, restart."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from comfyui_lora_bridge.testing.file_server import Faults
from comfyui_lora_bridge.testing.postgres import pg_bin
from comfyui_lora_bridge.testing.weights import LoraSpec, cached_lora
from service_harness import EXE, KEY, SECRET, Service
from support import CHECKPOINT, assert_steps

pytestmark = pytest.mark.comfy
PARAMS = {"checkpoint": CHECKPOINT, "width": 64, "height": 64, "steps": 3, "seed": 51}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def service(request, comfy, s3, weights, tmp_path_factory):
    """The service on each database back end (the same tests, against SQLite and a real PostgreSQL)."""
    s3.client.put_object(Bucket="loras", Key="svc/char42.safetensors", Body=Path(weights.loras["kohya"]).read_bytes())
    db_url = request.getfixturevalue("postgres").new_database() if request.param == "postgresql" else None
    svc = Service([comfy.url], tmp_path_factory.mktemp("svc"), s3.endpoint, db_url=db_url).start()
    yield svc
    svc.kill()


def test_generation_for_a_character_streams_progress(service) -> None:
    status, lora = service.call("POST", "/v1/loras", {"name": "character 42 v3", "character_id": 42, "status": "ready",
                                                      "source": "s3://loras/svc/char42.safetensors"})
    assert status == 201 and lora["family"] == "sd15" and lora["trigger_word"] == "ohwx" and lora["rank"] == 8
    status, job = service.call("POST", "/v1/generations", {"template": "sd15_txt2img", "params": {**PARAMS, "prompt": "a portrait"},
                                                           "character_id": 42, "lora_strength": 0.9})
    assert status == 202
    events = service.events(job["id"])
    types = [t for _, t, _ in events]
    assert types[-1] == "succeeded" and types.count("success") == 1 and types.count("queued") == 1
    states = [t for t in types if t in ("queued", "preparing", "submitted", "running", "succeeded")]
    assert states == ["queued", "preparing", "submitted", "running", "succeeded"]  # every transition, in order
    assert_steps([d["value"] for _, t, d in events if t == "progress" and d.get("node") == "3"], 3)
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))
    middle = events[len(events) // 2][0]
    assert service.events(job["id"], last=middle) == events[middle:]  # Last-Event-ID resumes without gaps
    status, record = service.call("GET", f"/v1/generations/{job['id']}")
    assert record["status"] == "succeeded" and record["trigger_words"] == ["ohwx"] and record["reason"] == "completed"
    assert record["applied"][0]["name"] == f"lora-{lora['id']}" and record["applied"][0]["strength_model"] == 0.9
    assert record["pod"] and record["gpu_seconds"] > 0 and record["cost"] == pytest.approx(record["gpu_seconds"] / 1000, rel=0.01)
    status, png = service.call("GET", f"/v1/generations/{job['id']}/outputs/0")
    assert status == 200 and png[:4] == b"\x89PNG"
    with urllib.request.urlopen(record["output_urls"][0]) as resp:  # presigned S3 URL of the same file
        assert resp.read() == png


def test_health_and_metrics_say_what_the_database_and_pods_hold(service) -> None:
    _, rec = service.call("POST", "/v1/generations?wait=true", {"template": "sd15_txt2img", "params": PARAMS})
    assert rec["status"] == "succeeded"
    status, health = service.call("GET", "/healthz", key=None)
    assert status == 200 and health["ok"] and health["database"] == service.db_url.split(":")[0]
    status, page = service.call("GET", "/metrics", key=None)
    text = page.decode()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if not line.startswith("#")}
    assert samples['lora_bridge_jobs{status="succeeded"}'] >= 1
    replica = next(k for k in samples if k.startswith("lora_bridge_job_duration_seconds_count"))
    assert samples[replica] >= 1 and samples[replica.replace("duration", "queue_wait")] >= 1
    assert any(k.startswith("lora_bridge_pod_cache_hit_rate") and 'cache="memory"' in k for k in samples)
    assert any(k.startswith("lora_bridge_fetch_failures_total") for k in samples)
    # what an autoscaler reads: the work running and waiting by template and family, the oldest wait, busy pods
    _, running = service.call("POST", "/v1/generations", {"template": "sd15_txt2img", "params": {**PARAMS, "steps": 150}})
    service.wait_for(running["id"], "progress")
    _, waiting = service.call("POST", "/v1/generations", {"template": "sd15_txt2img", "params": {**PARAMS, "seed": 61}})
    time.sleep(0.5)
    page = service.call("GET", "/metrics", key=None)[1].decode()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in page.splitlines() if not line.startswith("#")}
    for job in (running, waiting):
        service.call("DELETE", f"/v1/generations/{job['id']}")
    assert samples['lora_bridge_jobs_running{template="sd15_txt2img",family="sd15"}'] >= 1
    assert samples['lora_bridge_jobs_waiting{template="sd15_txt2img",family="sd15"}'] >= 1
    assert samples["lora_bridge_oldest_waiting_job_seconds"] >= 0.5
    assert sum(v for k, v in samples.items() if k.startswith("lora_bridge_pods{") and 'state="busy"' in k) == 1


@pytest.mark.bridge_logic  # the bridge's own logic: first leg only
def test_a_registry_preset_applies_its_loras_first(service) -> None:
    _, lora = service.call("POST", "/v1/loras", {"name": "preset-look", "status": "ready",
                                                 "source": "s3://loras/svc/char42.safetensors"})
    look = {"loras": [{"name": "preset-look", "strength_model": 0.6}], "description": "the studio look"}
    status, saved = service.call("PUT", "/v1/presets/studio%20look", look)
    assert status == 200 and saved["name"] == "studio look" and saved["loras"] == [{"name": "preset-look", "strength_model": 0.6}]
    status, replaced = service.call("PUT", "/v1/presets/studio%20look", {"loras": [{"name": "preset-look", "strength_model": 0.7,
                                                                                    "strength_clip": 0.2}]})
    assert status == 200 and replaced["loras"][0]["strength_model"] == 0.7 and replaced["created"] == saved["created"]
    assert replaced["description"] is None and replaced["updated"] >= saved["updated"]
    _, listed = service.call("GET", "/v1/presets")
    assert [p["name"] for p in listed["presets"]].count("studio look") == 1
    status, rec = service.call("POST", "/v1/generations?wait=true", {"template": "sd15_txt2img", "params": PARAMS,
                                                                     "preset": "studio look"})
    assert status == 200 and rec["status"] == "succeeded", rec
    assert [(a["name"], a["strength_model"], a["strength_clip"]) for a in rec["applied"]] == [(f"lora-{lora['id']}", 0.7, 0.2)]
    status, err = service.call("POST", "/v1/generations", {"template": "sd15_txt2img", "params": PARAMS, "preset": "no such"})
    assert status == 422 and err["error"]["message"].startswith("preset 'no such' not found")
    for bad in ({"loras": []}, {"loras": [{"name": "x", "strength_model": 500}]}, {"loras": [{"name": "x"}], "extra": 1}):
        status, err = service.call("PUT", "/v1/presets/other", bad)
        assert status in (400, 422) and err["error"]["message"], bad
    assert service.call("PUT", "/v1/presets/a*b", look)[0] in (400, 422)
    assert service.call("DELETE", "/v1/presets/studio%20look")[0] == 204
    assert service.call("GET", "/v1/presets/studio%20look")[0] == 404
    assert service.call("DELETE", "/v1/presets/studio%20look")[0] == 404


@pytest.mark.bridge_logic  # the bridge's own logic: first leg only
def test_fallback_and_strict(service) -> None:
    _, lora = service.call("POST", "/v1/loras", {"name": "character 43", "character_id": 43, "status": "training",
                                                 "family": "sd15", "source": "s3://loras/svc/char42.safetensors",
                                                 "trigger_word": "zzq", "fallback_style": "watercolor style"})
    status, rec = service.call("POST", "/v1/generations?wait=true", {"template": "sd15_txt2img", "params": PARAMS, "character_id": 43})
    assert status == 200 and rec["status"] == "succeeded" and rec["applied"] == [] and rec["trigger_words"] == []
    assert any("is training, not ready" in w for w in rec["warnings"])
    assert any("watercolor style" in w for w in rec["warnings"])
    status, err = service.call("POST", "/v1/generations", {"template": "sd15_txt2img", "params": PARAMS, "character_id": 43,
                                                           "lora_policy": "strict"})
    assert status == 422 and "not ready" in err["error"]["message"]
    service.call("POST", "/v1/loras", {"name": "sdxl brand", "brand_id": "abc", "status": "ready", "family": "sdxl",
                                       "source": "s3://loras/svc/x.safetensors"})
    status, rec = service.call("POST", "/v1/generations?wait=true", {"template": "sd15_txt2img", "params": PARAMS, "brand_id": "abc",
                                                                     "loras": [{"lora_id": "nope", "strength_model": 0.5}]})
    assert rec["status"] == "succeeded" and len(rec["warnings"]) == 2
    assert any("LoRA nope not found" in w for w in rec["warnings"]) and any("(sdxl brand) is SDXL; the model is SD1.x" in w for w in rec["warnings"])


@pytest.mark.bridge_logic  # the bridge's own logic: first leg only
def test_lora_that_fails_to_fetch(service) -> None:
    service.call("POST", "/v1/loras", {"name": "broken", "character_id": 88, "status": "ready", "family": "sd15",
                                       "source": "s3://loras/svc/missing.safetensors", "trigger_word": "brk"})
    status, rec = service.call("POST", "/v1/generations?wait=true", {"template": "sd15_txt2img", "params": PARAMS, "character_id": 88})
    assert rec["status"] == "succeeded" and rec["applied"] == [] and rec["trigger_words"] == []
    assert any("could not be fetched" in w and "not found" in w for w in rec["warnings"])
    status, rec = service.call("POST", "/v1/generations?wait=true", {"template": "sd15_txt2img", "params": PARAMS, "character_id": 88,
                                                                     "lora_policy": "strict"})
    assert rec["status"] == "failed" and "could not be fetched" in rec["error"]


def test_cancel_a_running_generation(service) -> None:
    _, job = service.call("POST", "/v1/generations", {"template": "sd15_txt2img", "params": {**PARAMS, "steps": 60, "seed": 53}})
    wait_for_progress(service, job["id"])
    status, _ = service.call("DELETE", f"/v1/generations/{job['id']}")
    assert status == 200
    rec = service.wait_end(job["id"], timeout=20)
    assert rec["status"] == "cancelled" and rec["reason"] == "cancelled by the caller"
    steps = [d["value"] for _, t, d in service.events(job["id"]) if t == "progress"]
    assert max(steps) < 60


def wait_for_progress(service, job_id: str) -> None:
    """Until the job has reported a sampling step (it is running on the pod)."""
    service.wait_for(job_id, "progress")


@pytest.mark.bridge_logic  # the bridge's own logic: first leg only
def test_auth_and_hostile_input(service) -> None:
    assert service.call("GET", "/v1/loras", key=None)[0] == 401
    assert service.call("GET", "/v1/loras", key="wrong")[0] == 401
    cases = [
        (dict(raw=b"{not json"), 400),
        (dict(body={"template": "nope"}), 400),
        (dict(body={"template": "../etc/passwd"}), 400),
        (dict(body={"template": "sd15_txt2img", "params": {"steps": 100000}}), 400),
        (dict(body={"template": "sd15_txt2img", "params": {"width": "64; rm"}}), 400),
        (dict(body={"template": "sd15_txt2img", "loras": [{"lora_id": "x", "strength_model": 500}]}), 400),
        (dict(body={"template": "sd15_txt2img", "loras": [{"strength_model": 1}]}), 400),
        (dict(raw=b'{"template": "sd15_txt2img", "params": {"prompt": "' + b"x" * (2 * 1024 * 1024) + b'"}}'), 413),
    ]
    for kwargs, expected in cases:
        status, err = service.call("POST", "/v1/generations", **kwargs)
        assert status == expected, (kwargs.get("body"), status, err)
        assert set(err["error"]) == {"type", "message"}
    assert service.call("GET", "/v1/loras/unknown")[0] == 404
    assert service.call("POST", "/v1/loras", {"name": 5})[0] == 400
    evil = 'x", "99": {"class_type": "SaveImage"}, "y": "'
    status, rec = service.call("POST", "/v1/generations?wait=true", {"template": "sd15_txt2img", "params": {**PARAMS, "prompt": evil}})
    assert status == 200 and rec["status"] == "succeeded" and len(rec["outputs"]) == 1
    assert service.call("GET", "/healthz", key=None)[0] == 200
    status, spec = service.call("GET", "/openapi.json", key=None)
    assert status == 200 and "/v1/generations" in spec["paths"]


class Receiver:
    """A loopback webhook receiver; ``answers`` are (status, Location) for the first calls, then 200."""

    def __init__(self, host: str = "127.0.0.1", answers: list[tuple[int, str | None]] | None = None) -> None:
        import http.server
        import threading

        self.calls: list[tuple[str, dict, bytes]] = []
        answers = list(answers if answers is not None else [(500, None)])
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.calls.append((self.command, dict(self.headers), body))
                status, location = answers.pop(0) if answers else (200, None)
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET = _answer

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://{host}:{self.server.server_address[1]}/hook"


@pytest.mark.bridge_logic  # the bridge's own logic: first leg only
def test_signed_webhook_with_retries_and_ws_twin(service) -> None:
    from comfyui_lora_bridge.bridge.jobs.webhooks import (
        SIGNATURE_HEADER,
        TIMESTAMP_HEADER,
        verify_signature,
    )

    receiver = Receiver()
    status, rec = service.call("POST", "/v1/generations?wait=true", {"template": "sd15_txt2img", "params": PARAMS,
                                                                     "webhook_url": receiver.url})
    assert rec["status"] == "succeeded"
    service.wait_for(rec["id"], "webhook", timeout=10)  # delivered (after a retry) and recorded: the event log is complete
    _, headers, body = receiver.calls[-1]
    assert json.loads(body)["id"] == rec["id"]
    assert verify_signature(SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    assert not verify_signature(SECRET, headers[TIMESTAMP_HEADER], body.replace(b"succeeded", b"failed"), headers[SIGNATURE_HEADER])
    assert not verify_signature("other", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    assert not verify_signature(SECRET, str(int(headers[TIMESTAMP_HEADER]) - 3600), body, headers[SIGNATURE_HEADER])  # replay
    # the WebSocket twin delivers the same events as SSE
    import asyncio

    import aiohttp

    async def ws_events():
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:
            async with session.ws_connect(f"{service.url}/v1/generations/{rec['id']}/ws") as ws:
                return [(m["id"], m["event"], m["data"]) async for m in _json_messages(ws)]
    assert asyncio.run(ws_events()) == service.events(rec["id"])
    assert service.call("POST", "/v1/generations", {"template": "sd15_txt2img", "params": PARAMS,
                                                    "webhook_url": "http://169.254.169.254/x"})[0] == 400


async def _json_messages(ws):
    async for msg in ws:
        yield json.loads(msg.data)


def test_upload_registers_and_generates(service, weights) -> None:
    status, lora = service.upload({"name": "brand xyz style", "brand_id": "xyz", "status": "ready"},
                                  {"file": Path(weights.loras["kohya_b"])})
    assert status == 201, lora
    assert lora["source"].startswith("s3://loras/") and lora["family"] == "sd15" and lora["trigger_word"] == "zwx"
    status, rec = service.call("POST", "/v1/generations?wait=true", {"template": "sd15_txt2img", "params": PARAMS, "brand_id": "xyz"})
    assert rec["status"] == "succeeded" and rec["trigger_words"] == ["zwx"] and rec["applied"]
    status, stats = service.call("GET", "/v1/cache/stats")
    assert status == 200 and stats["pods"] and stats["total"]["entries"] >= 1
    status, cleared = service.call("POST", "/v1/pods/0/cache/clear", {"memory": True})
    assert status == 200 and "memory" in cleared["cleared"]
    assert service.call("POST", "/v1/pods/7/cache/clear", {})[0] == 404


@pytest.mark.bridge_logic  # the bridge's own logic: first leg only
def test_cli_against_the_service(service) -> None:
    env = {"PATH": "/usr/bin:/bin", "LORA_BRIDGE_URL": service.url, "LORA_BRIDGE_API_KEY": KEY, "HOME": str(service.tmp)}
    exe = EXE
    added = subprocess.run([exe, "loras", "add", "--name", "char 77", "--character-id", "77",
                            "--source", "s3://loras/svc/char42.safetensors"], env=env, capture_output=True, text=True)
    assert added.returncode == 0, added.stderr
    lora_id = json.loads(added.stdout)["id"]
    assert lora_id in subprocess.run([exe, "loras", "ls"], env=env, capture_output=True, text=True).stdout
    gen = subprocess.run([exe, "generate", "--template", "sd15_txt2img", "--character-id", "77",
                          *sum((["--param", f"{k}={v}"] for k, v in PARAMS.items()), [])],
                         env=env, capture_output=True, text=True, timeout=300)
    assert gen.returncode == 0, gen.stderr
    assert "step 3/3" in gen.stderr and json.loads(gen.stdout)["trigger_words"] == ["ohwx"]
    bad = subprocess.run([exe, "loras", "show", "--id", "nope"], env={**env, "LORA_BRIDGE_API_KEY": "wrong"},
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "401" in bad.stderr


@pytest.mark.bridge_logic  # the bridge's own logic: first leg only
@pytest.mark.parametrize("status", [307, 302])
def test_webhook_redirects_are_not_followed(service, status) -> None:
    elsewhere = Receiver(host="127.0.0.2")  # loopback, but not in the allowlist (127.0.0.1)
    receiver = Receiver(answers=[(status, elsewhere.url)])
    _, rec = service.call("POST", "/v1/generations?wait=true", {"template": "sd15_txt2img", "params": PARAMS,
                                                                "webhook_url": receiver.url})
    for _ in range(100):
        webhook = [d for _, t, d in service.events(rec["id"]) if t == "webhook"]
        if webhook:
            break
        time.sleep(0.05)
    assert webhook == [{"delivered": False, "outcome": f"answered {status} (a redirect): redirects are not followed"}]
    assert len(receiver.calls) == 1 and elsewhere.calls == []  # the signed body went nowhere else


def test_presigned_credentials_stay_out_of_graphs_histories_pngs_listings_and_logs(service, comfy, s3, weights) -> None:
    s3.client.put_object(Bucket="loras", Key="svc/presigned.safetensors", Body=Path(weights.loras["kohya"]).read_bytes())
    url = s3.client.generate_presigned_url("get_object", Params={"Bucket": "loras", "Key": "svc/presigned.safetensors"})
    query = url.split("?", 1)[1]
    secrets = [v for k, v in (part.split("=", 1) for part in query.split("&")) if "ignature" in k or "Credential" in k]
    assert secrets
    status, lora = service.call("POST", "/v1/loras", {"name": "presigned", "character_id": 601, "status": "ready", "source": url})
    # registered by the bridge's own copy (read once with the URL): the entry names where it came from, unsigned
    assert status == 201 and lora["family"] == "sd15" and "?" not in lora["source"]
    assert lora["sha256"] == hashlib.sha256(Path(weights.loras["kohya"]).read_bytes()).hexdigest()
    assert lora["metadata"]["source_origin"] == url.split("?", 1)[0] + "?…"
    status, rec = service.call("POST", "/v1/generations?wait=true", {"template": "sd15_txt2img", "params": PARAMS,
                                                                     "character_id": 601})
    assert rec["status"] == "succeeded" and rec["trigger_words"] == ["ohwx"] and rec["applied"]
    history = urllib.request.urlopen(f"{comfy.url}/history/{rec['prompt_id']}").read().decode()
    _, png = service.call("GET", f"/v1/generations/{rec['id']}/outputs/0")
    _, listing = service.call("GET", "/v1/loras")
    service.call("GET", f"/v1/loras?api_key={secrets[0]}", key=None)  # refused, and not logged either
    seen = {"pod history": history, "PNG": png.decode("latin-1"), "listing": json.dumps(listing),
            "job": json.dumps(rec), "events": json.dumps(service.events(rec["id"])), "service log": service.log,
            "database": database_dump(service)}
    for where, text in seen.items():
        for secret in secrets:
            assert secret not in text and secret.replace("%2F", "/") not in text, f"credential in the {where}"


@pytest.mark.bridge_logic  # the bridge's own logic: first leg only
def test_clients_that_hang_up_mid_stream_are_no_server_error(service) -> None:
    _, job = service.call("POST", "/v1/generations", {"template": "sd15_txt2img", "params": {**PARAMS, "steps": 8, "seed": 52}})
    for _ in range(3):  # three clients leave while the job still sends events
        req = urllib.request.Request(f"{service.url}/v1/generations/{job['id']}/events", headers={"Authorization": f"Bearer {KEY}"})
        stream = urllib.request.urlopen(req, timeout=30)
        stream.readline()
        stream.close()
    assert service.wait_end(job["id"])["status"] == "succeeded"
    assert "internal error" not in service.log and "Traceback" not in service.log, service.log[-3000:]


def database_dump(service) -> str:
    """Everything the service's database holds on disk (SQLite's files) or in a dump (pg_dump)."""
    if service.db_url.startswith("sqlite"):
        files = [service.db_path, *service.db_path.parent.glob(service.db_path.name + "-*")]
        return "".join(f.read_bytes().decode("latin-1") for f in files if f.exists())
    return subprocess.run([pg_bin("pg_dump"), "--dbname", service.db_url], capture_output=True, text=True, check=True).stdout


def test_a_pod_download_retry_is_an_event_on_the_job(service, file_server, weights) -> None:
    # a file of this service's own (the pod is shared by the back ends' runs, and would have it cached)
    data = cached_lora(LoraSpec(layout="kohya", seed=service.port, output_name="flaky")).read_bytes()
    file_server.add("/flaky.safetensors", data, Faults(cut_at=[len(data) // 2]))
    _, lora = service.call("POST", "/v1/loras", {"name": "flaky", "character_id": 602, "status": "ready",
                                                 "source": file_server.url("/flaky.safetensors")})
    _, rec = service.call("POST", "/v1/generations?wait=true", {"template": "sd15_txt2img", "params": PARAMS,
                                                                "character_id": 602})
    assert rec["status"] == "succeeded" and rec["applied"]
    retries = [d for _, t, d in service.events(rec["id"]) if t == "fetch_retry"]
    assert retries and retries[0]["retries"] == 1 and "flaky.safetensors" in retries[0]["source"]


@pytest.mark.bridge_logic  # the bridge's own logic: first leg only
def test_registry_refuses_sources_the_pods_would_refuse(service) -> None:
    for source in ("http://169.254.169.254/latest/x.safetensors", "/etc/passwd", "http://localhost:9/x.safetensors",
                   "file:///etc/shadow"):
        status, err = service.call("POST", "/v1/loras", {"name": "evil", "family": "sd15", "status": "ready", "source": source})
        assert status == 400 and err["error"]["type"] == "source_refused", (source, err)
    assert not any(item["name"] == "evil" for item in service.call("GET", "/v1/loras")[1]["loras"])


def test_embedded_pod_with_a_route_token(tmp_path) -> None:
    """``serve --embedded-pod`` with LORA_BRIDGE_TOKEN: the pod requires it, and the service sends it."""
    svc = Service([], tmp_path, env={"LORA_BRIDGE_TOKEN": "route-secret", "LORA_BRIDGE_POD_TOKEN": ""})
    svc.args.append("--embedded-pod")
    try:
        svc.start(timeout=180)
        status, rec = svc.call("POST", "/v1/generations?wait=true", {"template": "sd15_txt2img",
                                                                     "params": {**PARAMS, "checkpoint": "sd15-tiny.safetensors"}})
        assert status == 200 and rec["status"] == "succeeded", rec
        pod = rec["pod"]
        assert urllib.request.urlopen(f"{pod}/system_stats").status == 200
        with pytest.raises(urllib.error.HTTPError, match="401"):  # the pod's own routes do require it
            urllib.request.urlopen(f"{pod}/lora_bridge/cache")
    finally:
        svc.kill()
