"""The bridge service as a real process for tests: start, stop (SIGTERM), kill (SIGKILL), call, stream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from comfyui_lora_bridge.bridge.api_client import BridgeClient
from comfyui_lora_bridge.bridge.jobs.database import Database
from comfyui_lora_bridge.bridge.jobs.states import is_terminal
from comfyui_lora_bridge.testing.server import free_port
from support import POD_TOKEN, S3_ENV

KEY = "test-api-key"
SECRET = "webhook-secret"
EXE = str(Path(sys.executable).with_name("lora-bridge"))


class Service:
    """``lora-bridge serve`` in front of ``pods``, with its database and outputs under ``tmp``."""

    def __init__(self, pods: list[str], tmp: Path, s3_endpoint: str | None = None, env: dict[str, str] | None = None,
                 db_url: str | None = None, replica: str | None = None, outputs: Path | None = None) -> None:
        self.port, self.tmp = free_port(), tmp
        self.env = {**os.environ, **S3_ENV, "LORA_BRIDGE_API_KEYS": KEY, "LORA_BRIDGE_POD_TOKEN": POD_TOKEN,
                    "LORA_BRIDGE_COST_PER_HOUR": "3.6", "LORA_BRIDGE_WEBHOOK_SECRET": SECRET,
                    "LORA_BRIDGE_UPLOAD_DIR": str(tmp / "uploads"), "LORA_BRIDGE_ALLOWED_HOSTS": "127.0.0.1",
                    "LORA_BRIDGE_STREAM_HEARTBEAT_S": "0.5", "LORA_BRIDGE_RETRY_DELAYS": "0.2,0.4,0.8"}  # 2,4,8 s scaled
        if s3_endpoint:
            self.env.update(LORA_BRIDGE_S3_ENDPOINT=s3_endpoint, LORA_BRIDGE_UPLOAD_BUCKET="loras",
                            LORA_BRIDGE_OUTPUT_BUCKET="loras")
        self.env.update(env or {})
        self.db_path = tmp / "bridge.sqlite3"
        self.db_url = db_url or f"sqlite:///{self.db_path}"
        self.args = [EXE, "serve", *sum((["--pod", p] for p in pods), []), "--db", self.db_url,
                     "--port", str(self.port), "--outputs", str(outputs or tmp / "out"),
                     *(["--replica-id", replica] if replica else [])]
        self._db: Database | None = None
        self.proc: subprocess.Popen | None = None
        self.client = BridgeClient(self.url, KEY, timeout=300)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return (self.tmp / "service.log").read_text(errors="replace")

    def start(self, timeout: float = 30) -> "Service":
        with open(self.tmp / "service.log", "ab") as log:
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        for _ in range(int(timeout * 10)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with {self.proc.returncode}:\n{self.log[-3000:]}")
            try:
                if self.client.request("GET", "/healthz", auth=False).status == 200:
                    return self
            except Exception:
                pass
            time.sleep(0.1)
        raise RuntimeError(self.log[-3000:])

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self.proc:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self) -> int:
        """SIGTERM: a graceful stop; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.proc = None
        return code

    def call(self, method: str, path: str, body: Any = None, key: str | None = KEY, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        client = self.client if key == KEY else BridgeClient(self.url, key)
        resp = client.request(method, path, body, raw=raw, headers=headers, auth=key is not None)
        return resp.status, resp.data if resp.content_type == "application/json" else resp.body

    def upload(self, fields: dict[str, str], files: dict[str, Path]) -> tuple[int, Any]:
        """``POST /v1/loras/upload`` as a multipart form: text ``fields`` and ``files`` (part name -> file)."""
        return self.form("/v1/loras/upload", fields, {k: (path.name, path.read_bytes()) for k, path in files.items()})

    def form(self, path: str, fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[int, Any]:
        """``POST path`` as a multipart form: text ``fields`` and ``files`` (part name -> (file name, bytes))."""
        boundary = uuid.uuid4().hex
        parts = [(f'name="{k}"'.encode(), v.encode()) for k, v in fields.items()]
        parts += [(f'name="{k}"; filename="{name}"'.encode(), data) for k, (name, data) in files.items()]
        raw = b"".join(b"--" + boundary.encode() + b"\r\nContent-Disposition: form-data; " + h + b"\r\n\r\n" + v + b"\r\n"
                       for h, v in parts) + b"--" + boundary.encode() + b"--\r\n"
        return self.call("POST", path, raw=raw, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})

    def events(self, job_id: str, last: int = 0) -> list[tuple[int, str, dict]]:
        return [(e.id, e.event, e.data) for e in self.client.events(job_id, last)]

    def peek(self, job_id: str) -> list[tuple[int, str, dict]]:
        """Events so far, without waiting for the end (reads the service's database)."""
        if self._db is None:
            self._db = Database(self.db_url, replica="test-reader")
        return self._db.events(job_id)

    def wait_for(self, job_id: str, event: str, timeout: float = 60) -> None:
        """Until the job has recorded an event of type ``event``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(t == event for _, t, _ in self.peek(job_id)):
                return
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} never recorded {event!r}: {[t for _, t, _ in self.peek(job_id)]}")

    def wait_end(self, job_id: str, timeout: float = 120) -> dict:
        """Until the job has ended; its record."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, rec = self.call("GET", f"/v1/generations/{job_id}")
            if status == 200 and is_terminal(rec["status"]):
                return rec
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} did not end: {json.dumps(rec)[:500]}")
