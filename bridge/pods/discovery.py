"""Pods found by DNS: every address of a name (a Kubernetes headless Service) is a pod on the given port."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from ..errors import ConfigError


def parse_target(text: str) -> tuple[str, int]:
    """``name:port`` as its two parts; ``ConfigError`` naming the value otherwise."""
    name, _, port = text.strip().rpartition(":")
    if not name or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"pods DNS target {text!r}: give name:port (e.g. comfyui-pods.default.svc:8188)")
    return name, int(port)


def _url(address: str, port: int) -> str:
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    return f"http://{host}:{port}"


async def resolve_pods(target: str) -> list[str]:
    """The pod URLs behind ``name:port`` now, sorted (``OSError`` when the name does not resolve)."""
    name, port = parse_target(target)
    infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM)
    return sorted({_url(str(info[4][0]), port) for info in infos})
