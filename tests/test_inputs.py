"""Every input is parsed at the edge: hostile and clumsy requests get a clear 4xx, never a 500,
and a refused request stores nothing. The service in-process (no pod needed), its OpenAPI
document fuzzed by schemathesis, and the pod routes on the real ComfyUI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web
from comfyui_lora_bridge.bridge.api_client import BridgeClient
from comfyui_lora_bridge.bridge.http.app import create_app
from comfyui_lora_bridge.bridge.jobs.database import Database
from comfyui_lora_bridge.bridge.jobs.uploads import LoraUploads
from comfyui_lora_bridge.bridge.lorafiles.sources import FetchPolicy
from comfyui_lora_bridge.bridge.pack_protocol import strict_json
from comfyui_lora_bridge.bridge.pods.pool import PodConfig, PodPool
from comfyui_lora_bridge.bridge.settings import Settings
from comfyui_lora_bridge.testing.server import free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import POD_TOKEN

KEY = "inputs-key"


class LocalService:
    """The service in a thread of this process, in front of a pod that does not exist."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        configured = Settings.from_env({"LORA_BRIDGE_CACHE": str(tmp), "LORA_BRIDGE_API_KEYS": KEY,
                                        "LORA_BRIDGE_ALLOWED_HOSTS": "127.0.0.1", "LORA_BRIDGE_ALLOWED_BUCKETS": "only-this"})
        policy = FetchPolicy.from_settings(configured)
        self.db = Database(str(tmp / "db.sqlite3"))
        self.uploads = tmp / "uploads"
        pool = PodPool([PodConfig("http://127.0.0.1:9")], retry_delays=(0.05, 0.1, 0.2))  # no pod: jobs end fast
        app = create_app(self.db, pool, tmp / "out", configured, policy, LoraUploads(self.uploads))
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app)
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.runner.setup())
            self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=serve, daemon=True).start()
        ready.wait(10)
        self.client = BridgeClient(f"http://127.0.0.1:{self.port}", KEY, timeout=30)

    def counts(self) -> tuple[int, int, list[str]]:
        """LoRAs, jobs and files in the upload folder: what a refused request must leave unchanged."""
        jobs = sum(self.db.job_counts().values())
        return len(self.db.list_loras()), jobs, sorted(p.name for p in self.uploads.iterdir())

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    svc = LocalService(tmp_path_factory.mktemp("inputs"))
    yield svc
    svc.close()


