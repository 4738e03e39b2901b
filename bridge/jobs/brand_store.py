"""Brand LoRAs kept as files the way the brand image service lays them out (seed 002):
``{store}/{brand_id}/style.safetensors``, else ``lora.safetensors``, else ``{brand_id}.safetensors``.

The store is ``LORA_BRIDGE_BRAND_STORE`` (or the seed's ``LORA_BASE_DIR``): a local folder or
``s3://bucket/prefix``. A brand that has no registry LoRA yet is looked up here when a request
names it; the file found is inspected and registered (owner ``brand``, status ``ready``), so the
jobs, the ``/lora/…`` routes and the pods all see one registry entry from then on.
"""

from __future__ import annotations

import asyncio
import logging
import re

from ..errors import LoraBridgeError
from ..lorafiles.inspect import inspect_source
from ..lorafiles.sources import FetchPolicy, check_source, parse_source, transport_for
from .database import AsyncDatabase
from .records import LoraRecord

log = logging.getLogger("lora_bridge.brands")
BRAND_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
FILE_NAMES = ("style.safetensors", "lora.safetensors", "{brand}.safetensors")


def is_brand_id(text: str) -> bool:
    """A brand id that can name a folder: letters, digits, ``_ . -``, no leading dot, no ``..``."""
    return bool(BRAND_ID.match(text)) and ".." not in text


class BrandStore:
    """Finds brand LoRA files under ``root`` and registers them on first use."""

    def __init__(self, root: str, db: AsyncDatabase, policy: FetchPolicy) -> None:
        self.root, self.db, self.policy = root.rstrip("/"), db, policy
        self._lock = asyncio.Lock()  # one registration per brand, however many requests name it at once

    def candidates(self, brand_id: str) -> list[str]:
        """The sources where the brand's file may be, in the seed's order (none for an unsafe id)."""
        if not is_brand_id(brand_id):
            return []
        return [f"{self.root}/{brand_id}/{name.format(brand=brand_id)}" for name in FILE_NAMES]

    def _exists(self, source: str) -> bool:
        src = parse_source(source)
        check_source(src, self.policy)
        if src.kind == "local":
            assert src.path is not None
            return src.path.is_file()
        try:
            transport_for(src, self.policy).stat()
        except LoraBridgeError as exc:
            log.debug("brand store: %s: %s", src.display, exc)
            return False
        return True

    def find(self, brand_id: str) -> str | None:
        """The first of the brand's candidate files that exists."""
        return next((source for source in self.candidates(brand_id) if self._exists(source)), None)

    def brands(self) -> list[str]:
        """The brand folders in the store that hold one of the seed's file names."""
        src = parse_source(self.root)
        check_source(src, self.policy)
        if src.kind == "local":
            assert src.path is not None
            files = [(p.parent.name, p.name) for p in src.path.glob("*/*.safetensors")] if src.path.is_dir() else []
        else:
            import boto3

            prefix = f"{src.key.rstrip('/')}/" if src.key else ""
            pages = boto3.client("s3", endpoint_url=self.policy.s3_endpoint).get_paginator("list_objects_v2")
            keys = [obj["Key"][len(prefix):] for page in pages.paginate(Bucket=src.bucket, Prefix=prefix)
                    for obj in page.get("Contents", [])]
            files = [tuple(key.split("/")) for key in keys if key.count("/") == 1]  # type: ignore[misc]
        return sorted({brand for brand, name in files
                       if is_brand_id(brand) and name in {n.format(brand=brand) for n in FILE_NAMES}})

    async def discover(self, brand_id: str) -> LoraRecord | None:
        """The brand's registry LoRA, registering its store file when it has none yet (None: no file)."""
        async with self._lock:
            rec = await self.db.best_for_owner("brand", brand_id, None)
            if rec is not None:
                return rec
            loop = asyncio.get_running_loop()
            source = await loop.run_in_executor(None, self.find, brand_id)
            if source is None:
                return None
            info = await loop.run_in_executor(None, lambda: inspect_source(source, self.policy, with_hash=False))
            log.info("brand %s: registering %s from the brand store", brand_id, parse_source(source).display)
            return await self.db.add_lora({
                "name": f"{brand_id}/{source.rsplit('/', 1)[1]}", "owner_kind": "brand", "owner_id": brand_id,
                "status": "ready", "source": source, "family": info.family, "variant": info.variant, "rank": info.rank,
                "size": info.size, "trigger_word": info.trigger_words[0] if info.trigger_words else None,
                "metadata": {**info.metadata, "registered_from": "brand store"}})
