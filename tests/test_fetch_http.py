"""Fetching over HTTP through a server that cuts, stalls, fails and lies: a verified file or a clear error."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from comfyui_lora_bridge.bridge.lorafiles.fetch import (
    FetchCancelled,
    FetchError,
    IntegrityError,
    RetryPolicy,
    fetch_lora,
)
from comfyui_lora_bridge.bridge.lorafiles.inspect import inspect_source
from comfyui_lora_bridge.bridge.lorafiles.sources import FetchPolicy, SourceRefused
from comfyui_lora_bridge.bridge.lorafiles.store import CacheFull, LoraStore
from comfyui_lora_bridge.bridge.lorafiles.validate import (
    LoraValidationError,
    SizeLimits,
)
from comfyui_lora_bridge.bridge.settings import Settings
from comfyui_lora_bridge.testing.file_server import Faults, FaultyFileServer
from comfyui_lora_bridge.testing.server import free_port
from comfyui_lora_bridge.testing.weights import LoraSpec, write_lora

FAST = RetryPolicy(delays=(0.01, 0.02, 0.04), jitter=0.1, max_total=30)
POLICY = FetchPolicy(allowed_hosts=("127.0.0.1",), read_timeout=0.5)


@pytest.fixture(scope="module")
def lora_bytes(tmp_path_factory) -> bytes:
    return write_lora(tmp_path_factory.mktemp("l") / "x.safetensors", LoraSpec(seed=21)).read_bytes()


@pytest.fixture()
def server():
    with FaultyFileServer() as srv:
        yield srv


@pytest.fixture()
def store(tmp_path) -> LoraStore:
    return LoraStore(tmp_path / "store", tmp_path / "loras")


def visible_files(store: LoraStore) -> list[str]:
    """Files a user or ComfyUI could pick up: everything not hidden in the blobs and link folders."""
    names = [p.name for p in store.blobs.iterdir() if not p.name.startswith(".")]
    return names + [p.name for p in store.link_dir.iterdir() if not p.name.startswith(".")]


def assert_verified(result, data: bytes) -> None:
    assert result.path.read_bytes() == data
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.info is not None and result.info.family == "sd15"


@pytest.mark.parametrize("cuts", [[1], [4096], [100_000, 100_001, 2_500_000], [3_000_000]])
def test_cut_connections_resume_without_refetching(server, store, lora_bytes, cuts) -> None:
    server.add("/a.safetensors", lora_bytes, Faults(cut_at=list(cuts)))
    result = fetch_lora(server.url("/a.safetensors"), store, policy=POLICY, retry=FAST)
    assert_verified(result, lora_bytes)
    assert server.bytes_sent("/a.safetensors") == len(lora_bytes) + 1  # +1: the size probe
    assert [r.range for r in server.log][-1] == f"bytes={cuts[-1]}-{len(lora_bytes) - 1}"


def test_parallel_ranges_with_cuts(server, store, lora_bytes) -> None:
    server.add("/p.safetensors", lora_bytes, Faults(cut_at=[10_000, 1_500_000, 3_400_000]))
    retry = RetryPolicy(delays=FAST.delays, parallel=4, parallel_min_bytes=1 << 20)
    result = fetch_lora(server.url("/p.safetensors"), store, policy=POLICY, retry=retry)
    assert_verified(result, lora_bytes)
    assert server.bytes_sent("/p.safetensors") == len(lora_bytes) + 1
    assert sum(1 for r in server.log if r.status == 206) >= 4 + 3


def test_stall_times_out_and_resumes(server, store, lora_bytes) -> None:
    server.add("/s.safetensors", lora_bytes, Faults(stall_at=1_000_000, stall_seconds=2.0))
    result = fetch_lora(server.url("/s.safetensors"), store, policy=POLICY, retry=FAST)
    assert_verified(result, lora_bytes)
    assert any(r.range and r.range.startswith("bytes=1000000-") for r in server.log)


def test_server_errors_are_retried(server, store, lora_bytes) -> None:
    server.add("/e.safetensors", lora_bytes, Faults(errors=[503, 500, 503]))
    assert_verified(fetch_lora(server.url("/e.safetensors"), store, policy=POLICY, retry=FAST), lora_bytes)


def test_persistent_errors_give_a_clear_error_and_no_file(server, store, lora_bytes) -> None:
    server.add("/dead.safetensors", lora_bytes, Faults(errors=[500] * 10))
    with pytest.raises(FetchError, match="after 4 attempts.*500"):
        fetch_lora(server.url("/dead.safetensors"), store, policy=POLICY, retry=FAST, name="dead")
    assert visible_files(store) == []


def test_an_unreachable_host_is_said_in_words_after_its_retries(store) -> None:
    retries: list[tuple[int, str]] = []
    with pytest.raises(FetchError) as failure:
        fetch_lora(f"http://127.0.0.1:{free_port()}/gone.safetensors", store, policy=POLICY, retry=FAST,
                   on_retry=lambda attempt, reason, delay: retries.append((attempt, reason)))
    assert str(failure.value).endswith("failed after 4 attempts: host unreachable (connection refused)")
    assert retries == [(n, "host unreachable (connection refused)") for n in (1, 2, 3)]
    assert "NewConnectionError" not in str(failure.value) and visible_files(store) == []


def test_not_found_fails_at_once(server, store) -> None:
    with pytest.raises(Exception, match="404"):
        fetch_lora(server.url("/missing.safetensors"), store, policy=POLICY, retry=FAST)
    assert len(server.log) == 1


def test_server_ignoring_range_restarts_from_zero(server, store, lora_bytes) -> None:
    # the size probe (whole body, closed early) takes the first cut, the download the second
    server.add("/r.safetensors", lora_bytes, Faults(ignore_range=True, cut_at=[2_000_000, 2_500_000]))
    result = fetch_lora(server.url("/r.safetensors"), store, policy=POLICY, retry=FAST)
    assert_verified(result, lora_bytes)
    assert [r.status for r in server.log] == [200, 200, 200]  # probe, cut stream, fresh full stream
    assert server.log[2].range == f"bytes=2500000-{len(lora_bytes) - 1}"


def test_wrong_bytes_fail_the_hash_and_leave_nothing(server, store, lora_bytes) -> None:
    server.add("/w.safetensors", lora_bytes, Faults(wrong_bytes=True))
    with pytest.raises(IntegrityError, match="SHA-256"):
        fetch_lora(server.url("/w.safetensors"), store, sha256=hashlib.sha256(lora_bytes).hexdigest(),
                   policy=POLICY, retry=FAST, name="w")
    assert visible_files(store) == [] and not any(store.blobs.iterdir())
    with pytest.raises(IntegrityError, match="not a valid safetensors"):  # no hash given: the header check catches it
        fetch_lora(server.url("/w.safetensors"), store, policy=POLICY, retry=FAST)
    assert not any(store.blobs.iterdir())


def test_object_changed_between_attempts_restarts(server, store, lora_bytes, tmp_path) -> None:
    new = write_lora(tmp_path / "n.safetensors", LoraSpec(seed=22)).read_bytes()
    server.add("/c.safetensors", lora_bytes, Faults(cut_at=[1_000_000], change_after=2, changed=new))
    result = fetch_lora(server.url("/c.safetensors"), store, policy=POLICY, retry=FAST)
    assert result.path.read_bytes() == new  # never a mix of the two versions
    assert result.sha256 == hashlib.sha256(new).hexdigest()


def test_progress_shows_what_arrived_while_the_server_stalls(server, store, lora_bytes) -> None:
    server.add("/p.safetensors", lora_bytes, Faults(stall_at=1_500_000, stall_seconds=0.4))
    seen: list[int] = []
    fetch_lora(server.url("/p.safetensors"), store, policy=POLICY, retry=FAST, name="p",
               progress=lambda done, total: seen.append(done))
    assert 1_500_000 in seen  # reported during the stall, not only once bytes flow again
    assert seen == sorted(seen) and seen[-1] == len(lora_bytes)


def test_cancel_keeps_a_hidden_partial_that_the_next_fetch_resumes(server, store, lora_bytes) -> None:
    server.add("/k.safetensors", lora_bytes, Faults(stall_at=1_500_000, stall_seconds=0.3))
    seen = []

    def progress(done: int, total: int) -> None:
        seen.append(done)

    with pytest.raises(FetchCancelled):
        fetch_lora(server.url("/k.safetensors"), store, policy=POLICY, retry=FAST, name="k",
                   progress=progress, cancel=lambda: bool(seen) and seen[-1] >= 1_000_000)
    assert visible_files(store) == []
    partial = sum(p.stat().st_size for p in store.blobs.glob(".*.part"))
    assert 1_000_000 <= partial < len(lora_bytes)
    seen.clear()
    result = fetch_lora(server.url("/k.safetensors"), store, policy=POLICY, retry=FAST, name="k", progress=progress)
    assert_verified(result, lora_bytes)
    assert result.bytes_downloaded == len(lora_bytes) - partial  # nothing received twice
    assert server.log[-1].range == f"bytes={partial}-{len(lora_bytes) - 1}"
    assert seen == sorted(seen) and seen[-1] == len(lora_bytes)
    assert (store.link_dir / "k.safetensors").resolve() == result.path


def test_cancel_is_prompt_even_while_the_server_stalls(server, store, lora_bytes) -> None:
    server.add("/stall.safetensors", lora_bytes, Faults(stall_at=500_000, stall_seconds=20))
    policy = FetchPolicy(allowed_hosts=("127.0.0.1",), read_timeout=60)
    started = time.monotonic()
    with pytest.raises(FetchCancelled):
        fetch_lora(server.url("/stall.safetensors"), store, policy=policy, retry=FAST,
                   cancel=lambda: time.monotonic() - started > 0.5)
    assert time.monotonic() - started < 3
    assert visible_files(store) == []


def test_second_fetch_is_a_cache_hit(server, store, lora_bytes) -> None:
    server.add("/h.safetensors", lora_bytes)
    first = fetch_lora(server.url("/h.safetensors"), store, policy=POLICY, retry=FAST)
    before = len(server.log)
    again = fetch_lora(server.url("/h.safetensors?X-Amz-Signature=other"), store, policy=POLICY, retry=FAST)
    by_hash = fetch_lora(server.url("/elsewhere.safetensors"), store, sha256=first.sha256, policy=POLICY, retry=FAST)
    assert not first.cached and again.cached and by_hash.cached
    # without a hash the source is revalidated (one 1-byte ranged request); with one, nothing is asked
    assert [(r.range, r.sent) for r in server.log[before:]] == [("bytes=0-0", 1)]
    stats = store.stats()
    assert (stats.entries, stats.hits, stats.misses) == (1, 2, 1)


def test_a_source_whose_bytes_changed_is_fetched_again(server, store, lora_bytes, tmp_path) -> None:
    server.add("/moving.safetensors", lora_bytes)
    first = fetch_lora(server.url("/moving.safetensors"), store, policy=POLICY, retry=FAST)
    newer = write_lora(tmp_path / "newer.safetensors", LoraSpec(layout="kohya", seed=5)).read_bytes()
    server.add("/moving.safetensors", newer)  # same URL, new bytes (new ETag)
    second = fetch_lora(server.url("/moving.safetensors"), store, policy=POLICY, retry=FAST)
    assert not second.cached and second.sha256 == hashlib.sha256(newer).hexdigest() != first.sha256
    assert fetch_lora(server.url("/moving.safetensors"), store, policy=POLICY, retry=FAST).cached
    server.files.pop("/moving.safetensors")  # the host went away: the cached copy is used, with a warning
    offline = fetch_lora(server.url("/moving.safetensors"), store, policy=POLICY, retry=FAST)
    assert offline.cached and offline.sha256 == second.sha256 and "could not revalidate" in offline.warnings[0]


def test_concurrent_fetches_share_one_download(server, store, lora_bytes) -> None:
    server.add("/sf.safetensors", lora_bytes, Faults(stall_at=500_000, stall_seconds=0.3))
    results = []

    def worker() -> None:
        results.append(fetch_lora(server.url("/sf.safetensors"), store, policy=POLICY, retry=FAST))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.path for r in results}) == 1 and sum(not r.cached for r in results) == 1
    assert server.bytes_sent("/sf.safetensors") == len(lora_bytes) + 1


def test_concurrent_processes_share_one_download(server, tmp_path, lora_bytes) -> None:
    server.add("/mp.safetensors", lora_bytes, Faults(stall_at=500_000, stall_seconds=0.5))
    code = (
        "import sys\n"
        "from comfyui_lora_bridge.bridge.lorafiles.fetch import fetch_lora\n"
        "from comfyui_lora_bridge.bridge.lorafiles.sources import FetchPolicy\n"
        "from comfyui_lora_bridge.bridge.lorafiles.store import LoraStore\n"
        "r = fetch_lora(sys.argv[1], LoraStore(sys.argv[2]), policy=FetchPolicy(allowed_hosts=('127.0.0.1',)))\n"
        "print(r.cached, r.sha256)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, server.url("/mp.safetensors"), str(tmp_path / "st")],
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=60)[0].split() for p in procs]
    assert sorted(o[0] for o in outs) == ["False", "True", "True"]
    assert len({o[1] for o in outs}) == 1
    assert server.bytes_sent("/mp.safetensors") == len(lora_bytes) + 1


def test_remote_inspection_reads_only_the_header(server, tmp_path, lora_bytes) -> None:
    # a 1 GiB sparse "LoRA": real header, then one huge tensor
    import json
    import struct

    big = tmp_path / "big.safetensors"
    n_bytes = (1 << 30) - 4096
    header = json.dumps({"__metadata__": {"ss_base_model_version": "sd_v1"},
                         "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight":
                             {"dtype": "U8", "shape": [n_bytes], "data_offsets": [0, n_bytes]}}).encode()
    with open(big, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + n_bytes)
    server.add("/big.safetensors", file=big)
    info = inspect_source(server.url("/big.safetensors"), POLICY)
    assert info.size == big.stat().st_size and info.family == "sd15"
    assert server.bytes_sent("/big.safetensors") <= 64 * 1024 + 1
    server.add("/x.safetensors", lora_bytes)
    assert inspect_source(server.url("/x.safetensors"), POLICY).trigger_words == ["ohwx"]


def test_size_limit_is_enforced_before_download(server, store, lora_bytes) -> None:
    server.add("/big.safetensors", lora_bytes)
    policy = FetchPolicy(allowed_hosts=("127.0.0.1",), limits=SizeLimits(warn_bytes=100, max_bytes=1000))
    with pytest.raises(LoraValidationError, match="over the limit"):
        fetch_lora(server.url("/big.safetensors"), store, policy=policy, retry=FAST)
    assert server.bytes_sent("/big.safetensors") <= 1
    warn = FetchPolicy(allowed_hosts=("127.0.0.1",), limits=SizeLimits(warn_bytes=1000, max_bytes=10**9))
    assert "large for a LoRA" in fetch_lora(server.url("/big.safetensors"), store, policy=warn, retry=FAST).warnings[0]


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://169.254.169.254/latest/meta-data", "link-local or metadata"),
        ("http://metadata.google.internal/x", "metadata endpoint"),
        ("http://user:secret@example.com/x.safetensors", "credentials inside URLs"),
        ("ftp://example.com/x", "unsupported source scheme"),
    ],
)
def test_hostile_urls_are_refused(store, url, reason) -> None:
    with pytest.raises(Exception, match=reason) as err:
        fetch_lora(url, store, policy=FetchPolicy(), retry=FAST)
    assert "secret" not in str(err.value)


def test_private_hosts_need_an_explicit_allowlist(server, store, lora_bytes) -> None:
    server.add("/a.safetensors", lora_bytes)
    with pytest.raises(SourceRefused, match="non-public address"):
        fetch_lora(server.url("/a.safetensors"), store, policy=FetchPolicy(), retry=FAST)
    with pytest.raises(SourceRefused, match="not in the allowed hosts"):
        fetch_lora(server.url("/a.safetensors"), store, policy=FetchPolicy(allowed_hosts=("*.example.com",)), retry=FAST)
    assert server.log == []


def test_redirects_are_rechecked_and_auth_stays_on_its_host(server, store, lora_bytes, tmp_path) -> None:
    configured = Settings.from_env({"LORA_BRIDGE_HTTP_AUTH": ' {"127.0.0.1": "Bearer s3cr3t"} ', "LORA_BRIDGE_CACHE": str(tmp_path)})
    policy = FetchPolicy.from_settings(configured, allowed_hosts=POLICY.allowed_hosts, limits=POLICY.limits)
    server.add("/real.safetensors", lora_bytes)
    server.redirects["/moved.safetensors"] = server.url("/real.safetensors")
    result = fetch_lora(server.url("/moved.safetensors?token=abc"), store, policy=policy, retry=FAST)
    assert_verified(result, lora_bytes)
    assert all(h.get("Authorization") == "Bearer s3cr3t" for _, h in server.headers_seen)
    assert "abc" not in result.info.source and "s3cr3t" not in str(store.entries())
    server.redirects["/evil.safetensors"] = "http://169.254.169.254/latest/meta-data"
    with pytest.raises(SourceRefused, match="169.254.169.254"):
        fetch_lora(server.url("/evil.safetensors"), store, policy=POLICY, retry=FAST)
    open_policy = FetchPolicy(allowed_hosts=("127.0.0.1", "169.254.169.254"))  # even when allowlisted
    with pytest.raises(SourceRefused, match="link-local or metadata"):
        fetch_lora(server.url("/evil.safetensors"), store, policy=open_policy, retry=FAST)


def test_pickle_sources_are_refused_unless_allowed(server, store) -> None:
    server.add("/old.ckpt", b"not really a pickle")
    with pytest.raises(LoraValidationError, match="pickle"):
        fetch_lora(server.url("/old.ckpt"), store, policy=POLICY, retry=FAST)
    assert server.log == []
    allowed = FetchPolicy(allowed_hosts=("127.0.0.1",), allow_pickle=True)
    result = fetch_lora(server.url("/old.ckpt"), store, policy=allowed, retry=FAST, name="old")
    assert result.path.suffix == ".ckpt" and result.info is None
    assert (store.link_dir / "old.ckpt").exists()


def test_local_files_only_under_allowed_roots(store, tmp_path, lora_bytes) -> None:
    path = tmp_path / "mine.safetensors"
    path.write_bytes(lora_bytes)
    with pytest.raises(SourceRefused, match="outside the allowed folders"):
        fetch_lora(str(path), store, retry=FAST, policy=FetchPolicy())
    result = fetch_lora(f"file://{path}", store, retry=FAST, policy=FetchPolicy(local_roots=(tmp_path,)))
    assert_verified(result, lora_bytes)


def test_names_are_sanitised(server, store, lora_bytes) -> None:
    server.add("/a.safetensors", lora_bytes)
    for bad in ("../../etc/x", "/abs", "a/b"):
        with pytest.raises(LoraValidationError):
            fetch_lora(server.url("/a.safetensors"), store, policy=POLICY, retry=FAST, name=bad)
    assert [p.name for p in store.link_dir.iterdir()] == []


def test_bad_sha256_argument(server, store) -> None:
    with pytest.raises(FetchError, match="64 hex digits"):
        fetch_lora(server.url("/a.safetensors"), store, sha256="abc", policy=POLICY, retry=FAST)


def test_cli_fetch_and_cache_commands(server, tmp_path, lora_bytes) -> None:
    server.add("/cli.safetensors", lora_bytes)
    env = {"LORA_BRIDGE_STORE": str(tmp_path / "cs"), "LORA_BRIDGE_LINK_DIR": str(tmp_path / "links"),
           "LORA_BRIDGE_ALLOWED_HOSTS": "127.0.0.1", "PATH": "/usr/bin:/bin"}
    exe = str(Path(sys.executable).with_name("lora-bridge"))
    out = subprocess.run([exe, "fetch", server.url("/cli.safetensors"), "--name", "char42"], env=env,
                         capture_output=True, text=True, check=True)
    assert '"cached": false' in out.stdout and "100%" in out.stderr
    ls = subprocess.run([exe, "cache", "ls"], env=env, capture_output=True, text=True, check=True).stdout
    assert "char42.safetensors" in ls
    insp = subprocess.run([exe, "inspect", server.url("/cli.safetensors")], env=env, capture_output=True, text=True, check=True).stdout
    assert "SD1.x" in insp and "ohwx" in insp
    bad = subprocess.run([exe, "fetch", "http://169.254.169.254/x"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "not in the allowed hosts" in bad.stderr and "Traceback" not in bad.stderr


def test_cut_responses_with_range_ignored_end_in_a_bounded_failure(server, store, lora_bytes) -> None:
    size = len(lora_bytes)
    server.add("/endless.safetensors", lora_bytes, Faults(ignore_range=True, cut_at=[size // 2] * 50))
    retries: list[tuple[int, str]] = []
    with pytest.raises(FetchError, match="thrown away|attempts"):
        fetch_lora(server.url("/endless.safetensors"), store, policy=POLICY, retry=FAST,
                   on_retry=lambda attempt, reason, delay: retries.append((attempt, reason)))
    sent = server.bytes_sent("/endless.safetensors")
    assert sent <= 3 * size  # not the 20x re-download of a time-only bound
    assert len(retries) >= 1 and all(r == "the connection was cut" for _, r in retries), retries  # in words
    assert visible_files(store) == []


def _three_loras(tmp_path) -> list[bytes]:
    return [write_lora(tmp_path / f"b{i}.safetensors", LoraSpec(seed=70 + i)).read_bytes() for i in range(3)]


def test_concurrent_downloads_never_exceed_the_disk_budget(server, tmp_path) -> None:
    blobs = _three_loras(tmp_path)
    size = len(blobs[0])
    store = LoraStore(tmp_path / "budgeted", budget_bytes=int(size * 2.5))
    for i, data in enumerate(blobs):  # each download pauses half-way, so all three overlap
        server.add(f"/c{i}.safetensors", data, Faults(stall_at=size // 2, stall_seconds=1.0))
    peak, stop = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, sum(p.stat().st_size for p in store.blobs.iterdir() if p.is_file() and not p.name.endswith(".json")))
            time.sleep(0.005)

    outcomes: list[object] = [None] * 3

    def fetch(i: int) -> None:
        try:
            outcomes[i] = fetch_lora(server.url(f"/c{i}.safetensors"), store, policy=POLICY, retry=FAST)
        except CacheFull as exc:
            outcomes[i] = exc

    sampler = threading.Thread(target=sample)
    sampler.start()
    workers = [threading.Thread(target=fetch, args=(i,)) for i in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    sampler.join()
    assert peak <= store.budget_bytes, (peak, store.budget_bytes)
    refused = [o for o in outcomes if isinstance(o, CacheFull)]
    assert len(refused) == 1 and "reserved by downloads under way" in str(refused[0])  # two fit; the third waits for room
    assert store.stats().reserved_bytes == 0 and store.stats().bytes <= store.budget_bytes


def test_too_large_files_are_refused_at_once_and_partials_count(server, tmp_path, lora_bytes) -> None:
    size = len(lora_bytes)
    store = LoraStore(tmp_path / "small", budget_bytes=int(size * 1.5))
    server.add("/fits.safetensors", lora_bytes)
    kept = fetch_lora(server.url("/fits.safetensors"), store, policy=POLICY, retry=FAST)
    big = write_lora(tmp_path / "big.safetensors", LoraSpec(seed=3, rank=32)).read_bytes()
    assert len(big) > store.budget_bytes
    server.add("/big.safetensors", big)
    with pytest.raises(CacheFull, match="does not fit the disk budget"):
        fetch_lora(server.url("/big.safetensors"), store, policy=POLICY, retry=FAST)
    assert [e.sha256 for e in store.entries()] == [kept.sha256]  # nothing was evicted for it
    assert server.bytes_sent("/big.safetensors") <= 1  # only the size probe
    # a partial left by a cancelled download counts against the budget until it expires
    partial = store.temp_path("f" * 32)
    partial.write_bytes(b"\0" * (size // 2))
    assert store.stats().partial_bytes == size // 2
    others = _three_loras(tmp_path)
    server.add("/next.safetensors", others[0])
    store.pin(kept.sha256)
    with pytest.raises(CacheFull):  # pinned file + partial + next would overflow
        fetch_lora(server.url("/next.safetensors"), store, policy=POLICY, retry=FAST)
    old = time.time() - 2 * 24 * 3600
    os.utime(partial, (old, old))
    store.pin(kept.sha256, False)
    fetch_lora(server.url("/next.safetensors"), store, policy=POLICY, retry=FAST)
    assert not partial.exists() and store.stats().bytes <= store.budget_bytes
