"""The fleet: which pods the bridge has, shared by every replica (the ``pods`` table), and how they come and go.

Pods join four ways, all ending in the same table: ``--pod`` at start (``config``), ``POST /v1/pods``
(``api``), a pack that announces itself and renews with heartbeats (``announced``,
``nodes/pod_membership.py``), and DNS names resolved again every ``LORA_BRIDGE_DNS_INTERVAL_S``
(``dns``: each address of a Kubernetes headless Service is a pod). Every replica reads the table each
``sync_s`` into its ``PodPool``.

- Draining (``DELETE /v1/pods/{id}``, the pod's own drain route, an address gone from DNS): it takes no
  new jobs, the jobs waiting in its ComfyUI queue move to other pods (``pods/pool.py``), and it is
  removed once no job is on it.
- Lost: an announced pod that missed three heartbeats (its running jobs fail over), or any pod that does
  not answer. An announced pod silent for ``LORA_BRIDGE_POD_FORGET_S`` more is removed.

A pod's token is never stored: ``token_ref`` names one of the bridge's environment variables.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any, Awaitable, Callable

from ..errors import LoraBridgeError, NotFound, RequestInvalid
from ..pack_protocol import PodAnnouncement
from ..pods.discovery import resolve_pods
from ..pods.pool import Member, PodConfig, PodPool, pod_id
from ..settings import Settings, secret_named
from .database import AsyncDatabase
from .records import PodRecord
from .states import JobState

log = logging.getLogger("lora_bridge.fleet")
_COLUMNS = ("id", "url", "token_ref", "labels", "origin", "discovered_by", "draining", "heartbeat_s", "heartbeat_at",
            "created")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM pods"
_ON_POD = tuple(s.value for s in (JobState.PREPARING, JobState.SUBMITTED, JobState.RUNNING))


def _record(row: Any) -> PodRecord:
    rec = dict(zip(_COLUMNS, row))
    return PodRecord(**{**rec, "labels": json.loads(rec["labels"] or "[]"), "draining": bool(rec["draining"]),
                        "heartbeat_s": float(rec["heartbeat_s"] or 0.0)})


class Fleet:
    """The pods table and this replica's view of it (its pool), kept in step every ``sync_s``."""

    def __init__(self, db: AsyncDatabase, pool: PodPool, settings: Settings, sync_s: float = 1.0,
                 resolve: Callable[[str], Awaitable[list[str]]] = resolve_pods) -> None:
        self.db, self.pool, self.settings, self.sync_s, self.resolve = db, pool, settings, sync_s, resolve
        self._tokens: dict[str, str | None] = {}  # tokens of the pods this replica was started with (--pod)
        self._task: asyncio.Task[None] | None = None
        self._resolved = 0.0

    # -- the table (run in the database's threads) ----------------------------------------------

    def _rows(self) -> list[PodRecord]:
        with self.db.sync.backend.read() as db:
            return [_record(row) for row in db.execute(f"{_SELECT} ORDER BY created, id").fetchall()]

    def _upsert(self, pod: PodAnnouncement, origin: str, discovered_by: str | None) -> PodRecord:
        """Add the pod, or take it back as it announces itself now (a pod that restarts no longer drains)."""
        now, url = time.time(), pod.url.rstrip("/")
        values = (pod_id(url), url, pod.token_ref, json.dumps(sorted(set(pod.labels))), origin, discovered_by, 0,
                  pod.heartbeat_s, now if pod.heartbeat_s else None, now)
        with self.db.sync.tx() as db:
            db.execute(f"INSERT INTO pods ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
                       "ON CONFLICT (id) DO UPDATE SET token_ref = excluded.token_ref, labels = excluded.labels, "
                       "origin = excluded.origin, discovered_by = excluded.discovered_by, draining = 0, "
                       "heartbeat_s = excluded.heartbeat_s, heartbeat_at = excluded.heartbeat_at", values)
            return _record(db.execute(f"{_SELECT} WHERE id = ?", (values[0],)).fetchone())

    def _update(self, pod_id: str, sql: str, args: tuple[Any, ...] = ()) -> PodRecord:
        with self.db.sync.tx() as db:
            if not db.execute(f"UPDATE pods SET {sql} WHERE id = ?", (*args, pod_id)).rowcount:
                raise NotFound(f"no pod {pod_id!r} (GET /v1/pods lists them)")
            return _record(db.execute(f"{_SELECT} WHERE id = ?", (pod_id,)).fetchone())

    def _remove(self, pod_id: str) -> None:
        with self.db.sync.tx() as db:
            db.execute("DELETE FROM pods WHERE id = ?", (pod_id,))

    def _pods_with_jobs(self) -> set[str]:
        """The pods (as job records name them) that some replica's job is being prepared, queued or run on."""
        with self.db.sync.backend.read() as db:
            rows = db.execute(f"SELECT DISTINCT pod FROM jobs WHERE status IN ({', '.join('?' * len(_ON_POD))})",
                              _ON_POD).fetchall()
        return {row[0] for row in rows if row[0]}

    # -- membership ------------------------------------------------------------------------------

    async def records(self) -> list[PodRecord]:
        return await self.db.run(self._rows)

    async def add(self, pod: PodAnnouncement, origin: str = "api", discovered_by: str | None = None) -> PodRecord:
        """A pod joins (or comes back); every replica routes to it from its next sync, this one at once."""
        if pod.token_ref and secret_named(pod.token_ref) is None:
            raise RequestInvalid(f"body.token_ref: the bridge has no environment variable {pod.token_ref} "
                                 f"(nor {pod.token_ref}_FILE)")
        record = await self.db.run(self._upsert, pod, origin, discovered_by)
        log.info("pod %s joined (%s): %s", record.id, origin, self.pool_name(record))
        await self.sync()
        return record

    async def heartbeat(self, pod_id: str) -> PodRecord:
        return await self.db.run(self._update, pod_id, "heartbeat_at = ?", (time.time(),))

    async def drain(self, pod_id: str) -> PodRecord:
        """The pod takes no new jobs; those waiting in its queue move; it is removed once idle."""
        record = await self.db.run(self._update, pod_id, "draining = 1")
        log.info("pod %s drains", pod_id)
        await self.sync()
        return record

    @staticmethod
    def pool_name(record: PodRecord) -> str:
        return PodConfig(record.url).name

    def _member(self, record: PodRecord, now: float) -> Member:
        token = self._tokens[record.url] if record.url in self._tokens and not record.token_ref else \
            secret_named(record.token_ref) if record.token_ref else self.settings.pod_token
        lost = record.lost_for(now)
        return Member(PodConfig(record.url, token, frozenset(record.labels)), record.draining,
                      None if lost is None else f"missed its heartbeats ({lost + 3 * record.heartbeat_s:.0f} s without one)")

    async def sync(self) -> list[PodRecord]:
        """Make this replica's pool the table's pods; the records read."""
        records = await self.records()
        now = time.time()
        self.pool.sync([self._member(r, now) for r in records])
        return records

    # -- the loop --------------------------------------------------------------------------------

    async def start(self, configured: list[PodConfig]) -> None:
        """Add the pods this replica was started with, read the table, then keep the pool in step."""
        for config in configured:
            self._tokens[config.url.rstrip("/")] = config.token
            await self.db.run(self._upsert, PodAnnouncement(url=config.url, labels=sorted(config.labels)), "config", None)
        await self.sync()
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.sync_s)
            try:
                records = await self.sync()
                if self.settings.pods_dns and time.monotonic() - self._resolved >= self.settings.dns_interval_s:
                    self._resolved = time.monotonic()
                    await self._discover(records)
                await self._tidy(records)
            except LoraBridgeError as exc:  # the database is away: the pool keeps its last view
                log.warning("fleet: %s", exc)
            except Exception:  # a bug: the loop must go on, or pods would never join or leave here
                log.exception("fleet: sync failed")

    async def _discover(self, records: list[PodRecord]) -> None:
        """Every address of each DNS target joins; a discovered pod whose address is gone drains."""
        for target in self.settings.pods_dns:
            try:
                urls = set(await self.resolve(target))
            except OSError as exc:  # a DNS blip must not drain the fleet: keep what was found last
                log.warning("fleet: %s does not resolve (%s); keeping its pods", target, exc)
                continue
            known = {r.url: r for r in records if r.discovered_by == target}
            for url in sorted(urls - {r.url for r in records}):  # a pod that joined another way stays as it joined
                await self.add(PodAnnouncement(url=url), "dns", target)
            for url, record in known.items():
                if url not in urls and not record.draining:
                    await self.drain(record.id)

    async def _tidy(self, records: list[PodRecord]) -> None:
        """Remove draining pods no job is on any more (idle, or gone), and announced pods silent for too long."""
        now = time.time()
        draining = [r for r in records if r.draining]
        forgotten = [r for r in records if r.origin == "announced" and (r.lost_for(now) or 0) > self.settings.pod_forget_s]
        if not draining and not forgotten:
            return
        busy = await self.db.run(self._pods_with_jobs)
        if draining:
            await self.pool.refresh()  # their queues, as they are now
        for record in draining:
            status = self.pool.by_id(record.id)
            idle = status is not None and (not status.healthy or not status.queue) and status.checked > 0
            if idle and self.pool_name(record) not in busy:
                await self.db.run(self._remove, record.id)
                log.info("pod %s drained and removed", record.id)
        for record in forgotten:
            if record not in draining:
                await self.db.run(self._remove, record.id)
                log.info("pod %s removed: no heartbeat for over %g s", record.id, self.settings.pod_forget_s)

    def view(self, record: PodRecord) -> dict[str, Any]:
        """A pod as ``GET /v1/pods`` shows it: the table's facts and this replica's last reading of it."""
        status = self.pool.by_id(record.id)
        read = status.summary() if status is not None else {"state": "draining" if record.draining else "lost"}
        return {**read, "id": record.id, "pod": self.pool_name(record), "origin": record.origin,
                "labels": record.labels, "token_ref": record.token_ref, "heartbeat_s": record.heartbeat_s or None,
                "discovered_by": record.discovered_by}
