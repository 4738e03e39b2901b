"""Run a real ComfyUI (on the CPU unless told otherwise) on a free loopback port, with this node pack loaded.

Each server gets a private base directory (models, input, output, user, custom_nodes) with
the repository linked into ``custom_nodes/``. The process runs in its own process group and
is told to die with its parent, so no ComfyUI outlives the test run or demo that started it.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from ..bridge.errors import PodStartError
from .install import comfyui_dir

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
NODE_PACK_LINK = "comfyui-lora-bridge"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class LocalComfy:
    """A ComfyUI server process; use as a context manager or call ``start``/``stop``."""

    def __init__(
        self,
        base_dir: Path | None = None,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        load_node_pack: bool = True,
        device: str = "cpu",
        python: str | None = None,
    ) -> None:
        self._own_base = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="lora-bridge-pod-"))
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.load_node_pack = load_node_pack
        self.device = device  # "cpu", or "cuda" for ComfyUI's own choice of GPU settings
        self.python = python or sys.executable  # another environment's interpreter runs ComfyUI with what it has
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.base_dir / "comfyui.log"
        for sub in ("models/checkpoints", "models/loras", "input", "output", "user", "custom_nodes"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        if load_node_pack:
            link = self.base_dir / "custom_nodes" / NODE_PACK_LINK
            if not link.exists():
                link.symlink_to(PACKAGE_ROOT, target_is_directory=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def models_dir(self, folder: str) -> Path:
        """``models/<folder>`` of this server (created if missing)."""
        path = self.base_dir / "models" / folder
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = 240.0) -> "LocalComfy":
        """Start ComfyUI and wait until ``/system_stats`` answers."""
        if self.process is not None:
            return self
        cmd = [
            self.python, "main.py", *(["--cpu"] if self.device == "cpu" else []), "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch", "--base-directory", str(self.base_dir), *self.extra_args,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                cmd, cwd=comfyui_dir(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True, preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise PodStartError(f"ComfyUI exited with code {code} while starting", self.log_tail())
            if self.is_ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise PodStartError(f"ComfyUI did not answer on {self.url} within {timeout:.0f} s", self.log_tail())

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/system_stats", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL), as a crashed pod would die."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
            self.process = None

    def stop(self, grace: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``grace`` seconds) and its children."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        atexit.unregister(self.stop)

    def cleanup(self) -> None:
        """Stop and remove the base directory if this object created it."""
        self.stop()
        if self._own_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> "LocalComfy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
