"""This bridge among its replicas: which unfinished jobs it runs, and the events of those it does not.

- At start, a replica claims its own unfinished jobs (a restart) and every job nobody holds.
- Every ``lease_s / 3`` seconds it renews the leases of its jobs, lets go of any job it no
  longer holds (ended by another replica — a cancel sent there — or claimed after a missed
  heartbeat), and claims jobs whose lease ran out: a replica that died loses its jobs after
  at most ``lease_s``, and another one re-attaches to them by prompt id within ``lease_s / 3``
  more (or runs again what never reached a pod).
- On PostgreSQL it listens for every replica's job changes (``NOTIFY``) and wakes the streams
  that follow those jobs here; they read the events from the shared event log, by sequence
  number, so nothing is lost or repeated. While the listener reconnects, streams poll.
- A graceful stop lets go of every lease at once, so another replica takes over at its next beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Awaitable, Callable

from ..errors import LoraBridgeError
from .database import AsyncDatabase
from .db_backends import PostgresBackend
from .hub import EventHub
from .records import JobRecord

log = logging.getLogger("lora_bridge.replicas")


class Replica:
    """Claims, renews and hands back this replica's jobs; relays other replicas' job changes."""

    def __init__(self, db: AsyncDatabase, hub: EventHub, resume: Callable[[list[JobRecord]], Awaitable[None]],
                 let_go: Callable[[str], Awaitable[None]], running: Callable[[], set[str]]) -> None:
        self.db, self.hub, self._resume, self._let_go, self._running = db, hub, resume, let_go, running
        hub.notified = not isinstance(db.backend, PostgresBackend)  # SQLite: one process, nothing to listen for
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self._resume(await self.db.claim(own=True))
        self._tasks.append(asyncio.ensure_future(self._beat()))
        if isinstance(self.db.backend, PostgresBackend):
            self._tasks.append(asyncio.ensure_future(self.db.backend.listen(self.hub.signal, self._listening,
                                                                            ignore=self.db.replica)))

    def _listening(self, on: bool) -> None:
        self.hub.notified = on

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.db.lease_s / 3)
            try:
                for job_id in await self.db.renew(self._running()):
                    await self._let_go(job_id)
                await self._resume(await self.db.claim())
            except LoraBridgeError as exc:  # the database is away: try again at the next beat
                log.warning("replica %s: lease heartbeat failed: %s", self.db.replica, exc)
            except Exception:  # a bug: the beat must go on, or this replica's jobs would be run twice
                log.exception("replica %s: lease heartbeat failed", self.db.replica)

    async def stop(self) -> None:
        """Stop beating and listening; every job still held is let go (call after the runners detached)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(LoraBridgeError):
            await self.db.release()
