"""The bridge's database (SQLite): the LoRA registry, and jobs with their events.

Everything a restarted bridge needs lives here: LoRA records, each job's request, state,
pod and prompt id, applied LoRAs, warnings, outputs, and every event in order (the SSE
``id`` is the event's sequence number, so ``Last-Event-ID`` resumes without gaps).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError, NotFound
from .job_states import TERMINAL, JobState, check_transition

LORA_STATUSES = ("pending", "training", "validating", "ready", "failed")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS loras (id TEXT PRIMARY KEY, owner_kind TEXT, owner_id TEXT, name TEXT, version INTEGER,
    status TEXT, family TEXT, trigger_word TEXT, fallback_style TEXT, source TEXT, sha256 TEXT, size INTEGER,
    rank INTEGER, metadata TEXT, created REAL, updated REAL);
CREATE INDEX IF NOT EXISTS loras_owner ON loras (owner_kind, owner_id, family, status);
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, status TEXT, request TEXT, pod TEXT, prompt_id TEXT,
    result TEXT, created REAL, updated REAL);
CREATE TABLE IF NOT EXISTS events (job_id TEXT, seq INTEGER, type TEXT, data TEXT, at REAL, PRIMARY KEY (job_id, seq));
"""
# registry columns added since the first schema: (name, SQL type), appended to older databases on open
# (a Wan 2.2 expert pair keeps its high-noise file in ``source``, its low-noise file in ``low_noise_source``)
_ADDED_LORA_COLUMNS = (("variant", "TEXT"), ("low_noise_source", "TEXT"), ("low_noise_sha256", "TEXT"))
LORA_FIELDS = ("owner_kind", "owner_id", "name", "version", "status", "family", "trigger_word", "fallback_style",
               "source", "sha256", "size", "rank", "metadata", *(name for name, _ in _ADDED_LORA_COLUMNS))
_LORA_COLUMNS = ("id", *LORA_FIELDS, "created", "updated")
_SELECT_LORAS = f"SELECT {', '.join(_LORA_COLUMNS)} FROM loras"


def sqlite_path(url: str) -> str:
    """``sqlite:///path`` (or a plain path) -> path; other database URLs are not supported yet."""
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///"):]
    if "://" in url:
        raise ConfigError(f"database URL {url.split('://')[0]}:// is not supported; use sqlite:///path")
    return url