HOSTILE = [
    ("POST", "/v1/loras", {"name": "x", "rank": {"a": 1}}, "body.rank"),
    ("POST", "/v1/loras", {"name": "x", "version": [1]}, "body.version"),
    ("POST", "/v1/loras", {"name": "x", "version": "abc"}, "body.version"),
    ("POST", "/v1/loras", {"name": "x", "version": -5}, "body.version"),
    ("POST", "/v1/loras", {"name": "x", "size": "big"}, "body.size"),
    ("POST", "/v1/loras", {"name": "x", "metadata": [1, 2]}, "body.metadata"),
    ("POST", "/v1/loras", {"name": "x", "character_id": {"a": 1}}, "body.character_id"),
    ("POST", "/v1/loras", b'{"name": "x", "rank": NaN}', "NaN is not valid JSON"),
    ("POST", "/v1/loras", b'{"name": "x", "size": Infinity}', "Infinity is not valid JSON"),
    ("POST", "/v1/loras", {"name": "x", "colour": "red"}, "body.colour"),
    ("POST", "/v1/loras", {"name": "x", "status": "bogus"}, "body.status"),
    ("POST", "/v1/loras", {"name": "x", "character_id": 1, "brand_id": 2}, "give one owner"),
    ("POST", "/v1/loras", [1, 2], "must be a JSON object"),
    ("POST", "/v1/loras", b"{broken", "not valid JSON"),
    ("POST", "/v1/generations", {"template": "sd15_txt2img", "lora_policy": "bogus"}, "body.lora_policy"),
    ("POST", "/v1/generations", {"template": "sd15_txt2img", "apply_mode": "bogus"}, "body.apply_mode"),
    ("POST", "/v1/generations", b'{"template": "sd15_txt2img", "lora_strength": NaN}', "NaN is not valid JSON"),
    ("POST", "/v1/generations", {"template": "sd15_txt2img", "lora_strength": 101}, "body.lora_strength"),
    ("POST", "/v1/generations", {"template": "sd15_txt2img", "lora_strength": "1"}, "body.lora_strength"),
    ("POST", "/v1/generations", {"template": "sd15_txt2img", "lora_strength": True}, "body.lora_strength"),
    ("POST", "/v1/generations", {"template": "sd15_txt2img", "loras": [{"lora_id": "1", "strength_model": "0.5"}]},
     "body.loras[0].strength_model"),
    ("POST", "/v1/generations", {"template": "sd15_txt2img", "character_id": {"a": 1}}, "body.character_id"),
    ("POST", "/v1/generations", {"template": "sd15_txt2img", "workflow": {}}, "give a 'template'"),
    ("POST", "/v1/generations", {"template": "sd15_txt2img", "lora_weights": 0.8}, "body.lora_weights"),
    ("POST", "/v1/generations", {"template": "sd15_txt2img", "params": {"prompt": ["a"]}}, "body.params.prompt"),
    ("POST", "/v1/generations", {"workflow": {"nodes": [5], "links": []}}, "malformed workflow: nodes[0]"),
    ("POST", "/v1/generations?wait=maybe", {"template": "sd15_txt2img"}, "query.wait"),
    ("POST", "/v1/generations?colour=1", {"template": "sd15_txt2img"}, "query.colour"),
    ("POST", "/v1/loras/upload", {"name": "x"}, "multipart/form-data"),
    ("GET", "/v1/loras?status=bogus", None, "query.status"),
    ("GET", "/v1/generations/abc/events?last_event_id=99999999999999999999999", None, "query.last_event_id"),
    ("GET", "/v1/generations/a%2F..%2Fb", None, "path.id"),
    ("POST", "/v1/pods/-1/cache/clear", {}, "path.id"),
    ("POST", "/v1/pods/abc/cache/clear", {}, "path.id"),
    ("POST", "/v1/pods/0/cache/clear", {"disk": "false"}, "body.disk"),
]


@pytest.mark.parametrize("method, path, body, problem", HOSTILE, ids=[f"{m} {p} {i}" for i, (m, p, _, _) in enumerate(HOSTILE)])
def test_hostile_input_is_refused_clearly_and_stores_nothing(local: LocalService, method, path, body, problem) -> None:
    before = local.counts()
    raw = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    resp = local.client.request(method, path, raw=raw)
    assert resp.status == 400, resp.body
    error = strict_json(resp.body)["error"]
    assert set(error) == {"type", "message"} and problem in error["message"], error
    assert local.counts() == before


def test_text_that_is_no_unicode_is_refused_at_the_edge(local: LocalService) -> None:
    before = local.counts()
    resp = local.client.request("POST", "/v1/generations", raw=b'{"template": "sd15_txt2img", "params": {"prompt": "\\ud800 x"}}')
    assert resp.status == 422, resp.body
    error = strict_json(resp.body)["error"]
    assert error["type"] == "invalid_text" and "params.prompt" in error["message"], error
    assert local.counts() == before


def test_last_event_id_header_is_checked(local: LocalService) -> None:
    resp = local.client.request("GET", "/v1/generations/abc/events", headers={"Last-Event-ID": "99999999999999999999999"})
    assert resp.status == 400 and "Last-Event-ID" in resp.data["error"]["message"]
    assert local.client.request("GET", "/v1/generations/abc/events", headers={"Last-Event-ID": "7"}).status == 404


def test_patch_with_wrong_types_changes_nothing(local: LocalService) -> None:
    lora = local.client.json("POST", "/v1/loras", {"name": "patch me", "version": 2, "family": "sd15"})
    for body in ({"version": "abc"}, {"rank": {"x": 1}}, {"metadata": [1]}, {"name": None, "zzz": 1}, {"owner_id": "7"}):
        resp = local.client.request("PATCH", f"/v1/loras/{lora['id']}", body)
        assert resp.status == 400, (body, resp.body)
    assert local.client.json("GET", f"/v1/loras/{lora['id']}") == lora
    assert local.client.json("PATCH", f"/v1/loras/{lora['id']}", {"version": 3, "character_id": 9})["owner_id"] == "9"


