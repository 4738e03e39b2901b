"""This pod in a bridge's fleet: it announces itself once ComfyUI answers, renews with heartbeats, drains, leaves.

With ``LORA_BRIDGE_REGISTER_URL`` (the bridge) set, a thread waits until this ComfyUI answers, then
announces the pod (``POST /v1/pods/announce`` with ``LORA_BRIDGE_REGISTRATION_TOKEN``): the URL the
bridge reaches it at (``LORA_BRIDGE_POD_URL``, else this host's address and ComfyUI's port) and
``LORA_BRIDGE_POD_LABELS``. It renews every ``LORA_BRIDGE_HEARTBEAT_S`` and announces again when the
bridge has forgotten it. ``POST /lora_bridge/drain`` (a Kubernetes ``preStop`` hook) makes the pod take
no more jobs: the bridge is told (``DELETE /v1/pods/{id}``: it moves the jobs waiting in this ComfyUI's
queue elsewhere and removes the pod once idle) and the route waits until the queue is empty;
``DELETE /lora_bridge/drain`` calls the drain off (the pod announces itself again). When the
process ends (SIGTERM, Ctrl-C) the pod leaves the fleet. Without a bridge URL only the drain state
exists: the bridge's health checks read it.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import socket
import threading
import urllib.error
import urllib.request
from types import FrameType
from typing import Any, Callable

from ..bridge import pack_protocol as protocol
from ..bridge.settings import Settings, settings

log = logging.getLogger("lora_bridge")


def _comfy_address() -> tuple[str, int]:
    """The address and port this ComfyUI listens on (its command line), loopback for a wildcard."""
    try:
        from comfy.cli_args import args
    except ImportError:
        return "127.0.0.1", 8188
    host = str(getattr(args, "listen", "127.0.0.1") or "127.0.0.1").split(",")[0].strip()
    return ("127.0.0.1" if host in ("", "0.0.0.0", "::") else host), int(getattr(args, "port", 8188))


def tasks_remaining() -> int:
    """Prompts running or waiting in this ComfyUI's queue."""
    from server import PromptServer

    return int(PromptServer.instance.prompt_queue.get_tasks_remaining())


class Membership:
    """The pod's side of the fleet: its id at the bridge, whether it drains, the heartbeat thread."""

    def __init__(self) -> None:
        self.draining = threading.Event()
        self.stopped = threading.Event()
        self.pod_id: str | None = None

    @property
    def config(self) -> Settings:
        return settings()

    def own_url(self) -> str:
        if self.config.pod_url:
            return self.config.pod_url
        host, port = _comfy_address()
        if host.startswith("127.") or host == "localhost":
            host = socket.gethostbyname(socket.gethostname())  # the address other machines reach (a Kubernetes pod's IP)
        return f"http://{host}:{port}"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> tuple[int, Any]:
        assert self.config.register_url
        token = self.config.registration_token
        request = urllib.request.Request(self.config.register_url + path, method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json",
                                                  **({"Authorization": f"Bearer {token}"} if token else {})})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 (the operator's bridge URL)
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, None

    def announce(self) -> bool:
        payload = protocol.PodAnnouncement(url=self.own_url(), labels=list(self.config.pod_labels),
                                           heartbeat_s=self.config.heartbeat_s)
        status, data = self._call("POST", protocol.POD_ANNOUNCE, payload.model_dump(exclude_none=True))
        if status != 200:
            log.warning("lora_bridge: the bridge at %s refused this pod's announcement (HTTP %s)",
                        self.config.register_url, status)
            return False
        self.pod_id = data["id"]
        log.info("lora_bridge: joined the fleet of %s as %s (%s)", self.config.register_url, self.pod_id, payload.url)
        return True

    def _renew(self) -> None:
        """Announce (again), or beat: a draining pod beats on until it leaves, so its running job is not failed over."""
        if self.pod_id is None:
            if not self.draining.is_set():
                self.announce()
            return
        status, _ = self._call("POST", protocol.POD_HEARTBEAT.format(id=self.pod_id))
        if status == 404:  # the bridge forgot this pod (lost for long, its table reset) or removed it once drained
            self.pod_id = None
            if not self.draining.is_set():
                self.announce()

    def run(self, comfy_up: Callable[[], bool]) -> None:
        """The heartbeat thread: wait for ComfyUI, announce, renew until the process stops."""
        while not comfy_up():
            if self.stopped.wait(0.5):
                return
        while not self.stopped.is_set():
            try:
                self._renew()
            except (OSError, ValueError, KeyError) as exc:  # the bridge is away: try again at the next beat
                log.warning("lora_bridge: could not reach the bridge at %s: %s", self.config.register_url, exc)
            self.stopped.wait(self.config.heartbeat_s)

    def drain(self) -> None:
        """Take no more jobs: the bridge stops sending any and moves those still waiting in the queue."""
        self.draining.set()
        if self.config.register_url and self.pod_id:
            try:
                self._call("DELETE", protocol.POD_PATH.format(id=self.pod_id))
            except OSError as exc:
                log.warning("lora_bridge: could not tell the bridge this pod drains: %s", exc)

    def resume(self) -> None:
        """Call a drain off: take jobs again, and announce the pod anew (the bridge may have removed it)."""
        self.draining.clear()
        if self.config.register_url and not self.stopped.is_set():
            try:
                self.announce()
            except OSError as exc:  # the heartbeat thread announces at its next beat
                self.pod_id = None
                log.warning("lora_bridge: could not tell the bridge this pod takes jobs again: %s", exc)

    def leave(self) -> None:
        """Leave the fleet (the process ends)."""
        if not self.stopped.is_set():
            self.stopped.set()
            self.drain()


def _comfy_answers() -> bool:
    host, port = _comfy_address()
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/system_stats", timeout=2):  # noqa: S310 (this ComfyUI)
            return True
    except (OSError, ValueError):
        return False


membership = Membership()


def start_membership() -> None:
    """Inside ComfyUI: announce this pod to ``LORA_BRIDGE_REGISTER_URL`` once ComfyUI answers, and leave on exit."""
    if not membership.config.register_url:
        return
    threading.Thread(target=membership.run, args=(_comfy_answers,), name="lora-bridge-membership", daemon=True).start()
    atexit.register(membership.leave)
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except ValueError:
        return

    def on_term(signum: int, frame: FrameType | None) -> None:  # leave, then end as the signal would have
        membership.leave()
        if callable(previous):
            previous(signum, frame)
        else:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: atexit still covers a normal exit
        pass
