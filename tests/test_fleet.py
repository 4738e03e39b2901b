"""The fleet's table and loop on a real SQLite database shared by two replicas: membership seen by every
replica, DNS targets that gain and lose addresses, heartbeats missed and pods forgotten. (The pods are
addresses nothing answers on: how the bridge treats real pods is in ``test_fleet_e2e.py``.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

from comfyui_lora_bridge.bridge.jobs.database import AsyncDatabase, Database
from comfyui_lora_bridge.bridge.jobs.fleet import Fleet
from comfyui_lora_bridge.bridge.pack_protocol import PodAnnouncement
from comfyui_lora_bridge.bridge.pods.pool import PodConfig, PodPool
from comfyui_lora_bridge.bridge.settings import Settings

NOBODY = "http://127.0.0.1:9"  # nothing listens there: a pod that does not answer


def _fleet(path: Path, replica: str, resolve=None, **env: str) -> Fleet:
    settings = Settings.from_env({"LORA_BRIDGE_CACHE": str(path.parent), **env})
    pool = PodPool([], health_ttl=0.05)
    db = AsyncDatabase(Database(f"sqlite:///{path}", replica))
    return Fleet(db, pool, settings, sync_s=0.05, **({"resolve": resolve} if resolve else {}))


async def _until(check, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


def test_every_replica_routes_to_the_same_pods(tmp_path: Path) -> None:
    async def go() -> None:
        a, b = _fleet(tmp_path / "db", "a"), _fleet(tmp_path / "db", "b")
        await a.start([PodConfig(NOBODY, "secret")])
        await b.start([])
        try:
            await _until(lambda: NOBODY in b.pool.status)  # configured on a, joined on b
            record = await b.add(PodAnnouncement(url="http://127.0.0.1:10", labels=["h100", "flux"]))
            await _until(lambda: "http://127.0.0.1:10" in a.pool.status)
            assert a.pool.status["http://127.0.0.1:10"].config.labels == {"h100", "flux"}
            assert a.pool.status[NOBODY].config.token == "secret"  # a's own --pod token, kept on a only
            assert b.pool.status[NOBODY].config.token is None
            assert "secret" not in repr(await a.records())  # the table never holds a token
            await b.drain(record.id)
            await _until(lambda: "http://127.0.0.1:10" not in a.pool.status)  # not answering: idle, so removed
            assert [r.url for r in await b.records()] == [NOBODY]
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(go())


def test_dns_targets_add_and_drain_their_addresses(tmp_path: Path) -> None:
    answers = {"pods.svc:8188": ["http://10.0.0.1:8188", "http://10.0.0.2:8188"]}

    async def resolve(target: str) -> list[str]:
        if target not in answers:
            raise OSError("no such name")
        return answers[target]

    async def go() -> None:
        fleet = _fleet(tmp_path / "db", "a", resolve, LORA_BRIDGE_PODS_DNS="pods.svc:8188,gone.svc:1",
                       LORA_BRIDGE_DNS_INTERVAL_S="0.2")
        await fleet.start([])
        try:
            await _until(lambda: len(fleet.pool.status) == 2)
            records = await fleet.records()
            assert {(r.origin, r.discovered_by) for r in records} == {("dns", "pods.svc:8188")}
            answers["pods.svc:8188"] = ["http://10.0.0.2:8188"]  # one pod scaled away
            await _until(lambda: list(fleet.pool.status) == ["http://10.0.0.2:8188"])
            del answers["pods.svc:8188"]  # a DNS blip keeps what was found
            await asyncio.sleep(0.5)
            assert list(fleet.pool.status) == ["http://10.0.0.2:8188"]
        finally:
            await fleet.stop()

    asyncio.run(go())


def test_an_announced_pod_that_stops_beating_is_lost_then_forgotten(tmp_path: Path) -> None:
    async def go() -> None:
        fleet = _fleet(tmp_path / "db", "a", LORA_BRIDGE_POD_FORGET_S="0.5")
        await fleet.start([])
        try:
            record = await fleet.add(PodAnnouncement(url=NOBODY, heartbeat_s=0.2), "announced")
            pod = fleet.pool.status[NOBODY]
            assert pod.silent is None
            await fleet.heartbeat(record.id)
            await _until(lambda: pod.silent is not None)  # three beats missed
            assert "missed its heartbeats" in pod.silent and not pod.usable
            await _until(lambda: NOBODY not in fleet.pool.status)  # silent for forget_s more: removed
        finally:
            await fleet.stop()

    asyncio.run(go())
