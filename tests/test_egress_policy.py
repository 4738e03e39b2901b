"""The egress policy that LoRA sources and webhooks share, fuzzed: whatever the URL, only public
addresses or allowlisted hosts pass, link-local and metadata addresses never, and nothing but
the policy's own errors comes out."""

from __future__ import annotations

import ipaddress

import pytest
from comfyui_lora_bridge.bridge.jobs.webhooks import check_webhook_url
from comfyui_lora_bridge.bridge.lorafiles.sources import (
    FetchPolicy,
    SourceError,
    SourceRefused,
    check_source,
    parse_source,
)
from hypothesis import given, settings
from hypothesis import strategies as st

addresses = st.ip_addresses(v=4) | st.ip_addresses(v=6)


def _url(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, scheme: str = "http") -> str:
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"{scheme}://{host}:8080/lora.safetensors?token=x"


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not (ip.is_private or ip.is_loopback or ip.is_reserved or ip.is_unspecified or ip.is_multicast
                or ip.is_link_local or str(ip) in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"))


@settings(max_examples=300, deadline=None)
@given(ip=addresses | st.ip_addresses(v=4).map(lambda a: ipaddress.IPv6Address(f"::ffff:{a}")),
       allowlisted=st.booleans(), scheme=st.sampled_from(["http", "https"]))
def test_addresses_pass_only_when_public_or_allowlisted(ip, allowlisted: bool, scheme: str) -> None:
    policy = FetchPolicy(allowed_hosts=(str(ip),) if allowlisted else ())
    url = _url(ip, scheme)
    for check in (lambda: check_source(parse_source(url), policy), lambda: check_webhook_url(url, policy)):
        try:
            check()
            passed = True
        except SourceRefused:
            passed = False
        target = ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip
        if target.is_link_local or str(target) in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"):
            assert not passed, url  # never, allowlisted or not
        elif not allowlisted:
            assert passed == _public(target), url


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=80) | st.from_regex(r"(https?|s3|file|ftp|gopher)://[^/\s]{0,20}(/.{0,20})?", fullmatch=True))
def test_any_text_gives_a_source_or_a_clear_error(text: str) -> None:
    policy = FetchPolicy(allowed_hosts=("only.example",), allowed_buckets=("only-bucket",))
    try:
        source = parse_source(text)
        if source.kind == "local" or source.kind == "s3" or policy.allowed_hosts:
            check_source(source, policy)  # no DNS: the allowlist decides first for http
    except SourceError:
        return


@pytest.mark.parametrize("url", ["file:///etc/passwd", "s3://bucket/key", "ftp://example.com/x", "gopher://x"])
def test_webhooks_are_http_only(url: str) -> None:
    with pytest.raises(SourceError):
        check_webhook_url(url, FetchPolicy(allowed_buckets=("bucket",)))