def test_an_upload_with_a_bad_field_keeps_no_file(local: LocalService, weights) -> None:
    from comfyui_lora_bridge.bridge.api_client import ServiceError

    before = local.counts()
    data = Path(weights.loras["kohya"]).read_bytes()
    with pytest.raises(ServiceError, match="form.status"):
        local.client.upload("x.safetensors", data, {"name": "x", "status": "bogus"})
    with pytest.raises(ServiceError, match="invalid_lora_file|not a safetensors|header"):
        local.client.upload("x.safetensors", b"\x00" * 64, {"name": "x"})
    assert local.counts() == before
    lora = local.client.upload("x.safetensors", data, {"name": "kept", "character_id": "5"})
    assert lora["owner_id"] == "5" and lora["family"] == "sd15" and Path(lora["source"]).exists()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3), max_leaves=6)
LORA_KEYS = ["name", "character_id", "brand_id", "owner_kind", "owner_id", "version", "status", "family", "trigger_word",
             "fallback_style", "source", "sha256", "size", "rank", "metadata", "junk"]
GEN_KEYS = ["template", "params", "workflow", "family", "character_id", "brand_id", "loras", "lora_configs",
            "lora_strength", "lora_policy", "apply_mode", "webhook_url", "junk"]


def _bodies(keys: list[str], fixed: dict) -> st.SearchStrategy[dict]:
    return st.dictionaries(st.sampled_from(keys), json_values, max_size=5).map(lambda d: {**fixed, **d})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_bodies(LORA_KEYS, {"name": "fuzz"}) | _bodies(GEN_KEYS, {"template": "sd15_txt2img"}))
def test_fuzzed_bodies_never_give_a_500_and_refusals_store_nothing(local: LocalService, body: dict) -> None:
    path = "/v1/generations" if "template" in body and "name" not in body else "/v1/loras"
    loras, jobs, _ = local.counts()
    resp = local.client.request("POST", path, raw=json.dumps(body).encode())  # NaN and Infinity included
    assert resp.status in (201, 202, 400, 404, 422), (body, resp.status, resp.body)
    strict_json(resp.body)  # answers are standard JSON
    after = local.counts()
    if resp.status >= 400:
        assert after[:2] == (loras, jobs), body
    else:
        assert after[:2] == ((loras + 1, jobs) if path == "/v1/loras" else (loras, jobs + 1))


def _wait_http(url: str) -> None:
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.1)


def _schemathesis(url: str, headers: list[str], *extra: str) -> subprocess.CompletedProcess:
    st_exe = str(Path(sys.executable).with_name("st"))
    config = Path(__file__).with_name("schemathesis.toml")
    return subprocess.run([st_exe, "--config-file", str(config), "run", url, *sum((["-H", h] for h in headers), []),
                           "--checks", "not_a_server_error",
                           "--max-examples", "25", "--seed", "1", *extra], capture_output=True, text=True, timeout=600)


