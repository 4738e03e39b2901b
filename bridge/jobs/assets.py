"""Assets (Comfy API v2): UUID-identified records over content-addressed bytes, kept in the database.

Three kinds, one table: ``lora`` (an uploaded or minted LoRA; its bytes are the registry entry's
source), ``input`` (a file a graph's loader reads from the pods' ``input`` folder; its bytes
under ``root/<blake3 hex>``) and ``output`` (a job's file, kept where the job's outputs are).
Every asset's bytes carry a server-computed blake3 (``blake3:<hex>``); an upload is hashed as it
arrives, staged under a hidden name and kept only once the whole request is valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import mimetypes
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import blake3

from ..errors import NotFound
from ..lorafiles.sources import FetchPolicy, copy_whole, parse_source
from ..lorafiles.validate import SizeLimits
from .database import AsyncDatabase
from .records import AssetRecord
from .uploads import copy_part

_COLUMNS = ("id", "kind", "blake3", "sha256", "size", "content_type", "file_path", "tags", "location", "lora_id",
            "job_id", "node_id", "created")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM assets"
HASH_PREFIX = "blake3:"


def blake3_of(data: bytes) -> str:
    return HASH_PREFIX + blake3.blake3(data).hexdigest()


def blake3_file(path: Path) -> str:
    digest = blake3.blake3()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return HASH_PREFIX + digest.hexdigest()


def content_type_of(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


@dataclass
class StagedBlob:
    """Bytes received under a hidden temporary name, with their hashes."""

    path: Path
    size: int
    blake3: str
    sha256: str


class AssetStore:
    """Asset records (``db``) and the bytes of input assets: under ``root``, and in ``bucket`` (on ``s3_endpoint``)
    when one is set, so that every replica can read them."""

    def __init__(self, db: AsyncDatabase, root: Path, limits: SizeLimits = SizeLimits(),  # noqa: B008 (frozen)
                 bucket: str | None = None, s3_endpoint: str | None = None) -> None:
        self.db, self.root, self.limits, self.bucket, self.s3_endpoint = db, root, limits, bucket, s3_endpoint
        root.mkdir(parents=True, exist_ok=True)

    # -- bytes -------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _staging(self) -> Iterator[Path]:
        tmp = self.root / f".{uuid.uuid4().hex}.upload"
        try:
            yield tmp
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    async def stage(self, part: Any, what: str) -> StagedBlob:
        """Receive a multipart file part, hashed (blake3 and SHA-256) and size-limited as it arrives."""
        b3, sha = blake3.blake3(), hashlib.sha256()
        with self._staging() as tmp:
            with open(tmp, "wb") as f:
                size = await copy_part(part, f, [b3, sha], self.limits, what)
            return StagedBlob(tmp, size, HASH_PREFIX + b3.hexdigest(), sha.hexdigest())

    def stage_source(self, source: str, policy: FetchPolicy) -> StagedBlob:
        """Read ``source`` (s3://, https://, a path under the allowed roots) once, under ``policy``, into a staged,
        hashed file (blocking: run it in a thread)."""
        src = parse_source(source)
        b3, sha = blake3.blake3(), hashlib.sha256()
        with self._staging() as tmp:
            with open(tmp, "wb") as f:
                size = copy_whole(src, policy, f, [b3, sha], self.limits, src.display)
            return StagedBlob(tmp, size, HASH_PREFIX + b3.hexdigest(), sha.hexdigest())

    async def input_from_source(self, source: str, policy: FetchPolicy) -> AssetRecord:
        """An input asset over the bytes of ``source`` (read once; bytes the store has already are not kept twice)."""
        staged = await asyncio.get_running_loop().run_in_executor(None, self.stage_source, source, policy)
        location = await self.keep_input(staged)
        name = parse_source(source).filename or "input"
        return await self.add(kind="input", blake3=staged.blake3, sha256=staged.sha256, size=staged.size,
                              content_type=content_type_of(name), file_path=name, location=location)

    async def keep_input(self, staged: StagedBlob) -> str:
        """Keep the bytes of a new input asset: where an input asset over the same bytes has them already (the
        staged copy discarded), else under their content address (``keep``)."""
        had = next((a for a in await self.with_hash(staged.blake3) if a.kind == "input"), None)
        if had is None:
            return await self.keep(staged)
        self.discard(staged)
        return had.location

    async def keep(self, staged: StagedBlob) -> str:
        """Keep staged bytes under their content address (and in the bucket); their location."""
        final = self.root / staged.blake3.removeprefix(HASH_PREFIX)
        os.replace(staged.path, final)
        if not self.bucket:
            return str(final)
        key = f"assets/{final.name}"

        def upload() -> None:
            import boto3

            boto3.client("s3", endpoint_url=self.s3_endpoint).upload_file(str(final), self.bucket, key)

        await asyncio.get_running_loop().run_in_executor(None, upload)
        return f"s3://{self.bucket}/{key}"

    async def read(self, location: str) -> bytes:
        """The bytes at an asset's location (a local path, or ``s3://bucket/key``)."""
        if not location.startswith("s3://"):
            path = Path(location)
            if not path.is_file():
                raise NotFound(f"the bytes at {location} are not on this replica (configure LORA_BRIDGE_UPLOAD_BUCKET "
                               "so that every replica has them)")
            return await asyncio.get_running_loop().run_in_executor(None, path.read_bytes)
        bucket, _, key = location.removeprefix("s3://").partition("/")

        def get() -> bytes:
            import boto3

            return bytes(boto3.client("s3", endpoint_url=self.s3_endpoint).get_object(Bucket=bucket, Key=key)["Body"].read())

        return await asyncio.get_running_loop().run_in_executor(None, get)

    @staticmethod
    def discard(staged: StagedBlob) -> None:
        staged.path.unlink(missing_ok=True)

    # -- records -----------------------------------------------------------------------------------

    @staticmethod
    def _record(row: Any) -> AssetRecord:
        rec = dict(zip(_COLUMNS, row))
        rec["tags"] = json.loads(rec["tags"] or "[]")
        return AssetRecord(**rec)

    def _add(self, fields: dict[str, Any]) -> AssetRecord:
        rec = {"id": str(uuid.uuid4()), "sha256": None, "file_path": None, "tags": [], "lora_id": None, "job_id": None,
               "node_id": None, "created": time.time(), **fields}
        with self.db.sync.tx() as db:
            db.execute(f"INSERT INTO assets ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                       [json.dumps(rec[c]) if c == "tags" else rec[c] for c in _COLUMNS])
        return AssetRecord(**rec)

    def _get(self, asset_id: str) -> AssetRecord:
        with self.db.sync.backend.read() as db:
            row = db.execute(f"{_SELECT} WHERE id = ?", (asset_id,)).fetchone()
        if row is None:
            raise NotFound(f"no asset {asset_id}")
        return self._record(row)

    def _find(self, blake3: str | None = None, job_id: str | None = None) -> list[AssetRecord]:
        column, value = ("blake3", blake3) if blake3 is not None else ("job_id", job_id)
        with self.db.sync.backend.read() as db:
            rows = db.execute(f"{_SELECT} WHERE {column} = ? ORDER BY created, id", (value,)).fetchall()
        return [self._record(r) for r in rows]

    async def add(self, **fields: Any) -> AssetRecord:
        """Mint an asset (``kind``, ``blake3``, ``size``, ``content_type``, ``location`` and what else it has)."""
        return await self.db.run(self._add, fields)

    async def get(self, asset_id: str) -> AssetRecord:
        return await self.db.run(self._get, asset_id)

    async def with_hash(self, blake3: str) -> list[AssetRecord]:
        """Every asset over the bytes with this blake3, oldest first."""
        return await self.db.run(self._find, blake3)

    async def of_job(self, job_id: str) -> list[AssetRecord]:
        """A job's output assets, in the order they were committed."""
        return await self.db.run(self._find, None, job_id)
