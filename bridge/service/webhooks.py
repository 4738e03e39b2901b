"""Signed completion webhooks: HMAC-SHA256 over ``"{timestamp}.{body}"``, retried with backoff.

Receivers check ``X-LoraBridge-Signature: sha256=<hex>`` with ``verify_signature``, which also
refuses timestamps older than the tolerance (replays).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import aiohttp

log = logging.getLogger("lora_bridge.webhooks")
SIGNATURE_HEADER, TIMESTAMP_HEADER = "X-LoraBridge-Signature", "X-LoraBridge-Timestamp"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, timestamp: str, body: bytes, signature: str, tolerance: float = 300.0,
                     now: float | None = None) -> bool:
    """True when ``signature`` is ours for this body and timestamp, and the timestamp is recent."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature or "")


async def deliver(url: str, secret: str, payload: dict[str, Any], delays: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)) -> bool:
    """POST ``payload`` to ``url``, signed; retried on failure. True once a 2xx answer came."""
    body = json.dumps(payload, default=str).encode()
    for attempt, delay in enumerate((0.0, *delays)):
        await asyncio.sleep(delay)
        ts = int(time.time())
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign(secret, ts, body)}
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                async with session.post(url, data=body, headers=headers) as resp:
                    if 200 <= resp.status < 300:
                        return True
                    log.warning("webhook attempt %d answered %d", attempt + 1, resp.status)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("webhook attempt %d failed: %s", attempt + 1, type(exc).__name__)
    return False
