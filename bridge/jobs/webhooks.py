"""Signed completion webhooks: HMAC-SHA256 over ``"{timestamp}.{body}"``, retried with backoff,
sent only where the egress policy allows and never along a redirect.

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

from ..lorafiles.sources import (
    FetchPolicy,
    SourceError,
    SourceRefused,
    check_source,
    parse_source,
    redact_url,
)

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


def check_webhook_url(url: str, policy: FetchPolicy) -> None:
    """Raise ``SourceRefused`` unless ``url`` is an http(s) URL the egress policy allows (the same
    rules as LoRA sources: allowlist, no link-local or metadata addresses, private ones only when allowlisted)."""
    source = parse_source(url)
    if source.kind != "http":
        raise SourceRefused(f"webhook URL {redact_url(url)} is not http(s)")
    check_source(source, policy)


async def deliver(url: str, secret: str, payload: dict[str, Any], policy: FetchPolicy,
                  delays: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)) -> tuple[bool, str]:
    """POST ``payload`` to ``url``, signed; retried on failure. Returns (delivered, what happened).

    The URL is re-checked against the egress policy before every attempt (its address may have
    changed), and redirects are never followed: the signed body goes to the URL the caller gave
    or nowhere.
    """
    body = json.dumps(payload, default=str).encode()
    outcome = "not attempted"
    for attempt, delay in enumerate((0.0, *delays)):
        await asyncio.sleep(delay)
        try:
            await asyncio.get_running_loop().run_in_executor(None, check_webhook_url, url, policy)
        except SourceError as exc:
            return False, f"refused: {exc}"
        ts = int(time.time())
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign(secret, ts, body)}
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                    if 200 <= resp.status < 300:
                        return True, f"answered {resp.status}"
                    if 300 <= resp.status < 400:
                        return False, f"answered {resp.status} (a redirect): redirects are not followed"
                    outcome = f"answered {resp.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            outcome = f"failed: {type(exc).__name__}"
        log.warning("webhook attempt %d to %s %s", attempt + 1, redact_url(url), outcome)
    return False, outcome
