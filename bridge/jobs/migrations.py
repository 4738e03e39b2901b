"""Versioned schema migrations, one list for SQLite and PostgreSQL.

The database records its version in ``schema_version``; ``migrate`` applies each later step in
its own transaction together with the new version number, so a step is applied whole or not
at all. On PostgreSQL the steps run under an advisory lock: replicas that start together
migrate once. Every step is written to run on a database that already has some of what it
adds (``IF NOT EXISTS``, missing columns only): a SQLite database from before versioning (some
tables and columns, no ``schema_version``) goes through every step and keeps its rows.
"""

from __future__ import annotations

from typing import Callable

from .db_backends import Backend, Tx

_MIGRATION_LOCK = 0x6C6F7261  # pg_advisory_xact_lock key ("lora")


def _initial(db: Tx, backend: Backend) -> None:
    """Version 1: the registry, jobs, and their events."""
    db.execute("""CREATE TABLE IF NOT EXISTS loras (id TEXT PRIMARY KEY, owner_kind TEXT, owner_id TEXT, name TEXT,
        version INTEGER, status TEXT, family TEXT, trigger_word TEXT, fallback_style TEXT, source TEXT, sha256 TEXT,
        size BIGINT, rank INTEGER, metadata TEXT, created DOUBLE PRECISION, updated DOUBLE PRECISION)""")
    db.execute("CREATE INDEX IF NOT EXISTS loras_owner ON loras (owner_kind, owner_id, family, status)")
    db.execute("""CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, status TEXT, request TEXT, pod TEXT,
        prompt_id TEXT, result TEXT, created DOUBLE PRECISION, updated DOUBLE PRECISION)""")
    db.execute("""CREATE TABLE IF NOT EXISTS events (job_id TEXT, seq INTEGER, type TEXT, data TEXT,
        at DOUBLE PRECISION, PRIMARY KEY (job_id, seq))""")


def _add_missing(db: Tx, backend: Backend, table: str, columns: tuple[tuple[str, str], ...]) -> None:
    present = backend.columns(db, table)
    for name, sql_type in columns:
        if name not in present:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")


def _model_variants(db: Tx, backend: Backend) -> None:
    """Version 2: a LoRA's model variant, and a Wan 2.2 expert pair's low-noise file."""
    _add_missing(db, backend, "loras", (("variant", "TEXT"), ("low_noise_source", "TEXT"), ("low_noise_sha256", "TEXT")))


def _leases(db: Tx, backend: Backend) -> None:
    """Version 3: which replica runs a job, until when (its lease), and an index to find unfinished jobs."""
    _add_missing(db, backend, "jobs", (("owner", "TEXT"), ("lease_until", "DOUBLE PRECISION")))
    db.execute("CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, lease_until)")


def _assets(db: Tx, backend: Backend) -> None:
    """Version 4 (Comfy API v2): assets (uploaded LoRAs and inputs, job outputs) over content-addressed bytes,
    a LoRA's blake3 beside its SHA-256, and the idempotency keys of submissions."""
    _add_missing(db, backend, "loras", (("blake3", "TEXT"),))
    db.execute("""CREATE TABLE IF NOT EXISTS assets (id TEXT PRIMARY KEY, kind TEXT, blake3 TEXT, sha256 TEXT,
        size BIGINT, content_type TEXT, file_path TEXT, tags TEXT, location TEXT, lora_id TEXT, job_id TEXT,
        node_id TEXT, created DOUBLE PRECISION)""")
    db.execute("CREATE INDEX IF NOT EXISTS assets_blake3 ON assets (blake3)")
    db.execute("CREATE INDEX IF NOT EXISTS assets_job ON assets (job_id)")
    db.execute("""CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, body_hash TEXT, job_id TEXT,
        created DOUBLE PRECISION)""")


def _pods(db: Tx, backend: Backend) -> None:
    """Version 5: the fleet, shared by every replica: each pod, how it joined, whether it drains, its heartbeat."""
    db.execute("""CREATE TABLE IF NOT EXISTS pods (id TEXT PRIMARY KEY, url TEXT, token_ref TEXT, labels TEXT,
        origin TEXT, discovered_by TEXT, draining INTEGER, heartbeat_s DOUBLE PRECISION, heartbeat_at DOUBLE PRECISION,
        created DOUBLE PRECISION)""")


def _presets(db: Tx, backend: Backend) -> None:
    """Version 6: LoRA stack presets (a request's ``loras`` saved under a name)."""
    db.execute("""CREATE TABLE IF NOT EXISTS presets (name TEXT PRIMARY KEY, loras TEXT, description TEXT,
        created DOUBLE PRECISION, updated DOUBLE PRECISION)""")


def _console(db: Tx, backend: Backend) -> None:
    """Version 7: a LoRA's tags and when a job last used it, and the strength sweeps the console shows."""
    _add_missing(db, backend, "loras", (("tags", "TEXT"), ("last_used", "DOUBLE PRECISION")))
    db.execute("""CREATE TABLE IF NOT EXISTS lora_previews (lora_id TEXT PRIMARY KEY, fingerprint TEXT, jobs TEXT,
        created DOUBLE PRECISION)""")


MIGRATIONS: tuple[Callable[[Tx, Backend], None], ...] = (_initial, _model_variants, _leases, _assets, _pods, _presets,
                                                         _console)
LATEST = len(MIGRATIONS)


def _version(db: Tx, backend: Backend) -> int:
    tables = backend.tables(db)
    if "schema_version" in tables:
        return int(db.execute("SELECT version FROM schema_version").fetchone()[0])
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version (version) VALUES (0)")  # new, or from before versioning: every step runs
    return 0


def schema_version(backend: Backend) -> int:
    with backend.tx() as db:
        return _version(db, backend)


def migrate(backend: Backend, target: int = LATEST) -> int:
    """Bring the database up to ``target`` (default: this version's schema), keeping its rows; the version reached."""
    while True:
        with backend.tx() as db:
            if backend.dialect == "postgresql":
                db.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            version = _version(db, backend)
            if version >= target:
                return version
            MIGRATIONS[version](db, backend)
            db.execute("UPDATE schema_version SET version = ?", (version + 1,))
