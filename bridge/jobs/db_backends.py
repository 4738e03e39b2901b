"""The two database back ends behind ``Database``: SQLite (embedded, one bridge) and PostgreSQL
(any number of bridge replicas), with one SQL dialect between them.

``Database`` writes its SQL once, with ``?`` placeholders and types both accept (``TEXT``,
``BIGINT``, ``DOUBLE PRECISION``); a back end adapts the placeholders, serializes writers
(SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: row locks taken with ``lock_suffix``), tells what a
table's columns are (for migrations) and, on PostgreSQL, publishes and listens for job changes
(``NOTIFY``/``LISTEN``), so that a replica streams the events of a job another one runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

from ..errors import ConfigError, DatabaseUnavailable

log = logging.getLogger("lora_bridge.database")
CHANNEL = "lora_bridge_jobs"  # NOTIFY payload: "<job id> <replica>", a job that recorded something, and who wrote it


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Tx(Protocol):
    """A transaction (or, from ``Backend.read``, an autocommit reader)."""

    def execute(self, sql: str, args: Sequence[Any] = (), /) -> Cursor: ...


class Backend(Protocol):
    dialect: str
    lock_suffix: str  # appended to a SELECT that is followed by writes to the rows it read

    def tx(self) -> contextlib.AbstractContextManager[Tx]: ...

    def read(self) -> contextlib.AbstractContextManager[Tx]: ...

    def columns(self, db: Tx, table: str) -> set[str]: ...

    def tables(self, db: Tx) -> set[str]: ...

    def notify(self, db: Tx, job_id: str, replica: str) -> None: ...

    def close(self) -> None: ...


class SqliteBackend:
    """One connection, one writer at a time (``BEGIN IMMEDIATE``), WAL so readers do not wait."""

    dialect = "sqlite"
    lock_suffix = ""

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # WAL with NORMAL: a commit survives the process (a crash, a kill); only the OS failing can lose the last
        # ones. It spares an fsync per event, which a job writes for every step.
        self._conn.execute("PRAGMA synchronous=NORMAL")

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

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._conn

    def columns(self, db: Tx, table: str) -> set[str]:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})").fetchall()}

    def tables(self, db: Tx) -> set[str]:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()}

    def notify(self, db: Tx, job_id: str, replica: str) -> None:
        """Nothing to do: with SQLite, the process that writes is the one that streams."""

    def close(self) -> None:
        self._conn.close()


class _PgTx:
    """psycopg's connection with ``?`` placeholders (``%`` is not used in this package's SQL)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor:
        return self._conn.execute(sql.replace("?", "%s"), tuple(args))


class PostgresBackend:
    """psycopg 3: a pool of up to ``connections`` connections for queries (autocommit, explicit
    transactions; a connection is checked before use, so one broken by a server restart is
    replaced, not used), and one asyncio connection that ``LISTEN``s."""

    dialect = "postgresql"
    lock_suffix = " FOR UPDATE"

    def __init__(self, url: str, connections: int = 4, timeout: float = 5.0) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool

        self._psycopg, self.url, self._timeout = psycopg, url, timeout
        self._pool = ConnectionPool(url, min_size=1, max_size=connections, open=False, timeout=timeout,
                                    check=ConnectionPool.check_connection, name="lora-bridge",
                                    kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout))})
        try:  # fail now, at start-up, on a wrong URL or an unreachable server
            self._pool.open(wait=True, timeout=timeout)
        except psycopg.OperationalError as exc:
            self._pool.close()
            raise DatabaseUnavailable(f"the database is unreachable: {_first_line(exc)}") from None

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        try:
            with self._pool.connection() as conn:
                yield conn
        except self._psycopg.OperationalError as exc:  # PoolTimeout too: no connection could be had in time
            raise DatabaseUnavailable(f"the database connection failed: {_first_line(exc)}") from None

    @contextlib.contextmanager
    def tx(self) -> Iterator[Tx]:
        with self._connection() as conn, conn.transaction():
            yield _PgTx(conn)

    @contextlib.contextmanager
    def read(self) -> Iterator[Tx]:
        with self._connection() as conn:
            yield _PgTx(conn)

    def columns(self, db: Tx, table: str) -> set[str]:
        rows = db.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                          "AND table_name = ?", (table,)).fetchall()
        return {row[0] for row in rows}

    def tables(self, db: Tx) -> set[str]:
        rows = db.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()").fetchall()
        return {row[0] for row in rows}

    def notify(self, db: Tx, job_id: str, replica: str) -> None:
        """Delivered to every listening replica when the transaction commits (and only then)."""
        db.execute("SELECT pg_notify(?, ?)", (CHANNEL, f"{job_id} {replica}"))

    async def listen(self, on_job: Callable[[str], None], on_state: Callable[[bool], None], retry_s: float = 1.0,
                     ignore: str | None = None) -> None:
        """Call ``on_job(job_id)`` for every job changed by another replica than ``ignore`` (a replica
        wakes its own streams itself), until cancelled; reconnects (``on_state`` says whether it
        listens, so callers can fall back to polling meanwhile)."""
        while True:
            try:
                async with await self._psycopg.AsyncConnection.connect(self.url, autocommit=True,
                                                                       connect_timeout=int(self._timeout)) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    on_state(True)
                    async for note in conn.notifies():
                        job_id, _, writer = note.payload.partition(" ")
                        if writer != ignore:
                            on_job(job_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # psycopg's errors and OSErrors alike: listen again
                log.warning("database notifications lost (%s); reconnecting", _first_line(exc))
            on_state(False)
            await asyncio.sleep(retry_s)

    def close(self) -> None:
        self._pool.close()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def open_backend(url: str) -> SqliteBackend | PostgresBackend:
    """``sqlite:///path`` (or a plain path) or ``postgresql://user@host:port/db`` (also ``postgres://``)."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresBackend(url)
    if url.startswith("sqlite:///"):
        return SqliteBackend(url[len("sqlite:///"):])
    if "://" in url:
        raise ConfigError(f"database URL {url.split('://')[0]}:// is not supported; use sqlite:///path or postgresql://…")
    return SqliteBackend(url)
