"""s3:// sources against a real S3-compatible server (moto's server mode over HTTP on loopback)."""

from __future__ import annotations

import hashlib

import pytest
from comfyui_lora_bridge.bridge.lorafiles import sources
from comfyui_lora_bridge.bridge.lorafiles.fetch import (
    FetchCancelled,
    IntegrityError,
    RetryPolicy,
    fetch_lora,
)
from comfyui_lora_bridge.bridge.lorafiles.inspect import inspect_source
from comfyui_lora_bridge.bridge.lorafiles.sources import (
    FetchPolicy,
    SourceError,
    SourceRefused,
)
from comfyui_lora_bridge.bridge.lorafiles.store import LoraStore
from comfyui_lora_bridge.testing.weights import LoraSpec, write_lora

FAST = RetryPolicy(delays=(0.01, 0.02), parallel=3, parallel_min_bytes=1 << 20)


@pytest.fixture(scope="module")
def s3(s3, tmp_path_factory):
    """The session's S3 server with one character LoRA uploaded."""
    data = write_lora(tmp_path_factory.mktemp("s3") / "c.safetensors", LoraSpec(seed=31, trigger="chr42")).read_bytes()
    s3.client.put_object(Bucket="loras", Key="characters/42/v3.safetensors", Body=data)
    return s3.endpoint, s3.client, data


@pytest.fixture()
def store(tmp_path) -> LoraStore:
    return LoraStore(tmp_path / "store", tmp_path / "loras")


def test_inspect_s3_reads_only_the_header(s3, monkeypatch) -> None:
    endpoint, _, data = s3
    read = []
    original = sources.S3Transport.read_range

    def counting(self, start, length):
        read.append(length)
        return original(self, start, length)

    monkeypatch.setattr(sources.S3Transport, "read_range", counting)
    info = inspect_source("s3://loras/characters/42/v3.safetensors", FetchPolicy(s3_endpoint=endpoint))
    assert (info.family, info.format, info.trigger_words, info.size) == ("sd15", "kohya_lora", ["chr42"], len(data))
    assert sum(read) <= 64 * 1024 < len(data)


def partial_bytes(store: LoraStore) -> int:
    return sum(p.stat().st_size for p in store.blobs.glob(".*.part"))


def test_fetch_from_s3_resumes_after_interruption(s3, store) -> None:
    endpoint, _, data = s3
    policy = FetchPolicy(s3_endpoint=endpoint)
    with pytest.raises(FetchCancelled):
        fetch_lora("s3://loras/characters/42/v3.safetensors", store, policy=policy, retry=RetryPolicy(delays=(0.01,)),
                   cancel=lambda: partial_bytes(store) >= len(data) // 2)
    partial = partial_bytes(store)
    assert len(data) // 2 <= partial < len(data)
    result = fetch_lora("s3://loras/characters/42/v3.safetensors", store, policy=policy, name="character-42",
                        sha256=hashlib.sha256(data).hexdigest(), retry=RetryPolicy(delays=(0.01,)))
    assert result.path.read_bytes() == data and not result.cached
    assert result.bytes_downloaded == len(data) - partial
    assert (store.link_dir / "character-42.safetensors").read_bytes() == data


def test_parallel_ranged_gets(s3, store) -> None:
    endpoint, _, data = s3
    result = fetch_lora("s3://loras/characters/42/v3.safetensors", store, policy=FetchPolicy(s3_endpoint=endpoint), retry=FAST)
    assert result.sha256 == hashlib.sha256(data).hexdigest() and result.bytes_downloaded == len(data)


def test_wrong_hash_fails_and_leaves_nothing(s3, store) -> None:
    endpoint, _, _ = s3
    with pytest.raises(IntegrityError, match="SHA-256"):
        fetch_lora("s3://loras/characters/42/v3.safetensors", store, policy=FetchPolicy(s3_endpoint=endpoint),
                   sha256="0" * 64, name="x", retry=FAST)
    assert list(store.blobs.iterdir()) == [] and list(store.link_dir.iterdir()) == []


def test_missing_key_and_bucket_allowlist(s3, store) -> None:
    endpoint, _, _ = s3
    with pytest.raises(SourceError, match="not found"):
        fetch_lora("s3://loras/nope.safetensors", store, policy=FetchPolicy(s3_endpoint=endpoint), retry=FAST)
    with pytest.raises(SourceRefused, match="not in the allowed buckets"):
        fetch_lora("s3://other/x.safetensors", store, policy=FetchPolicy(s3_endpoint=endpoint, allowed_buckets=("loras",)))


def test_object_replaced_between_attempts_restarts(s3, store, tmp_path) -> None:
    endpoint, client, data = s3
    client.put_object(Bucket="loras", Key="brand/abc.safetensors", Body=data)
    policy = FetchPolicy(s3_endpoint=endpoint)
    with pytest.raises(FetchCancelled):
        fetch_lora("s3://loras/brand/abc.safetensors", store, policy=policy, retry=RetryPolicy(delays=(0.01,)),
                   cancel=lambda: partial_bytes(store) >= 1_000_000)
    assert 1_000_000 <= partial_bytes(store) < len(data)
    new = write_lora(tmp_path / "n.safetensors", LoraSpec(seed=32)).read_bytes()
    client.put_object(Bucket="loras", Key="brand/abc.safetensors", Body=new)
    result = fetch_lora("s3://loras/brand/abc.safetensors", store, policy=policy, retry=RetryPolicy(delays=(0.01,)))
    assert result.path.read_bytes() == new
