"""``Idempotency-Key``s of job submissions (Stripe's rules, as the Comfy API v2 states them), shared by every
replica through the database: the same key with the same body is the same job (replayed, never run
twice); with another body it is refused; while the first request is still being answered, a retry
is told to wait. A key is kept 24 hours; a request refused before its job was stored frees its key.
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import IdempotencyConflict, IdempotencyKeyReuse
from .database import AsyncDatabase

KEY_TTL_S = 24 * 3600


class IdempotencyKeys:
    def __init__(self, db: AsyncDatabase) -> None:
        self.db = db

    def _claim(self, key: str, body_hash: str) -> str | None:
        now = time.time()
        with self.db.sync.tx() as db:
            db.execute("DELETE FROM idempotency WHERE created < ?", (now - KEY_TTL_S,))
            inserted = db.execute("INSERT INTO idempotency (key, body_hash, job_id, created) VALUES (?, ?, NULL, ?) "
                                  "ON CONFLICT (key) DO NOTHING", (key, body_hash, now)).rowcount
            if inserted:
                return None
            row: Any = db.execute("SELECT body_hash, job_id FROM idempotency WHERE key = ?", (key,)).fetchone()
        if row[0] != body_hash:
            raise IdempotencyKeyReuse("this Idempotency-Key was used with another request body; keys are single-use "
                                      "per request (send a new key for a new submission)")
        if row[1] is None:
            raise IdempotencyConflict("a request with this Idempotency-Key is still being answered; retry shortly")
        return str(row[1])

    def _bind(self, key: str, job_id: str) -> None:
        with self.db.sync.tx() as db:
            db.execute("UPDATE idempotency SET job_id = ? WHERE key = ?", (job_id, key))

    def _release(self, key: str) -> None:
        with self.db.sync.tx() as db:
            db.execute("DELETE FROM idempotency WHERE key = ? AND job_id IS NULL", (key,))

    async def claim(self, key: str, body_hash: str) -> str | None:
        """Claim ``key`` for a request whose body hashes to ``body_hash``: None (new: go on, then ``bind`` or
        ``release``), or the id of the job an identical earlier request created (replay it)."""
        return await self.db.run(self._claim, key, body_hash)

    async def bind(self, key: str, job_id: str) -> None:
        await self.db.run(self._bind, key, job_id)

    async def release(self, key: str) -> None:
        await self.db.run(self._release, key)
