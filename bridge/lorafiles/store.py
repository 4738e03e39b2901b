"""The verified disk cache: a content-addressed store of LoRA files keyed by SHA-256.

``<root>/blobs/<sha256><ext>`` holds the bytes (written by ``fetch.py`` under a hidden temporary
name in the same folder, then renamed), ``<root>/index.sqlite3`` what we know of them (sources,
names, pins, last use, counters), and human names are symlinks in ``link_dir`` (ComfyUI's
``loras`` folder on a pod). A disk budget evicts least-recently-used files, never one that is
pinned or in use (held under a shared ``flock`` by any process). The budget is a bound: a download
reserves its size before it starts (concurrent ones see each other's reservations), hidden partial
files left by failed downloads count against it and expire, and a file larger than the whole
budget is refused at once without evicting anything. Safe across threads and processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import FetchCancelled, LoraBridgeError
from .validate import safe_name

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (sha256 TEXT PRIMARY KEY, size INTEGER, ext TEXT, source TEXT,
    created REAL, last_used REAL, pinned INTEGER DEFAULT 0);
CREATE TABLE IF NOT EXISTS sources (identity TEXT PRIMARY KEY, sha256 TEXT, size INTEGER, validator TEXT);
CREATE TABLE IF NOT EXISTS names (name TEXT PRIMARY KEY, sha256 TEXT);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER);
CREATE TABLE IF NOT EXISTS reservations (key TEXT PRIMARY KEY, bytes INTEGER, pid INTEGER, created REAL);
"""
PARTIAL_TTL = 24 * 3600.0  # a partial download nobody resumed within a day is removed


class CacheFull(LoraBridgeError):
    """The disk budget cannot make room: everything left is pinned or in use."""


@dataclass(frozen=True)
class CacheEntry:
    sha256: str
    size: int
    path: Path
    source: str
    names: list[str]
    pinned: bool
    last_used: float
    in_use: bool


@dataclass(frozen=True)
class CacheCounters:
    """What every cache reports: size, hits, misses, evictions (the disk and the memory cache)."""

    entries: int
    bytes: int
    hits: int
    misses: int
    evictions: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hit_rate": round(self.hit_rate, 4)}


@dataclass(frozen=True)
class CacheStats(CacheCounters):
    budget_bytes: int | None = None
    reserved_bytes: int = 0  # downloads under way
    partial_bytes: int = 0  # hidden partial files (under way, or kept for a resume)


def _identity_key(identity: str) -> str:
    return hashlib.sha256(identity.encode()).hexdigest()