class Database:
    def __init__(self, url: str) -> None:
        self.path = sqlite_path(url)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(_SCHEMA)
        self._add_columns()

    def _add_columns(self) -> None:
        """Bring a database made by an earlier version up to this schema, keeping its rows."""
        with self.tx() as db:
            present = {row[1] for row in db.execute("PRAGMA table_info(loras)")}
            for name, sql_type in _ADDED_LORA_COLUMNS:
                if name not in present:
                    db.execute(f"ALTER TABLE loras ADD COLUMN {name} {sql_type}")

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    # -- LoRAs ----------------------------------------------------------------------------

    @staticmethod
    def _lora(row: sqlite3.Row | tuple) -> dict[str, Any]:
        rec = dict(zip(_LORA_COLUMNS, row))
        rec["metadata"] = json.loads(rec["metadata"] or "{}")
        return rec

    def add_lora(self, fields: dict[str, Any]) -> dict[str, Any]:
        lora_id = uuid.uuid4().hex[:16]
        now = time.time()
        values = {k: fields.get(k) for k in LORA_FIELDS}
        values["metadata"] = _dumps(values["metadata"] or {})
        values["status"] = values["status"] or "pending"
        values["version"] = values["version"] or 1
        with self.tx() as db:
            db.execute(f"INSERT INTO loras ({', '.join(_LORA_COLUMNS)}) VALUES ({', '.join('?' * len(_LORA_COLUMNS))})",
                       (lora_id, *values.values(), now, now))
        return self.get_lora(lora_id)

    def get_lora(self, lora_id: str) -> dict[str, Any]:
        with self._lock:
            row = self._conn.execute(f"{_SELECT_LORAS} WHERE id = ?", (lora_id,)).fetchone()
        if row is None:
            raise NotFound(f"no LoRA with id {lora_id!r}")
        return self._lora(row)

    def update_lora(self, lora_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        self.get_lora(lora_id)
        changes = {k: (_dumps(v) if k == "metadata" else v) for k, v in fields.items() if k in LORA_FIELDS}
        if changes:
            with self.tx() as db:
                db.execute(f"UPDATE loras SET {', '.join(f'{k} = ?' for k in changes)}, updated = ? WHERE id = ?",
                           (*changes.values(), time.time(), lora_id))
        return self.get_lora(lora_id)

    def delete_lora(self, lora_id: str) -> None:
        with self.tx() as db:
            if db.execute("DELETE FROM loras WHERE id = ?", (lora_id,)).rowcount == 0:
                raise NotFound(f"no LoRA with id {lora_id!r}")

    def list_loras(self, **filters: Any) -> list[dict[str, Any]]:
        where = [(k, v) for k, v in filters.items() if v is not None and k in LORA_FIELDS]
        sql = _SELECT_LORAS + (" WHERE " + " AND ".join(f"{k} = ?" for k, _ in where) if where else "")
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY created DESC", [v for _, v in where]).fetchall()
        return [self._lora(r) for r in rows]

    def best_for_owner(self, owner_kind: str, owner_id: str, family: str | None,
                       variant: str | None = None) -> dict[str, Any] | None:
        """The owner's LoRA that fits best, whatever its status or family: of ``family`` (when given)
        first, then of ``variant`` (when given), then ready before not, then the newest version."""
        wanted = [(column, value) for column, value in (("family", family), ("variant", variant)) if value]
        order = [f"COALESCE({column} = ?, 0) DESC" for column, _ in wanted]
        order += ["(status = 'ready') DESC", "version DESC", "created DESC"]
        args = [owner_kind, owner_id, *(value for _, value in wanted)]
        with self._lock:
            rows = self._conn.execute(f"{_SELECT_LORAS} WHERE owner_kind = ? AND owner_id = ? ORDER BY {', '.join(order)}",
                                      args).fetchall()
        return self._lora(rows[0]) if rows else None

    # -- jobs and events --------------------------------------------------------------------

    def add_job(self, request: dict[str, Any], result: dict[str, Any], events: list[tuple[str, dict[str, Any]]]) -> str:
        """Store a new ``queued`` job with its first events, in one transaction."""
        job_id = uuid.uuid4().hex
        now = time.time()
        with self.tx() as db:
            db.execute("INSERT INTO jobs VALUES (?, ?, ?, NULL, NULL, ?, ?, ?)",
                       (job_id, JobState.QUEUED.value, _dumps(request), _dumps(result), now, now))
            for type, data in events:
                self._insert_event(db, job_id, type, data)
        return job_id

    def transition(self, job_id: str, state: JobState, event: str, data: dict[str, Any] | None = None,
                   result: dict[str, Any] | None = None, **columns: Any) -> None:
        """Move a job to ``state`` (checked against the state machine), merge ``result`` into its
        record, set ``pod``/``prompt_id``, and append the event: all in one transaction."""
        with self.tx() as db:
            row = db.execute("SELECT status, result FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"no generation with id {job_id!r}")
            check_transition(row[0], state)
            self._update(db, job_id, row[1], result, status=state.value, **columns)
            self._insert_event(db, job_id, event, data or {})

    def patch_job(self, job_id: str, result: dict[str, Any] | None = None, event: str | None = None,
                  data: dict[str, Any] | None = None, **columns: Any) -> None:
        """Merge fields into a job's record (state unchanged), with an optional event, in one transaction."""
        with self.tx() as db:
            row = db.execute("SELECT status, result FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"no generation with id {job_id!r}")
            self._update(db, job_id, row[1], result, **columns)
            if event is not None:
                self._insert_event(db, job_id, event, data or {})

    @staticmethod
    def _update(db: sqlite3.Connection, job_id: str, old_result: str, result: dict[str, Any] | None, **columns: Any) -> None:
        unknown = set(columns) - {"status", "pod", "prompt_id"}
        if unknown:
            raise ValueError(f"not a job column: {sorted(unknown)}")
        merged = {**json.loads(old_result or "{}"), **(result or {})}
        fields = {**columns, "result": _dumps(merged), "updated": time.time()}
        db.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?", (*fields.values(), job_id))

    def get_job(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            row = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no generation with id {job_id!r}")
        keys = ("id", "status", "request", "pod", "prompt_id", "result", "created", "updated")
        job = dict(zip(keys, row))
        job["request"], job["result"] = json.loads(job["request"]), json.loads(job["result"] or "{}")
        return job

    def job_status(self, job_id: str) -> str:
        """A job's state alone (what event handlers and streams poll; no record to decode)."""
        with self._lock:
            row = self._conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no generation with id {job_id!r}")
        return row[0]

    def unfinished_jobs(self) -> list[dict[str, Any]]:
        terminal = [s.value for s in TERMINAL]
        with self._lock:
            ids = [r[0] for r in self._conn.execute(
                f"SELECT id FROM jobs WHERE status NOT IN ({', '.join('?' * len(terminal))}) ORDER BY created", terminal)]
        return [self.get_job(i) for i in ids]

    @staticmethod
    def _insert_event(db: sqlite3.Connection, job_id: str, type: str, data: dict[str, Any]) -> int:
        seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job_id = ?", (job_id,)).fetchone()[0]
        db.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)", (job_id, seq, type, _dumps(data), time.time()))
        return seq

    def add_event(self, job_id: str, type: str, data: dict[str, Any]) -> int:
        with self.tx() as db:
            return self._insert_event(db, job_id, type, data)

    def events(self, job_id: str, after: int = 0) -> list[tuple[int, str, dict[str, Any]]]:
        with self._lock:
            rows = self._conn.execute("SELECT seq, type, data FROM events WHERE job_id = ? AND seq > ? ORDER BY seq",
                                      (job_id, after)).fetchall()
        return [(seq, type, json.loads(data)) for seq, type, data in rows]


def _dumps(value: Any) -> str:
    """JSON as RFC 8259 allows it (no NaN/Infinity: they would come back as non-standard JSON)."""
    return json.dumps(value, default=str, allow_nan=False)
