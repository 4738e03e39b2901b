"""The bridge's database (SQLite or PostgreSQL): the LoRA registry, and jobs with their events.

Everything a restarted bridge (or another replica) needs lives here: LoRA records, each job's request, state,
pod and prompt id, applied LoRAs, warnings, outputs, and every event in order (the SSE
``id`` is the event's sequence number, so ``Last-Event-ID`` resumes without gaps).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Sequence, TypeVar

from ..errors import NotFound, QueueFull
from .db_backends import Backend, Tx, open_backend
from .migrations import migrate
from .records import LORA_FIELDS, JobEvent, JobRecord, LoraRecord
from .states import TERMINAL, WAITING, JobState, check_transition

_LORA_COLUMNS = ("id", *LORA_FIELDS, "created", "updated", "last_used")
_JSON_LORA_FIELDS = {"metadata": dict, "tags": list}
_SELECT_LORAS = f"SELECT {', '.join(_LORA_COLUMNS)} FROM loras"
_JOB_COLUMNS = ("id", "status", "request", "pod", "prompt_id", "result", "created", "updated", "owner", "lease_until")
_TERMINAL = tuple(s.value for s in TERMINAL)
_UNFINISHED = f"status NOT IN ({', '.join('?' * len(_TERMINAL))})"
_WAITING = tuple(s.value for s in WAITING)
# what a write merges into a job's ``result``: fields, or fields made from the record's (in the same transaction)
ResultUpdate = dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]


class Database:
    """The registry and the jobs, on SQLite or PostgreSQL (``url``), migrated to this version's schema on open.

    ``replica`` names this bridge process: the jobs it starts or claims are leased to it for
    ``lease_s`` seconds, renewed by its heartbeat (``renew``); another replica claims a job whose
    lease ran out (``claim``). Two running replicas must not share a name.
    """

    def __init__(self, url: str, replica: str = "local", lease_s: float = 15.0) -> None:
        self.backend: Backend = open_backend(url)
        self.replica, self.lease_s = replica, lease_s
        migrate(self.backend)

    def tx(self) -> contextlib.AbstractContextManager[Tx]:
        return self.backend.tx()

    def ping(self) -> None:
        """Raise ``DatabaseUnavailable`` unless the database answers."""
        with self.backend.read() as db:
            db.execute("SELECT 1").fetchone()

    # -- LoRAs ----------------------------------------------------------------------------

    @staticmethod
    def _lora(row: Any) -> LoraRecord:
        rec = dict(zip(_LORA_COLUMNS, row))
        for name, empty in _JSON_LORA_FIELDS.items():
            rec[name] = json.loads(rec[name]) if rec[name] else empty()
        return LoraRecord(**rec)

    def add_lora(self, fields: dict[str, Any]) -> LoraRecord:
        lora_id = uuid.uuid4().hex[:16]
        now = time.time()
        values = {k: fields.get(k) for k in LORA_FIELDS}
        for name, empty in _JSON_LORA_FIELDS.items():
            values[name] = _dumps(values[name] or empty())
        values["status"] = values["status"] or "pending"
        values["version"] = values["version"] or 1
        with self.tx() as db:
            db.execute(f"INSERT INTO loras ({', '.join(_LORA_COLUMNS)}) VALUES ({', '.join('?' * len(_LORA_COLUMNS))})",
                       (lora_id, *values.values(), now, now, None))
        return self.get_lora(lora_id)

    def get_lora(self, lora_id: str) -> LoraRecord:
        with self.backend.read() as db:
            row = db.execute(f"{_SELECT_LORAS} WHERE id = ?", (lora_id,)).fetchone()
        if row is None:
            raise NotFound(f"no LoRA with id {lora_id!r}")
        return self._lora(row)

    def update_lora(self, lora_id: str, fields: dict[str, Any]) -> LoraRecord:
        self.get_lora(lora_id)
        changes = {k: (_dumps(v) if k in _JSON_LORA_FIELDS else v) for k, v in fields.items() if k in LORA_FIELDS}
        if changes:
            with self.tx() as db:
                db.execute(f"UPDATE loras SET {', '.join(f'{k} = ?' for k in changes)}, updated = ? WHERE id = ?",
                           (*changes.values(), time.time(), lora_id))
        return self.get_lora(lora_id)

    def delete_lora(self, lora_id: str) -> None:
        """Remove the entry and what was made of it (its strength sweep)."""
        with self.tx() as db:
            if db.execute("DELETE FROM loras WHERE id = ?", (lora_id,)).rowcount == 0:
                raise NotFound(f"no LoRA with id {lora_id!r}")
            db.execute("DELETE FROM lora_previews WHERE lora_id = ?", (lora_id,))

    def list_loras(self, tag: str | None = None, **filters: Any) -> list[LoraRecord]:
        """Newest first; ``filters`` are fields that must equal (None: any), ``tag`` one the entry carries."""
        where = [(k, v) for k, v in filters.items() if v is not None and k in LORA_FIELDS and k not in _JSON_LORA_FIELDS]
        sql = _SELECT_LORAS + (" WHERE " + " AND ".join(f"{k} = ?" for k, _ in where) if where else "")
        with self.backend.read() as db:
            rows = db.execute(sql + " ORDER BY created DESC", [v for _, v in where]).fetchall()
        return [rec for rec in map(self._lora, rows) if tag is None or tag in rec.tags]

    def best_for_owner(self, owner_kind: str, owner_id: str, family: str | None,
                       variant: str | None = None) -> LoraRecord | None:
        """The owner's LoRA that fits best, whatever its status or family: of ``family`` (when given)
        first, then of ``variant`` (when given), then ready before not, then the newest version."""
        wanted = [(column, value) for column, value in (("family", family), ("variant", variant)) if value]
        order = [f"CASE WHEN {column} = ? THEN 1 ELSE 0 END DESC" for column, _ in wanted]
        order += ["CASE WHEN status = 'ready' THEN 1 ELSE 0 END DESC", "version DESC", "created DESC"]
        args = [owner_kind, owner_id, *(value for _, value in wanted)]
        with self.backend.read() as db:
            row = db.execute(f"{_SELECT_LORAS} WHERE owner_kind = ? AND owner_id = ? ORDER BY {', '.join(order)} LIMIT 1",
                             args).fetchone()
        return self._lora(row) if row else None

    # -- jobs and events --------------------------------------------------------------------

    def add_job(self, request: dict[str, Any], result: dict[str, Any], events: list[tuple[str, dict[str, Any]]],
                uses: Sequence[str] = (), waiting_below: int | None = None) -> str:
        """Store a new ``queued`` job with its first events, leased to this replica, and mark the registry LoRAs
        it ``uses`` as used now, in one transaction; its id. With ``waiting_below``, nothing is stored
        (``QueueFull``) while that many jobs wait for a pod already."""
        job_id = uuid.uuid4().hex
        now = time.time()
        with self.tx() as db:
            if waiting_below is not None and db.execute(
                    f"SELECT COUNT(*) FROM jobs WHERE status IN ({', '.join('?' * len(_WAITING))})",
                    _WAITING).fetchone()[0] >= waiting_below:
                raise QueueFull(f"{waiting_below} jobs are waiting for a pod already", 5)
            db.execute(f"INSERT INTO jobs ({', '.join(_JOB_COLUMNS)}) VALUES (?, ?, ?, NULL, NULL, ?, ?, ?, ?, ?)",
                       (job_id, JobState.QUEUED.value, _dumps(request), _dumps(result), now, now, self.replica,
                        now + self.lease_s))
            for type, data in events:
                self._insert_event(db, job_id, type, data)
            for lora_id in sorted(set(uses)):
                db.execute("UPDATE loras SET last_used = ? WHERE id = ?", (now, lora_id))
        return job_id

    def _locked_job(self, db: Tx, job_id: str) -> tuple[str, str]:
        """A job's (status, result), its row locked until the transaction ends (PostgreSQL)."""
        row = db.execute(f"SELECT status, result FROM jobs WHERE id = ?{self.backend.lock_suffix}", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no generation with id {job_id!r}")
        return row

    def transition(self, job_id: str, state: JobState, event: str, data: dict[str, Any] | None = None,
                   result: ResultUpdate | None = None, *, then: tuple[str, dict[str, Any]] | None = None,
                   unless_ended: bool = False, **columns: Any) -> bool:
        """Move a job to ``state`` (checked against the state machine), merge ``result`` into its
        record, set ``pod``/``prompt_id``, and append the event (and the event ``then``, when given): all
        in one transaction. With ``unless_ended``, a job that has ended (elsewhere) is left as it is: False."""
        with self.tx() as db:
            status, old = self._locked_job(db, job_id)
            if unless_ended and status in _TERMINAL:
                return False
            check_transition(status, state)
            self._update(db, job_id, old, result, status=state.value, **columns)
            self._insert_event(db, job_id, event, data or {})
            if then is not None:
                self._insert_event(db, job_id, *then)
        return True

    def patch_job(self, job_id: str, result: dict[str, Any] | None = None, event: str | None = None,
                  data: dict[str, Any] | None = None, *, unless_ended: bool = False, **columns: Any) -> bool:
        """Merge fields into a job's record (state unchanged), with an optional event, in one transaction
        (with ``unless_ended``, only while the job has not ended: whether it wrote)."""
        with self.tx() as db:
            status, old = self._locked_job(db, job_id)
            if unless_ended and status in _TERMINAL:
                return False
            self._update(db, job_id, old, result, **columns)
            if event is not None:
                self._insert_event(db, job_id, event, data or {})
        return True

    @staticmethod
    def _update(db: Tx, job_id: str, old_result: str, result: ResultUpdate | None, **columns: Any) -> None:
        unknown = set(columns) - {"status", "pod", "prompt_id"}
        if unknown:
            raise ValueError(f"not a job column: {sorted(unknown)}")
        old = json.loads(old_result or "{}")
        merged = {**old, **((result(old) if callable(result) else result) or {})}
        fields = {**columns, "result": _dumps(merged), "updated": time.time()}
        db.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?", (*fields.values(), job_id))

    @staticmethod
    def _job(row: Any) -> JobRecord:
        job = dict(zip(_JOB_COLUMNS, row))
        job["request"], job["result"] = json.loads(job["request"]), json.loads(job["result"] or "{}")
        return JobRecord(**job)

    def get_job(self, job_id: str) -> JobRecord:
        with self.backend.read() as db:
            row = db.execute(f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no generation with id {job_id!r}")
        return self._job(row)

    def job_status(self, job_id: str) -> str:
        """A job's state alone (what event handlers and streams poll; no record to decode)."""
        with self.backend.read() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no generation with id {job_id!r}")
        return row[0]

    def recent_jobs(self, limit: int, before: str | None = None) -> list[JobRecord]:
        """Up to ``limit`` jobs, newest first; with ``before``, those created before that job."""
        after = "WHERE (created, id) < (SELECT created, id FROM jobs WHERE id = ?) " if before else ""
        with self.backend.read() as db:
            rows = db.execute(f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs {after}ORDER BY created DESC, id DESC "
                              f"LIMIT {int(limit)}", (before,) if before else ()).fetchall()
        return [self._job(row) for row in rows]

    def unfinished_jobs(self) -> list[JobRecord]:
        with self.backend.read() as db:
            rows = db.execute(f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs WHERE {_UNFINISHED} ORDER BY created",
                              _TERMINAL).fetchall()
        return [self._job(row) for row in rows]

    def jobs_ahead(self, job_id: str) -> int:
        """How many jobs waiting for a pod (``queued``) were submitted before this one."""
        with self.backend.read() as db:
            return int(db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND created < "
                                  "(SELECT created FROM jobs WHERE id = ?)", (job_id,)).fetchone()[0])

    def job_counts(self) -> dict[str, int]:
        """How many jobs are in each state (all replicas' jobs)."""
        with self.backend.read() as db:
            return {status: count for status, count in db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status")
                    .fetchall()}

    # -- leases: which replica runs which unfinished job -----------------------------------------

    def claim(self, own: bool = False, limit: int = 100) -> list[JobRecord]:
        """Take over unfinished jobs nobody holds a live lease on (and, with ``own``, this replica's
        own, as at its start): each is claimed by exactly one replica (rows locked, skipped when
        another replica is claiming them). The claimed jobs, oldest first."""
        now = time.time()
        free = "owner IS NULL OR lease_until IS NULL OR lease_until < ?"  # a job of ours whose lease ran out is still ours
        who = f"owner = ? OR {free}" if own else f"owner IS NULL OR (owner <> ? AND ({free}))"
        skip = " SKIP LOCKED" if self.backend.lock_suffix else ""
        with self.tx() as db:
            ids = [row[0] for row in db.execute(
                f"SELECT id FROM jobs WHERE {_UNFINISHED} AND ({who}) "
                f"ORDER BY created LIMIT {int(limit)}{self.backend.lock_suffix}{skip}",
                (*_TERMINAL, self.replica, now)).fetchall()]
            for job_id in ids:
                db.execute("UPDATE jobs SET owner = ?, lease_until = ? WHERE id = ?", (self.replica, now + self.lease_s, job_id))
        return [self.get_job(i) for i in ids]

    def renew(self, running: set[str]) -> set[str]:
        """Extend this replica's leases; of the jobs it is ``running``, those it no longer holds (ended
        by another replica, as a cancel does, or claimed by one after a missed heartbeat)."""
        with self.tx() as db:
            db.execute(f"UPDATE jobs SET lease_until = ? WHERE owner = ? AND {_UNFINISHED}",
                       (time.time() + self.lease_s, self.replica, *_TERMINAL))
            held = {row[0] for row in db.execute(f"SELECT id FROM jobs WHERE owner = ? AND {_UNFINISHED}",
                                                 (self.replica, *_TERMINAL)).fetchall()}
        return running - held

    def release(self) -> None:
        """Let go of this replica's unfinished jobs at once (a graceful stop): any replica may claim them."""
        with self.tx() as db:
            db.execute(f"UPDATE jobs SET lease_until = 0 WHERE owner = ? AND {_UNFINISHED}", (self.replica, *_TERMINAL))

    def _insert_event(self, db: Tx, job_id: str, type: str, data: dict[str, Any]) -> int:
        seq = db.execute("INSERT INTO events (job_id, seq, type, data, at) SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ? "
                         "FROM events WHERE job_id = ? RETURNING seq",
                         (job_id, type, _dumps(data), time.time(), job_id)).fetchone()[0]
        self.backend.notify(db, job_id, self.replica)
        return seq

    def add_event(self, job_id: str, type: str, data: dict[str, Any], unless_ended: bool = False) -> int | None:
        """Append an event: its sequence number (with ``unless_ended``, None for a job that has ended)."""
        with self.tx() as db:
            status, _ = self._locked_job(db, job_id)  # one writer of a job's events at a time, across replicas
            if unless_ended and status in _TERMINAL:
                return None
            return self._insert_event(db, job_id, type, data)

    def events(self, job_id: str, after: int = 0) -> list[JobEvent]:
        with self.backend.read() as db:
            rows = db.execute("SELECT seq, type, data FROM events WHERE job_id = ? AND seq > ? ORDER BY seq",
                              (job_id, after)).fetchall()
        return [JobEvent(seq, type, json.loads(data)) for seq, type, data in rows]


T = TypeVar("T")


def _threaded(method: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """``Database.method`` as a coroutine that runs it in the database's worker threads."""

    @functools.wraps(method)
    async def call(self: "AsyncDatabase", *args: Any, **kwargs: Any) -> T:
        work = functools.partial(method, self.sync, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._threads, work)

    return call


class AsyncDatabase:
    """``Database`` for the service's event loop: every call runs in a worker thread (as many as the
    back end has connections), so a query never blocks the loop that streams events."""

    def __init__(self, db: Database, threads: int = 4) -> None:
        self.sync, self.replica, self.lease_s, self.backend = db, db.replica, db.lease_s, db.backend
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="lora-bridge-db")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` (blocking database work of another module) in the database's worker threads."""
        return await asyncio.get_running_loop().run_in_executor(self._threads, functools.partial(fn, *args))

    ping = _threaded(Database.ping)
    add_lora = _threaded(Database.add_lora)
    get_lora = _threaded(Database.get_lora)
    update_lora = _threaded(Database.update_lora)
    delete_lora = _threaded(Database.delete_lora)
    list_loras = _threaded(Database.list_loras)
    best_for_owner = _threaded(Database.best_for_owner)
    add_job = _threaded(Database.add_job)
    transition = _threaded(Database.transition)
    patch_job = _threaded(Database.patch_job)
    get_job = _threaded(Database.get_job)
    job_status = _threaded(Database.job_status)
    job_counts = _threaded(Database.job_counts)
    jobs_ahead = _threaded(Database.jobs_ahead)
    recent_jobs = _threaded(Database.recent_jobs)
    unfinished_jobs = _threaded(Database.unfinished_jobs)
    claim = _threaded(Database.claim)
    renew = _threaded(Database.renew)
    release = _threaded(Database.release)
    add_event = _threaded(Database.add_event)
    events = _threaded(Database.events)


def _dumps(value: Any) -> str:
    """JSON as RFC 8259 allows it (no NaN/Infinity: they would come back as non-standard JSON)."""
    return json.dumps(value, default=str, allow_nan=False)