def test_the_service_openapi_document_fuzzed(tmp_path) -> None:
    port = free_port()
    env = {**os.environ, "LORA_BRIDGE_API_KEYS": KEY, "LORA_BRIDGE_ALLOWED_HOSTS": "127.0.0.1",
           "LORA_BRIDGE_ALLOWED_BUCKETS": "only-this", "LORA_BRIDGE_CACHE": str(tmp_path),
           "LORA_BRIDGE_RETRY_DELAYS": "0.05,0.1,0.2", "LORA_BRIDGE_QUEUE_TIMEOUT_S": "0.3"}
    # no pod: a waiting request must end within the fuzzer's timeout
    proc = subprocess.Popen([str(Path(sys.executable).with_name("lora-bridge")), "serve", "--pod", "http://127.0.0.1:9",
                             "--db", f"sqlite:///{tmp_path / 'db.sqlite3'}", "--port", str(port), "--outputs", str(tmp_path)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz")
        spec = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json"))
        body = spec["paths"]["/v1/generations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/GenerationCreate"}  # generated from the parsing model
        assert spec["components"]["schemas"]["GenerationCreate"]["additionalProperties"] is False
        # the pod-clearing route answers 503 here (there is no pod): its inputs are covered by HOSTILE above
        run = _schemathesis(f"http://127.0.0.1:{port}/openapi.json", [f"Authorization: Bearer {KEY}"],
                            "--exclude-path", "/v1/pods/{id}/cache/clear")
        assert run.returncode == 0, run.stdout[-12000:]
        assert "passed" in run.stdout and "Schema Error" not in run.stdout
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.comfy
def test_pod_routes_refuse_bad_input_and_the_pod_survives(comfy) -> None:
    def post(path: str, raw: bytes) -> tuple[int, dict]:
        req = urllib.request.Request(comfy.url + path, data=raw, method="POST",
                                     headers={"Authorization": f"Bearer {POD_TOKEN}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def cache() -> dict:
        req = urllib.request.Request(comfy.url + "/lora_bridge/cache", headers={"Authorization": f"Bearer {POD_TOKEN}"})
        return json.load(urllib.request.urlopen(req))

    entries = [e["sha256"] for e in cache()["disk"]["items"]]
    cases = [
        ("/lora_bridge/prefetch", b'{"source": "x.safetensors", "client_id": {"a": 1}}', "client_id"),
        ("/lora_bridge/prefetch", b'{"source": 5}', "source"),
        ("/lora_bridge/prefetch", b'{"source": "x", "memory": "yes"}', "memory"),
        ("/lora_bridge/prefetch", b'{"source": "x", "sha256": "abc"}', "sha256"),
        ("/lora_bridge/prefetch", b'{"source": "x", "extra": 1}', "extra"),
        ("/lora_bridge/prefetch", b"[1]", "JSON object"),
        ("/lora_bridge/prefetch", b'{"source": "x", "memory": NaN}', "NaN"),
        ("/lora_bridge/prefetch/cancel", b"{}", "request_id"),
        ("/lora_bridge/cache/clear", b'{"disk": "false"}', "disk"),
        ("/lora_bridge/cache/clear", b'{"memory": 1}', "memory"),
    ]
    for path, raw, problem in cases:
        status, body = post(path, raw)
        assert status == 400 and body["error"]["type"] == "invalid_request" and problem in body["error"]["message"], (raw, body)
    status, body = post("/lora_bridge/prefetch", b'{"source": "\\udfff.safetensors"}')
    assert status == 422 and body["error"]["type"] == "invalid_text" and "source" in body["error"]["message"], body
    status, body = post("/lora_bridge/prefetch", b'{"source": "' + b"x" * 70_000 + b'"}')
    assert status == 413 and body["error"]["type"] == "too_large", body
    assert urllib.request.urlopen(comfy.url + "/system_stats", timeout=5).status == 200  # the pod is alive
    assert [e["sha256"] for e in cache()["disk"]["items"]] == entries  # nothing was cleared
    spec = json.load(urllib.request.urlopen(comfy.url + "/lora_bridge/openapi.json"))
    run = _schemathesis(comfy.url + "/lora_bridge/openapi.json", [f"Authorization: Bearer {POD_TOKEN}"],
                        "--exclude-path", "/lora_bridge/cache/clear")  # clearing would empty the shared pod's cache
    assert run.returncode == 0, run.stdout[-12000:]
    assert "/lora_bridge/prefetch" in spec["paths"] and urllib.request.urlopen(comfy.url + "/system_stats").status == 200
    # the fuzzer may have drained the shared pod: calling the drain off makes it take jobs again
    req = urllib.request.Request(comfy.url + "/lora_bridge/drain", method="DELETE", headers={"Authorization": f"Bearer {POD_TOKEN}"})
    assert json.load(urllib.request.urlopen(req, timeout=10))["draining"] is False
