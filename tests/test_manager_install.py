"""The node pack installed the way ComfyUI-Manager (and ``comfy node install``) installs it: the folder
in ``custom_nodes/``, its ``requirements.txt`` installed into an environment that has only ComfyUI's
own requirements (``.ci/manager_venv.py`` makes it: no ``pip install`` of this distribution, none of
the bridge's dependencies). The pack loads, and fetches LoRAs from S3 (moto) and over HTTPS, on
the ComfyUI version this leg runs."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from comfyui_lora_bridge.bridge.graphs.lora_insertion import LoraRequest, insert_loras
from comfyui_lora_bridge.bridge.pods.client import PodClient
from comfyui_lora_bridge.testing.file_server import FaultyFileServer, self_signed_tls
from comfyui_lora_bridge.testing.server import LocalComfy
from support import CHECKPOINT, POD_TOKEN, S3_ENV, pod_object_info, run_graph, txt2img

pytestmark = pytest.mark.comfy


def manager_venv() -> Path:
    """The Manager-style environment beside this leg's own (``.venv-manager``, ``.venv-comfy033-manager``)."""
    venv = Path(sys.prefix).with_name(Path(sys.prefix).name + "-manager")
    if not (venv / "bin" / "python").exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{venv} is missing: .ci/setup makes it")
        pytest.skip(f"{venv} is missing: run .ci/setup")
    return venv


def test_the_pack_installed_as_comfyui_manager_does_loads_and_fetches_from_s3_and_https(weights, s3, tmp_path) -> None:
    python = str(manager_venv() / "bin" / "python")
    present = subprocess.run([python, "-c", "import importlib.util as u; print(sorted(m for m in ('psycopg', 'jinja2', "
                              "'comfyui_lora_bridge', 'moto', 'boto3', 'urllib3') if u.find_spec(m)))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    assert present == "['boto3', 'jinja2', 'urllib3']"  # requirements.txt's, and torch's jinja2; nothing of the bridge
    data = Path(weights.loras["kohya"]).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    s3.client.put_object(Bucket="loras", Key="manager/char.safetensors", Body=data)
    tls, cert = self_signed_tls(tmp_path)
    env = {**S3_ENV, "LORA_BRIDGE_S3_ENDPOINT": s3.endpoint, "LORA_BRIDGE_ALLOWED_HOSTS": "127.0.0.1",
           "LORA_BRIDGE_TOKEN": POD_TOKEN, "SSL_CERT_FILE": str(cert)}
    with FaultyFileServer(tls) as https, LocalComfy(env=env, python=python) as pod:
        https.add("/char.safetensors", data)
        (pod.models_dir("checkpoints") / CHECKPOINT).symlink_to(weights.checkpoint)
        sources = {"s3": "s3://loras/manager/char.safetensors", "https": https.url("/char.safetensors")}
        assert sources["https"].startswith("https://")

        async def fetch(name: str, source: str) -> dict:
            async with PodClient(pod.url, token=POD_TOKEN, timeout=120) as client:
                return await client.post_json("/lora_bridge/prefetch", {"source": source, "sha256": sha, "name": name})

        for name, source in sources.items():
            answer = asyncio.run(fetch(name, source))
            assert answer["sha256"] == sha and answer["family"] == "sd15", (source, answer)
        lora = LoraRequest("manager-char", source=sources["https"], sha256=sha, family="sd15")
        graph, report = insert_loras(txt2img(), [lora], pod_object_info(pod), "pack")
        assert report.applied and any(n["class_type"].startswith("LoraBridge") for n in graph.values())
        assert run_graph(pod, graph).files  # the pack's nodes fetch and apply in that environment
        log = pod.log_tail(200_000)
    loaded = [line for line in log.splitlines() if line.strip().endswith("custom_nodes/comfyui-lora-bridge")]
    assert loaded and "IMPORT FAILED" not in loaded[0], log[-3000:]  # ComfyUI's list of custom node import times
