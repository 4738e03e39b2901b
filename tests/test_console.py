"""The console's parts that need no browser: its sessions (signed, expiring, per key, never the key itself),
where a sign-in may lead, and the loss curve drawn on the server."""

from __future__ import annotations

import math
from pathlib import Path

from aiohttp.test_utils import make_mocked_request
from comfyui_lora_bridge.bridge.console import _next_page
from comfyui_lora_bridge.bridge.console.charts import loss_chart
from comfyui_lora_bridge.bridge.console.session import SESSION_S, same_origin, session_value, valid_session
from comfyui_lora_bridge.bridge.settings import Settings

KEYS = Settings(cache_dir=Path("/tmp"), api_keys=("key-one", "key-two"))


def test_a_session_holds_no_key_is_accepted_for_any_configured_key_and_expires() -> None:
    value = session_value("key-two", now=1000.0)
    assert "key-two" not in value
    assert valid_session(KEYS, value, now=1000.0 + SESSION_S - 1)
    assert not valid_session(KEYS, value, now=1000.0 + SESSION_S + 1)  # expired
    assert not valid_session(Settings(cache_dir=Path("/tmp"), api_keys=("key-one",)), value, now=1000.0)  # key removed
    expires, signature = value.split(".")
    assert not valid_session(KEYS, f"{int(expires) + 3600}.{signature}", now=1000.0)  # a lengthened session
    for forged in ("", "abc", "9999999999.", f"{expires}.{'0' * 64}", f"-1.{signature}"):
        assert not valid_session(KEYS, forged, now=1000.0)


def test_signing_in_leads_only_to_a_console_page() -> None:
    assert _next_page("/ui/jobs/abc") == "/ui/jobs/abc"
    for elsewhere in (None, "", "https://evil.example/ui/", "//evil.example/ui/x", "/v1/loras", "/ui\\..\\x", "ui/jobs"):
        assert _next_page(elsewhere) == "/ui/loras", elsewhere


def test_a_change_must_come_from_the_consoles_own_origin_also_behind_a_tls_proxy() -> None:
    def write(headers: dict[str, str]) -> bool:
        return same_origin(make_mocked_request("POST", "/ui/loras/upload", headers={"Host": "bridge:8188", **headers}))

    assert write({"Origin": "http://bridge:8188"})
    assert write({"Referer": "http://bridge:8188/ui/loras"})
    for foreign in ({}, {"Origin": "null"}, {"Origin": "http://evil.example"}, {"Origin": "https://bridge:8188"},
                    {"Referer": "http://bridge:8188.evil.example/ui/"}):
        assert not write(foreign), foreign
    # behind an ingress that terminates TLS: the browser's origin is the proxy's
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "loras.example.com"}
    assert write({**proxied, "Origin": "https://loras.example.com"})
    assert not write({**proxied, "Origin": "http://bridge:8188"})
    assert write({"X-Forwarded-Proto": "https", "Origin": "https://bridge:8188"})  # proxy kept the Host header


def test_the_loss_curve_spans_its_box_from_the_first_to_the_last_step() -> None:
    chart = loss_chart([0.5, 0.25, math.nan, 0.125], width=200, height=100, pad=10)
    assert chart is not None and (chart.steps, chart.first, chart.last, chart.low, chart.high) == (3, 0.5, 0.125, 0.125, 0.5)
    points = [tuple(map(float, p.split(","))) for p in chart.points.split()]
    assert points[0] == (10.0, 10.0) and points[-1] == (190.0, 90.0)  # highest loss at the top left, lowest bottom right
    assert loss_chart([]) is None and loss_chart([math.inf]) is None
    assert loss_chart([0.3]) is not None  # one step: a point, not a division by zero
