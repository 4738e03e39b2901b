"""The content-addressed disk cache: budget with LRU eviction, pins, files in use, names, stats."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from comfyui_lora_bridge.bridge.lorafiles.fetch import RetryPolicy, fetch_lora
from comfyui_lora_bridge.bridge.lorafiles.sources import FetchPolicy
from comfyui_lora_bridge.bridge.lorafiles.store import CacheFull, LoraStore
from comfyui_lora_bridge.testing.weights import LoraSpec, write_lora


@pytest.fixture()
def files(tmp_path):
    return [write_lora(tmp_path / f"l{i}.safetensors", LoraSpec(seed=40 + i, rank=2, text_encoder=False)) for i in range(4)]


def fetch(store, path, **kw):
    return fetch_lora(str(path), store, policy=FetchPolicy(local_roots=(path.parent,)), retry=RetryPolicy(delays=(0.01,)), **kw)


def test_budget_evicts_least_recently_used(tmp_path, files) -> None:
    size = files[0].stat().st_size
    store = LoraStore(tmp_path / "s", tmp_path / "loras", budget_bytes=int(size * 2.5))
    a = fetch(store, files[0], name="a")
    time.sleep(0.01)
    b = fetch(store, files[1], name="b")
    time.sleep(0.01)
    fetch(store, files[0])  # touch a: b is now the least recently used
    c = fetch(store, files[2], name="c")
    kept = {e.sha256 for e in store.entries()}
    assert kept == {a.sha256, c.sha256}
    assert not b.path.exists() and not (tmp_path / "loras" / "b.safetensors").exists()
    assert (tmp_path / "loras" / "a.safetensors").exists()
    stats = store.stats()
    assert (stats.entries, stats.evictions, stats.hits, stats.misses) == (2, 1, 1, 3)
    assert stats.bytes <= store.budget_bytes and stats.hit_rate == 0.25


def test_pinned_and_in_use_files_are_never_evicted(tmp_path, files) -> None:
    size = files[0].stat().st_size
    store = LoraStore(tmp_path / "s", budget_bytes=int(size * 2.5))
    pinned = fetch(store, files[0], pin=True)
    used = fetch(store, files[1])
    with store.in_use(used.sha256):
        with pytest.raises(CacheFull, match="pinned, in use, or reserved"):
            fetch(store, files[2])
        assert {e.sha256 for e in store.entries()} == {pinned.sha256, used.sha256}
        assert [e.in_use for e in store.entries() if e.sha256 == used.sha256] == [True]
    third = fetch(store, files[2])  # no longer in use: it can go
    assert {e.sha256 for e in store.entries()} == {pinned.sha256, third.sha256}
    assert list(store.blobs.glob(".*.part")) == []


def test_in_use_is_seen_across_processes(tmp_path, files) -> None:
    store = LoraStore(tmp_path / "s")
    r = fetch(store, files[0])
    code = (
        "import sys, time\n"
        "from comfyui_lora_bridge.bridge.lorafiles.store import LoraStore\n"
        "with LoraStore(sys.argv[1]).in_use(sys.argv[2]):\n"
        "    print('held', flush=True); time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "s"), r.sha256], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert store.evict() == [] and r.path.exists()
    finally:
        proc.kill()
        proc.wait()
    assert store.evict() == [r.sha256] and not r.path.exists()


def test_names_relink_to_new_content(tmp_path, files) -> None:
    store = LoraStore(tmp_path / "s", tmp_path / "loras")
    first = fetch(store, files[0], name="character-42")
    second = fetch(store, files[1], name="character-42")  # a new version under the same name
    link = tmp_path / "loras" / "character-42.safetensors"
    assert link.resolve() == second.path and first.path.exists()
    assert store.resolve_name("character-42.safetensors") == second.sha256
    assert sorted(n for e in store.entries() for n in e.names) == ["character-42.safetensors"]
