"""Benchmark: fetching a 1 GiB LoRA-sized file over loopback HTTP, ours vs curl, and resume.

    .venv/bin/python benchmarks/fetch.py [--size-mb 1024] [--repeat 3]

Ours = ``fetch_lora`` into a fresh disk cache: streaming SHA-256, size + header verification,
fsync and atomic rename, single stream and 4 parallel ranges. Stock = ``curl -o`` of the same
URL (no verification, no fsync). Resume: a fetch process is killed (SIGKILL) once half the
file is on disk, then a new fetch finishes it; we report the time and how many bytes were
fetched again. Prints ratios (ours / curl throughput).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from comfyui_lora_bridge.bridge.lorafiles.fetch import RetryPolicy, fetch_lora
from comfyui_lora_bridge.bridge.lorafiles.sources import FetchPolicy
from comfyui_lora_bridge.bridge.lorafiles.store import LoraStore
from comfyui_lora_bridge.bridge.lorafiles.validate import SizeLimits
from comfyui_lora_bridge.testing.file_server import FaultyFileServer, write_random_file

POLICY = FetchPolicy(allowed_hosts=("127.0.0.1",), limits=SizeLimits(warn_bytes=1 << 40, max_bytes=1 << 40))


def make_file(path: Path, size: int) -> Path:
    """A valid safetensors file of ``size`` bytes: one U8 tensor of random bytes."""
    payload = size - 8 - 256
    header = json.dumps({"w.lora_down.weight": {"dtype": "U8", "shape": [payload], "data_offsets": [0, payload]}}).encode()
    header = header.ljust(256)
    body = path.with_suffix(".body")
    write_random_file(body, payload)
    with open(path, "wb") as out, open(body, "rb") as src:
        out.write(struct.pack("<Q", len(header)) + header)
        while block := src.read(64 << 20):
            out.write(block)
    body.unlink()
    return path


def time_curl(url: str, out: Path) -> float:
    os.sync()  # no earlier run's dirty pages competing
    start = time.perf_counter()
    subprocess.run(["curl", "-sS", "-o", str(out), url], check=True)
    elapsed = time.perf_counter() - start
    out.unlink()
    return elapsed


def time_ours(url: str, root: Path, parallel: int) -> float:
    store = LoraStore(root)
    retry = RetryPolicy(parallel=parallel, parallel_min_bytes=1 << 20)
    os.sync()
    start = time.perf_counter()
    fetch_lora(url, store, policy=POLICY, retry=retry)
    elapsed = time.perf_counter() - start
    for p in store.blobs.iterdir():
        p.unlink()
    (root / "index.sqlite3").unlink()
    return elapsed


def resume_after_kill(url: str, root: Path, size: int) -> tuple[float, int, int]:
    store = LoraStore(root)
    cmd = [sys.executable, __file__, "--child", url, str(root)]
    proc = subprocess.Popen(cmd)
    while True:
        parts = list(store.blobs.glob(".*.part"))
        if parts and parts[0].stat().st_size >= size // 2:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        if proc.poll() is not None:
            raise SystemExit("child finished before it could be killed")
        time.sleep(0.002)
    partial = sum(p.stat().st_size for p in store.blobs.glob(".*.part"))
    start = time.perf_counter()
    result = fetch_lora(url, store, policy=POLICY, retry=RetryPolicy(parallel=1))
    return time.perf_counter() - start, partial, result.bytes_downloaded


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        fetch_lora(sys.argv[2], LoraStore(sys.argv[3]), policy=POLICY, retry=RetryPolicy(parallel=1))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mb * 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="fetch-bench-") as tmp, FaultyFileServer() as server:
        tmpdir = Path(tmp)
        src = make_file(tmpdir / "big.safetensors", size)
        server.add("/big.safetensors", file=src)
        url = server.url("/big.safetensors")
        curl, single, parallel = [], [], []
        for _ in range(args.repeat):
            curl.append(time_curl(url, tmpdir / "curl.out"))
            single.append(time_ours(url, tmpdir / "s1", 1))
            parallel.append(time_ours(url, tmpdir / "s4", 4))
        mb = size / 2**20
        c, s1, s4 = (statistics.median(x) for x in (curl, single, parallel))
        print(f"file: {mb:.0f} MiB over loopback HTTP, median of {args.repeat} runs")
        print(f"curl -o                      : {c:6.2f} s  {mb / c:7.0f} MiB/s")
        print(f"ours, 1 stream (verified)    : {s1:6.2f} s  {mb / s1:7.0f} MiB/s  ratio to curl {c / s1:.2f}")
        print(f"ours, 4 ranges (verified)    : {s4:6.2f} s  {mb / s4:7.0f} MiB/s  ratio to curl {c / s4:.2f}")
        elapsed, partial, refetched = resume_after_kill(url, tmpdir / "resume", size)
        print(f"resume after SIGKILL at {partial / size:.0%}: {elapsed:.2f} s for the rest; "
              f"bytes fetched again: {refetched - (size - partial)}")


if __name__ == "__main__":
    main()