class LoraStore:
    """See module docstring. ``budget_bytes=None`` means no limit."""

    def __init__(self, root: Path | str, link_dir: Path | str | None = None, budget_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.locks = self.root / "locks"
        self.link_dir = Path(link_dir) if link_dir else None
        self.budget_bytes = budget_bytes
        for d in (self.blobs, self.locks, *([self.link_dir] if self.link_dir else [])):
            d.mkdir(parents=True, exist_ok=True)
        # one process at a time: SQLite answers "database is locked" at once, without waiting, to a second
        # process switching a new index to WAL while the first does
        with self._flock("index", fcntl.LOCK_EX):
            db = sqlite3.connect(self.root / "index.sqlite3", timeout=60)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
                columns = {row[1] for row in db.execute("PRAGMA table_info(sources)")}
                for column, kind in (("size", "INTEGER"), ("validator", "TEXT")):  # stores made before revalidation
                    if column not in columns:
                        db.execute(f"ALTER TABLE sources ADD COLUMN {column} {kind}")
            finally:
                db.close()

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.root / "index.sqlite3", timeout=60, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def _count(self, db: sqlite3.Connection, name: str, n: int = 1) -> None:
        db.execute("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?", (name, n, n))

    def blob_path(self, sha256: str, ext: str = ".safetensors") -> Path:
        return self.blobs / f"{sha256}{ext}"

    def temp_path(self, key: str) -> Path:
        """Hidden temporary name in the blobs folder (same file system, so rename is atomic)."""
        return self.blobs / f".{key}.part"

    # -- locking ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _flock(self, name: str, mode: int, cancel: Callable[[], bool] | None = None) -> Iterator[None]:
        with open(self.locks / f"{name}.lock", "a+") as fh:
            while True:
                try:
                    fcntl.flock(fh, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if cancel is not None and cancel():
                        raise FetchCancelled("cancelled while waiting for another download of the same LoRA") from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def single_flight(self, key: str, cancel: Callable[[], bool] | None = None) -> contextlib.AbstractContextManager[None]:
        """Exclusive per-content lock: one download per key across threads and processes."""
        return self._flock(f"dl-{_identity_key(key)[:32]}", fcntl.LOCK_EX, cancel)

    def in_use(self, sha256: str) -> contextlib.AbstractContextManager[None]:
        """Hold a blob in use (shared lock): eviction skips it until the block ends."""
        return self._flock(f"use-{sha256}", fcntl.LOCK_SH)

    def _is_in_use(self, sha256: str) -> bool:
        with open(self.locks / f"use-{sha256}.lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
            return False

    # -- lookups ------------------------------------------------------------------------------

    def lookup(self, sha256: str | None = None, identity: str | None = None, record_miss: bool = True) -> tuple[str, Path] | None:
        """The blob for a hash (or a source identity) if present; counts a hit (or a miss)."""
        with self._db() as db:
            if sha256 is None and identity is not None:
                row = db.execute("SELECT sha256 FROM sources WHERE identity = ?", (_identity_key(identity),)).fetchone()
                sha256 = row[0] if row else None
            row = db.execute("SELECT ext FROM blobs WHERE sha256 = ?", (sha256,)).fetchone() if sha256 else None
            path = self.blob_path(sha256, row[0]) if row and sha256 else None
            if sha256 and path is not None and path.exists():
                db.execute("UPDATE blobs SET last_used = ? WHERE sha256 = ?", (time.time(), sha256))
                self._count(db, "hits")
                return sha256, path
            if row:  # indexed but deleted behind our back
                db.execute("DELETE FROM blobs WHERE sha256 = ?", (sha256,))
            if record_miss:
                self._count(db, "misses")
            return None

    def source_version(self, identity: str) -> tuple[int | None, str | None] | None:
        """The size and validator (ETag, Last-Modified, mtime) the cached copy of a source was fetched
        at; None when the source has no cached copy."""
        with self._db() as db:
            row = db.execute("SELECT size, validator FROM sources WHERE identity = ?", (_identity_key(identity),)).fetchone()
        return (row[0], row[1]) if row else None

    def forget_source(self, identity: str) -> None:
        """The bytes behind a source changed: its cached copy no longer answers for it."""
        with self._db() as db:
            db.execute("DELETE FROM sources WHERE identity = ?", (_identity_key(identity),))

    def resolve_name(self, name: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT sha256 FROM names WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    # -- adding, naming, pinning --------------------------------------------------------------

    def add(self, temp: Path, sha256: str, size: int, ext: str, source: str, identity: str | None,
            reservation: str | None = None, validator: str | None = None) -> Path:
        """Publish a verified temporary file under its content address (atomic rename); the
        download's reservation becomes the blob's own size in the same transaction."""
        final = self.blob_path(sha256, ext)
        os.replace(temp, final)
        _fsync_dir(self.blobs)
        now = time.time()
        with self._db() as db:
            if reservation:
                db.execute("DELETE FROM reservations WHERE key = ?", (reservation,))
            db.execute(
                "INSERT INTO blobs (sha256, size, ext, source, created, last_used) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(sha256) DO UPDATE SET last_used = excluded.last_used",
                (sha256, size, ext, source, now, now),
            )
            if identity:
                db.execute("INSERT OR REPLACE INTO sources VALUES (?, ?, ?, ?)",
                           (_identity_key(identity), sha256, size, validator))
        return final

    def link(self, name: str, sha256: str) -> Path | None:
        """Make ``link_dir/<name>`` point at the blob (atomically replacing an older target)."""
        name = safe_name(name)
        with self._db() as db:
            row = db.execute("SELECT ext FROM blobs WHERE sha256 = ?", (sha256,)).fetchone()
            if not row:
                raise LoraBridgeError(f"no cached file with sha256 {sha256}")
            db.execute("INSERT OR REPLACE INTO names VALUES (?, ?)", (name, sha256))
        if self.link_dir is None:
            return None
        link = self.link_dir / name
        tmp = self.link_dir / f".{name}.{os.getpid()}.link"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.blob_path(sha256, row[0]))
        os.replace(tmp, link)
        return link

    def pin(self, sha256: str, pinned: bool = True) -> None:
        with self._db() as db:
            db.execute("UPDATE blobs SET pinned = ? WHERE sha256 = ?", (int(pinned), sha256))

    # -- eviction -----------------------------------------------------------------------------

    def _remove(self, db: sqlite3.Connection, sha256: str, ext: str) -> None:
        for (name,) in db.execute("SELECT name FROM names WHERE sha256 = ?", (sha256,)).fetchall():
            if self.link_dir is not None:
                (self.link_dir / name).unlink(missing_ok=True)
        db.execute("DELETE FROM names WHERE sha256 = ?", (sha256,))
        db.execute("DELETE FROM sources WHERE sha256 = ?", (sha256,))
        db.execute("DELETE FROM blobs WHERE sha256 = ?", (sha256,))
        self.blob_path(sha256, ext).unlink(missing_ok=True)
        self._count(db, "evictions")

    def evict(self, sha256: str | None = None, include_pinned: bool = False) -> list[str]:
        """Evict one blob, or every unpinned one (``sha256=None``); files in use are kept."""
        evicted = []
        with self._db() as db:
            query = "SELECT sha256, ext, pinned FROM blobs" + (" WHERE sha256 = ?" if sha256 else "")
            for sha, ext, pinned in db.execute(query, (sha256,) if sha256 else ()).fetchall():
                if (pinned and not include_pinned) or self._is_in_use(sha):
                    continue
                self._remove(db, sha, ext)
                evicted.append(sha)
        return evicted

    def _partials(self) -> dict[str, tuple[int, float]]:
        """Hidden partial downloads by key: (bytes on disk, newest modification time)."""
        found: dict[str, tuple[int, float]] = {}
        for path in self.blobs.glob(".*.part*"):
            key = path.name[1:].split(".part", 1)[0]
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            size, mtime = found.get(key, (0, 0.0))
            found[key] = (size + st.st_size, max(mtime, st.st_mtime))
        return found

    def _active_reservations(self, db: sqlite3.Connection) -> dict[str, int]:
        """Reservations of downloads under way (a dead process's reservation is dropped)."""
        active = {}
        for key, size, pid in db.execute("SELECT key, bytes, pid FROM reservations").fetchall():
            if _alive(pid):
                active[key] = size
            else:
                db.execute("DELETE FROM reservations WHERE key = ?", (key,))
        return active

    def _used(self, db: sqlite3.Connection, expire: bool) -> int:
        """Bytes the budget must cover: blobs, reservations, and partial files no download holds
        (expired ones are removed first when ``expire``)."""
        reserved = self._active_reservations(db)
        total = db.execute("SELECT COALESCE(SUM(size), 0) FROM blobs").fetchone()[0] + sum(reserved.values())
        for key, (size, mtime) in self._partials().items():
            if key in reserved:
                continue  # covered by its reservation
            if expire and time.time() - mtime > PARTIAL_TTL:
                self.discard_partial(key)
            else:
                total += size
        return total

    def discard_partial(self, key: str) -> None:
        """Remove a partial download (its segments and state file)."""
        for path in self.blobs.glob(f".{key}.part*"):
            path.unlink(missing_ok=True)

    def reserve(self, key: str, size: int, keep: set[str] | None = None) -> None:
        """Reserve ``size`` bytes for the download ``key`` (evicting least-recently-used files if
        needed), or raise ``CacheFull`` without evicting anything when the room cannot be made."""
        if self.budget_bytes is None:
            return
        if size > self.budget_bytes:
            raise CacheFull(f"a {size}-byte file does not fit the disk budget of {self.budget_bytes} bytes")
        keep = keep or set()
        with self._db() as db:
            db.execute("DELETE FROM reservations WHERE key = ?", (key,))
            used = self._used(db, expire=True)
            partial = self._partials().get(key, (0, 0.0))[0]  # a resumed download already holds these bytes
            needed = used - partial + size - self.budget_bytes
            rows = db.execute("SELECT sha256, ext, size, pinned FROM blobs ORDER BY last_used ASC").fetchall()
            victims: list[tuple[str, str, int]] = []
            for sha, ext, blob_size, pinned in rows:
                if needed - sum(v[2] for v in victims) <= 0:
                    break
                if not (pinned or sha in keep or self._is_in_use(sha)):
                    victims.append((sha, ext, blob_size))
            if needed - sum(v[2] for v in victims) > 0:
                raise CacheFull(f"disk budget of {self.budget_bytes} bytes cannot fit {size} more now: the rest is "
                                f"pinned, in use, or reserved by downloads under way")
            for sha, ext, _ in victims:
                self._remove(db, sha, ext)
            db.execute("INSERT INTO reservations VALUES (?, ?, ?, ?)", (key, size, os.getpid(), time.time()))

    def release(self, key: str) -> None:
        """End a download's reservation (its partial file, if kept, counts on its own from now on)."""
        with self._db() as db:
            db.execute("DELETE FROM reservations WHERE key = ?", (key,))

    def enforce_budget(self, keep: set[str] | None = None) -> list[str]:
        """Evict least-recently-used files (and expired partial downloads) until the cache fits its budget."""
        if self.budget_bytes is None:
            return []
        keep = keep or set()
        evicted = []
        with self._db() as db:
            total = self._used(db, expire=True)
            rows = db.execute("SELECT sha256, ext, size, pinned FROM blobs ORDER BY last_used ASC").fetchall()
            for sha, ext, size, pinned in rows:
                if total <= self.budget_bytes:
                    break
                if pinned or sha in keep or self._is_in_use(sha):
                    continue
                self._remove(db, sha, ext)
                evicted.append(sha)
                total -= size
        return evicted

    # -- reporting ----------------------------------------------------------------------------

    def entries(self) -> list[CacheEntry]:
        with self._db() as db:
            rows = db.execute("SELECT sha256, size, ext, source, pinned, last_used FROM blobs ORDER BY last_used DESC").fetchall()
            names = db.execute("SELECT name, sha256 FROM names ORDER BY name").fetchall()
        by_sha: dict[str, list[str]] = {}
        for name, sha in names:
            by_sha.setdefault(sha, []).append(name)
        return [
            CacheEntry(sha, size, self.blob_path(sha, ext), source, by_sha.get(sha, []), bool(pinned), last_used, self._is_in_use(sha))
            for sha, size, ext, source, pinned, last_used in rows
        ]

    def stats(self) -> CacheStats:
        with self._db() as db:
            n, total = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs").fetchone()
            counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
            reserved = sum(self._active_reservations(db).values())
        partial = sum(size for size, _ in self._partials().values())
        return CacheStats(entries=n, bytes=total, hits=counters.get("hits", 0), misses=counters.get("misses", 0),
                          evictions=counters.get("evictions", 0), budget_bytes=self.budget_bytes,
                          reserved_bytes=reserved, partial_bytes=partial)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
