"""Where a job's events are written once and read by everything that follows it.

Runners write through the hub (``record``, ``patch``, ``transition``: the database's event log,
one transaction each); every reader follows that log by sequence number: the SSE and WebSocket
streams of the front doors (``follow``), a request that waits for the end (``wait_ended``),
and the completion webhook (``notify``). A write wakes this replica's readers at once; other
replicas' writes wake them through PostgreSQL's notifications (``replicas.py``), or a poll
every second where none come.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any, AsyncIterator, NamedTuple

from ..lorafiles.sources import FetchPolicy
from . import webhooks
from .database import AsyncDatabase, ResultUpdate
from .records import JobEvent, JobRecord
from .states import JobState, is_terminal

HEARTBEAT = None  # what ``follow`` yields when a heartbeat is due
PREVIEW_EVERY_S = 0.5  # previews kept at most twice a second per job


class Preview(NamedTuple):
    """A running job's latest preview image (kept in memory by the replica running it, never in the log)."""

    number: int
    format: str
    image: bytes
    at: float  # when it was kept (monotonic): the throttle


class EventHub:
    """The job event log of one replica's runners and readers."""

    def __init__(self, db: AsyncDatabase, policy: FetchPolicy, webhook_secret: str | None) -> None:
        self.db, self.policy, self.webhook_secret = db, policy, webhook_secret
        # job -> the event its readers wait on (held by them alone: gone with the last reader)
        self._changed: weakref.WeakValueDictionary[str, asyncio.Event] = weakref.WeakValueDictionary()
        self._moved: weakref.WeakValueDictionary[str, asyncio.Event] = weakref.WeakValueDictionary()  # state changes only
        self.previews: dict[str, Preview] = {}  # job -> its latest preview (this replica's running jobs)
        self._states: dict[str, str] = {}  # job -> its state as this replica's runner last read or moved it
        self.closed = False  # the replica is stopping: readers end
        self.notified = True  # other replicas' writes wake readers here (PostgreSQL's listener is up; set by ``Replica``)

    # -- writing ------------------------------------------------------------------------------------

    # ``unless_ended``: write nothing to a job that has ended (a cancel sent to another replica ends it
    # there while its runner here still hears from the pod).

    async def record(self, job_id: str, type: str, data: dict[str, Any], unless_ended: bool = False) -> None:
        await self.db.add_event(job_id, type, data, unless_ended)
        self.signal(job_id, moved=False)

    async def patch(self, job_id: str, result: dict[str, Any] | None = None, event: str | None = None,
                    data: dict[str, Any] | None = None, *, unless_ended: bool = False, **columns: Any) -> None:
        """Merge into the job's record (state unchanged), with an optional event."""
        await self.db.patch_job(job_id, result, event, data, unless_ended=unless_ended, **columns)
        self.signal(job_id, moved=False)

    async def transition(self, job_id: str, state: JobState, event: str, data: dict[str, Any] | None = None,
                         result: ResultUpdate | None = None, *, then: tuple[str, dict[str, Any]] | None = None,
                         unless_ended: bool = False, **columns: Any) -> None:
        """Move the job to ``state`` (checked against the state machine) with its event (and ``then``'s)."""
        try:
            moved = await self.db.transition(job_id, state, event, data, result, then=then, unless_ended=unless_ended,
                                             **columns)
        except BaseException:
            self.forget(job_id)  # whatever it is now, it is read again
            raise
        if moved and not is_terminal(state):
            self._states[job_id] = state.value
        else:
            self.forget(job_id)
        self.signal(job_id)

    async def state(self, job_id: str) -> str:
        """The job's state as this replica's runner last moved it (read once otherwise): another replica
        can only end it meanwhile, which the ``unless_ended`` writes find in their own transaction."""
        known = self._states.get(job_id)
        if known is None:
            known = self._states[job_id] = await self.db.job_status(job_id)
        return known

    def track(self, job_id: str, state: JobState) -> None:
        """A job this replica's runner starts from ``state`` (as stored): ``state`` need not read it."""
        self._states[job_id] = state.value

    def forget(self, job_id: str) -> None:
        """Its runner is done (or its state unknown): the next ``state`` reads it."""
        self._states.pop(job_id, None)

    def preview(self, job_id: str, format: str, image: bytes) -> None:
        """Keep a running job's latest preview (throttled) and wake its readers; ``end_previews`` drops it."""
        last = self.previews.get(job_id)
        now = time.monotonic()
        if last is not None and now - last.at < PREVIEW_EVERY_S:
            return
        self.previews[job_id] = Preview((last.number + 1) if last else 1, format, image, now)
        self.signal(job_id, moved=False)

    def end_previews(self, job_id: str) -> None:
        self.previews.pop(job_id, None)

    # -- waking readers -----------------------------------------------------------------------------

    def signal(self, job_id: str, moved: bool = True) -> None:
        """Wake whatever waits on the job here (its streams, a ``?wait=true`` request); a change that is
        known not to move its state (``moved=False``: an event, a preview) leaves those that wait for its end."""
        for waiting in (self._changed, self._moved) if moved else (self._changed,):
            event = waiting.pop(job_id, None)
            if event is not None:
                event.set()

    def watch(self, job_id: str, moves_only: bool = False) -> asyncio.Event:
        """An event set at the job's next change (with ``moves_only``, the next that may move its state).
        Take it *before* reading the job: a change made while the read awaits the database then still
        wakes the reader."""
        return (self._moved if moves_only else self._changed).setdefault(job_id, asyncio.Event())

    def close(self) -> None:
        """The replica stops: every reader wakes and ends."""
        self.closed = True
        for event in [*self._changed.values(), *self._moved.values()]:
            event.set()

    @staticmethod
    async def wait_change(change: asyncio.Event, timeout: float) -> bool:
        """Wait until ``change`` (from ``watch``) is set (True) or ``timeout`` passes (False)."""
        try:
            await asyncio.wait_for(change.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # -- reading ------------------------------------------------------------------------------------

    async def wait_ended(self, job_id: str) -> JobRecord:
        """The job once it has ended (or once this replica stops)."""
        while True:  # woken by moves of its state alone (a few a job), not by each event
            change = self.watch(job_id, moves_only=True)
            job = await self.db.get_job(job_id)
            if is_terminal(job.status) or self.closed:
                return job
            await self.wait_change(change, 1.0)

    async def follow(self, job_id: str, last: int, heartbeat: float,
                     previews: bool = False) -> AsyncIterator[JobEvent | Preview | None]:
        """The job's events after ``last`` until it has ended (or this replica stops), and ``HEARTBEAT``
        after ``heartbeat`` seconds without one; with ``previews``, each new preview this replica holds."""
        loop = asyncio.get_running_loop()
        sent = loop.time()
        shown = 0
        while True:
            change = self.watch(job_id)
            for event in await self.db.events(job_id, last):
                yield event
                last, sent = event.seq, loop.time()
            frame = self.previews.get(job_id) if previews else None
            if frame is not None and frame.number != shown:
                shown = frame.number
                yield frame
            if is_terminal(await self.db.job_status(job_id)) and not await self.db.events(job_id, last) or self.closed:
                return
            poll = heartbeat if self.notified else min(heartbeat, 1.0)
            if not await self.wait_change(change, min(poll, max(sent + heartbeat - loop.time(), 0.0))) \
                    and loop.time() - sent >= heartbeat:
                yield HEARTBEAT
                sent = loop.time()

    async def notify(self, job: JobRecord) -> None:
        """Send the ended job's signed completion webhook, if it asked for one; the outcome is an event."""
        job_id, url = job.id, job.request.get("webhook_url")
        if not url or not is_terminal(job.status):
            return
        if not self.webhook_secret:
            await self.record(job_id, "webhook", {"delivered": False, "reason": "LORA_BRIDGE_WEBHOOK_SECRET is not configured"})
            return
        delivered, outcome = await webhooks.deliver(url, self.webhook_secret, job.view(), self.policy)
        await self.record(job_id, "webhook", {"delivered": delivered, "outcome": outcome})
