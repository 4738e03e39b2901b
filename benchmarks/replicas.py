"""Benchmark: the bridge API with 1, 2 and 3 replicas on PostgreSQL, and 1 on SQLite.

    .venv/bin/python benchmarks/replicas.py [--jobs 120] [--concurrent 24] [--pods 2]

The pods are a FAST FAKE (this script's ``FakePod``: ComfyUI's HTTP and WebSocket protocol,
a job takes ~20 ms and sends a few progress messages) so that the bridge, not sampling, is
measured; every other part is real: ``lora-bridge serve`` processes, a throwaway PostgreSQL
cluster (``initdb`` + ``pg_ctl``) or a SQLite file. Jobs are submitted round-robin to the
replicas and each is followed (SSE) on the *next* replica, so with several replicas every
stream is fanned out through the database. Reported per setup: jobs per second (submit to
every stream ended), submit latency p50/p95, and event fan-out latency p50/p95: from the fake
pod's ``executed`` message (stamped when sent) to the SSE client on another replica, and from
the moment that event was committed to the shared log to the same client (the fan-out alone).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from aiohttp import web
from comfyui_lora_bridge.bridge.jobs.database import Database
from comfyui_lora_bridge.testing.postgres import Cluster
from comfyui_lora_bridge.testing.server import free_port

EXE = str(Path(sys.executable).with_name("lora-bridge"))
KEY = "bench-key"
WORKFLOW = {"1": {"class_type": "BenchOutput", "inputs": {"seed": 0}}}
OBJECT_INFO = {"BenchOutput": {"input": {"required": {"seed": ["INT", {"default": 0, "min": 0, "max": 2**63}]}},
                               "input_order": {"required": ["seed"]}, "output": [], "output_is_list": [],
                               "output_name": [], "name": "BenchOutput", "display_name": "BenchOutput",
                               "category": "bench", "output_node": True}}
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082")


class FakePod:
    """ComfyUI's protocol, as the bridge uses it, with jobs that take ``run_s`` (one at a time)."""

    def __init__(self, run_s: float = 0.02, steps: int = 3) -> None:
        self.run_s, self.steps, self.port = run_s, steps, free_port()
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.pending: list[str] = []
        self.running: str | None = None
        self.history: dict[str, dict] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/system_stats", lambda r: web.json_response({"system": {}, "devices": []}))
        app.router.add_get("/object_info", lambda r: web.json_response(OBJECT_INFO))
        app.router.add_get("/queue", self._queue)
        app.router.add_post("/prompt", self._prompt)
        app.router.add_get("/history/{id}", self._history)
        app.router.add_get("/view", lambda r: web.Response(body=PNG, content_type="image/png"))
        app.router.add_get("/ws", self._ws)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        asyncio.ensure_future(self._worker())

    async def _queue(self, request: web.Request) -> web.Response:
        return web.json_response({"queue_running": [[0, self.running]] if self.running else [],
                                  "queue_pending": [[0, p] for p in self.pending]})

    async def _prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompt_id = body.get("prompt_id") or str(uuid.uuid4())
        self.pending.append(prompt_id)
        await self.queue.put((prompt_id, body.get("client_id", "")))
        return web.json_response({"prompt_id": prompt_id, "number": len(self.history), "node_errors": {}})

    async def _history(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["id"]
        return web.json_response({prompt_id: self.history[prompt_id]} if prompt_id in self.history else {})

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        client = request.query.get("clientId", "")
        self.sockets[client] = ws
        await ws.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": client}})
        async for _ in ws:
            pass
        self.sockets.pop(client, None)
        return ws

    async def _send(self, client: str, type: str, data: dict) -> None:
        ws = self.sockets.get(client)
        if ws is not None and not ws.closed:
            await ws.send_str(json.dumps({"type": type, "data": data}))

    async def _worker(self) -> None:
        while True:
            prompt_id, client = await self.queue.get()
            self.pending.remove(prompt_id)
            self.running = prompt_id
            await self._send(client, "execution_start", {"prompt_id": prompt_id})
            await self._send(client, "executing", {"node": "1", "prompt_id": prompt_id})
            for step in range(1, self.steps + 1):
                await asyncio.sleep(self.run_s / self.steps)
                await self._send(client, "progress", {"value": step, "max": self.steps, "node": "1", "prompt_id": prompt_id})
            image = {"filename": f"{prompt_id}.png", "subfolder": "", "type": "output"}
            success = {"prompt_id": prompt_id, "timestamp": int(time.time() * 1000)}
            self.history[prompt_id] = {"prompt": [0, prompt_id, {}, {}, ["1"]], "outputs": {"1": {"images": [image]}},
                                       "status": {"status_str": "success", "completed": True,
                                                  "messages": [["execution_success", success]]}}
            self.running = None
            await self._send(client, "executed", {"node": "1", "prompt_id": prompt_id, "sent_at": time.time(),
                                                  "output": {"images": [image]}})
            await self._send(client, "execution_success", success)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def start_replicas(n: int, db_url: str, pods: list[str], tmp: Path) -> list[tuple[subprocess.Popen, str]]:
    env = {**os.environ, "LORA_BRIDGE_API_KEYS": KEY, "LORA_BRIDGE_STREAM_HEARTBEAT_S": "15"}
    procs = []
    for i in range(n):
        port = free_port()
        log = open(tmp / f"replica{i}.log", "ab")
        proc = subprocess.Popen([EXE, "serve", *sum((["--pod", p] for p in pods), []), "--db", db_url, "--port", str(port),
                                 "--outputs", str(tmp / "out"), "--replica-id", f"r{i}"], env=env, stdout=log, stderr=log)
        procs.append((proc, f"http://127.0.0.1:{port}"))
    return procs


async def _ready(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            try:
                async with session.get(url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


async def run_load(urls: list[str], db_url: str, jobs: int, concurrent: int) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {KEY}"}
    submit, fanout = [], []
    received: dict[str, float] = {}  # job -> when its output event reached the client
    gate = asyncio.Semaphore(concurrent)

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        async with gate:
            t0 = time.perf_counter()
            async with session.post(urls[i % len(urls)] + "/v1/generations", headers=headers,
                                    json={"workflow": {"1": {**WORKFLOW["1"], "inputs": {"seed": abs(i)}}}}) as resp:
                job = await resp.json()
                assert resp.status == 202, job
            submit.append(time.perf_counter() - t0)
            follower = urls[(i + 1) % len(urls)]
            async with session.get(f"{follower}/v1/generations/{job['id']}/events", headers=headers) as stream:
                event = None
                async for raw in stream.content:
                    line = raw.decode().strip()
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "output":
                        fanout.append(time.time() - json.loads(line[6:])["sent_at"])
                        received[job["id"]] = time.time()
                    elif line.startswith("data: ") and event in ("succeeded", "failed", "cancelled", "interrupted"):
                        assert event == "succeeded", line
                        break

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        await asyncio.gather(*(one(session, -1 - i) for i in range(len(urls))))  # warm: connections, pod facts
        submit.clear(), fanout.clear(), received.clear()
        start = time.perf_counter()
        await asyncio.gather(*(one(session, i) for i in range(jobs)))
        elapsed = time.perf_counter() - start
    db = Database(db_url, replica="bench-reader")
    with db.backend.read() as tx:  # when each output event was committed to the shared log
        logged = [received[job_id] - tx.execute("SELECT at FROM events WHERE job_id = ? AND type = 'output'",
                                                (job_id,)).fetchone()[0] for job_id in received]
    return {"jobs_per_s": jobs / elapsed, "submit_p50_ms": 1000 * statistics.median(submit),
            "submit_p95_ms": 1000 * _pct(submit, 0.95), "fanout_p50_ms": 1000 * statistics.median(fanout),
            "fanout_p95_ms": 1000 * _pct(fanout, 0.95), "log_p50_ms": 1000 * statistics.median(logged),
            "log_p95_ms": 1000 * _pct(logged, 0.95)}


async def main(jobs: int, concurrent: int, n_pods: int) -> None:
    pods = [FakePod() for _ in range(n_pods)]
    for pod in pods:
        await pod.start()
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp_name:
        tmp = Path(tmp_name)
        cluster = Cluster(tmp).start()
        setups = [("sqlite", 1, f"sqlite:///{tmp / 'bench.sqlite3'}")] + \
                 [("postgresql", n, cluster.new_database()) for n in (1, 2, 3)]
        print(f"pods: {n_pods} FAST FAKE pods (ComfyUI protocol, ~20 ms per job; not ComfyUI); {jobs} jobs, "
              f"{concurrent} at a time, each followed over SSE on another replica than it was submitted to")
        print(f"{'database':<11} {'replicas':>8} {'jobs/s':>8} {'submit p50':>11} {'p95':>8} {'pod->client p50':>16} "
              f"{'p95':>8} {'log->client p50':>16} {'p95':>8}")
        base = None
        try:
            for name, n, url in setups:
                procs = start_replicas(n, url, [p.url for p in pods], tmp)
                try:
                    await asyncio.gather(*(_ready(u) for _, u in procs))
                    r = await run_load([u for _, u in procs], url, jobs, concurrent)
                finally:
                    for proc, _ in procs:
                        proc.terminate()
                        proc.wait(30)
                if name == "postgresql" and n == 1:
                    base = r["jobs_per_s"]
                ratio = f"  ({r['jobs_per_s'] / base:.2f}x 1 replica)" if base and name == "postgresql" else ""
                print(f"{name:<11} {n:>8} {r['jobs_per_s']:>8.1f} {r['submit_p50_ms']:>9.1f}ms {r['submit_p95_ms']:>6.1f}ms "
                      f"{r['fanout_p50_ms']:>14.1f}ms {r['fanout_p95_ms']:>6.1f}ms {r['log_p50_ms']:>14.1f}ms "
                      f"{r['log_p95_ms']:>6.1f}ms{ratio}")
        finally:
            cluster.remove()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=120)
    parser.add_argument("--concurrent", type=int, default=24)
    parser.add_argument("--pods", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.concurrent, args.pods))
