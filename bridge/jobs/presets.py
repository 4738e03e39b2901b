"""LoRA stack presets in the registry, shared by every replica (the ``presets`` table).

A preset is the ``loras`` of a generation request saved under a name (``PUT /v1/presets/{name}``); a
request that names it (``preset``) applies its LoRAs first, then those of its own ``loras``. The graph
editor's presets live on each pod (``nodes/stack_presets.py``): those hold file names and sources, these
hold registry references.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ..errors import NotFound
from .database import AsyncDatabase
from .records import PresetRecord
from .requests import LoraRef

_COLUMNS = ("name", "loras", "description", "created", "updated")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM presets"


def _record(row: Any) -> PresetRecord:
    rec = dict(zip(_COLUMNS, row))
    return PresetRecord(**{**rec, "loras": json.loads(rec["loras"])})


class PresetStore:
    """Save, read, list and remove presets (in the database's worker threads)."""

    def __init__(self, db: AsyncDatabase) -> None:
        self.db = db

    def _put(self, name: str, loras: str, description: str | None) -> PresetRecord:
        now = time.time()
        with self.db.sync.tx() as db:
            db.execute("INSERT INTO presets (name, loras, description, created, updated) VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT (name) DO UPDATE SET loras = excluded.loras, description = excluded.description, "
                       "updated = excluded.updated", (name, loras, description, now, now))
        return self._get(name)

    def _get(self, name: str) -> PresetRecord:
        with self.db.sync.backend.read() as db:
            row = db.execute(f"{_SELECT} WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no preset named {name!r}")
        return _record(row)

    def _list(self) -> list[PresetRecord]:
        with self.db.sync.backend.read() as db:
            return [_record(row) for row in db.execute(f"{_SELECT} ORDER BY name").fetchall()]

    def _delete(self, name: str) -> None:
        with self.db.sync.tx() as tx:
            if tx.execute("DELETE FROM presets WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"no preset named {name!r}")

    async def put(self, name: str, loras: list[LoraRef], description: str | None = None) -> PresetRecord:
        """Save (or replace) the preset ``name``."""
        text = json.dumps([ref.model_dump(exclude_none=True) for ref in loras])
        return await self.db.run(self._put, name, text, description)

    async def get(self, name: str) -> PresetRecord:
        """The preset ``name``; ``NotFound`` when there is none."""
        return await self.db.run(self._get, name)

    async def all(self) -> list[PresetRecord]:
        return await self.db.run(self._list)

    async def delete(self, name: str) -> None:
        await self.db.run(self._delete, name)

    async def refs(self, name: str) -> list[LoraRef]:
        """The preset's LoRAs as a request's ``loras``."""
        return [LoraRef.model_validate(item) for item in (await self.get(name)).loras]
