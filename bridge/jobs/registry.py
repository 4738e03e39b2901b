"""The LoRA registry's rules for new and changed entries, shared by every front door that registers
one (the ``/v1`` API, uploads, the seed-compatible routes): sources obey the pods' fetch policy,
headers are read for what a request leaves out, and a source whose URL carries credentials (a
presigned URL) is copied into the bridge's LoRA store once and registered by that copy, so no
signature or token is ever stored."""

from __future__ import annotations

import asyncio
import logging
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from ..errors import GenerationRefused, IntegrityError, NotFound
from ..lorafiles.families import variant_name
from ..lorafiles.inspect import LoraInfo, inspect_source
from ..lorafiles.sources import FetchPolicy, carries_credentials, check_source, parse_source, redact_url
from ..lorafiles.validate import PICKLE_EXTENSIONS, check_extension
from .assets import blake3_file
from .database import AsyncDatabase
from .records import LoraRecord
from .requests import LoraCreate, LoraPatch
from .uploads import LoraUploads, StagedUpload

log = logging.getLogger("lora_bridge.registry")


def check_pair(infos: dict[str, LoraInfo]) -> None:
    """A Wan 2.2 expert pair (expert -> its file's header): both Wan 2.x of one size, else refused naming which."""
    for expert, info in infos.items():
        if info.family != "wan":
            raise GenerationRefused(f"a Wan 2.2 pair's {expert} file is {variant_name(info.family, info.variant)}, not Wan 2.x")
    high, low = infos.values()
    if high.variant != low.variant:
        raise GenerationRefused(f"the pair's files are of two sizes: high-noise {high.variant}, low-noise {low.variant}")


class Registry:
    """Registers, changes and uploads LoRAs under the rules above. ``policy`` is the pods' fetch policy;
    ``registry_policy`` the same with the bridge's own folders allowed (uploads, a local brand store)."""

    def __init__(self, db: AsyncDatabase, policy: FetchPolicy, registry_policy: FetchPolicy, uploads: LoraUploads) -> None:
        self.db, self.policy, self.registry_policy, self.uploads = db, policy, registry_policy, uploads
        self.hashing: set[asyncio.Task[None]] = set()  # entries registered by source, being read for their blake3

    def hash_later(self, rec: LoraRecord) -> None:
        """Read the file of an entry registered by an S3 source (the teams' own store) once, in the background,
        for its blake3 (what Comfy API v2 assets name files by: ``from-hash`` finds the entry by it) and its
        SHA-256 where none was given. A file that cannot be read, or whose SHA-256 is not the one registered,
        leaves the entry as it is (logged). Sources elsewhere (a public URL) are not read by the bridge."""
        task = asyncio.ensure_future(self._fill_hashes(rec))
        self.hashing.add(task)
        task.add_done_callback(self.hashing.discard)

    async def _fill_hashes(self, rec: LoraRecord) -> None:
        assert rec.source is not None
        loop = asyncio.get_running_loop()
        try:
            staged = await loop.run_in_executor(None, self.uploads.stage_source, rec.source, self.registry_policy)
        except Exception as exc:  # the entry stays usable by SHA-256; only v2's hash lookup misses it
            log.warning("LoRA %s: its file could not be read for its blake3: %s", rec.id, exc)
            return
        try:
            if rec.sha256 and rec.sha256.lower() != staged.info.sha256:
                log.warning("LoRA %s: the file's SHA-256 is %s, not the registered %s", rec.id, staged.info.sha256, rec.sha256)
                return
            digest = await loop.run_in_executor(None, blake3_file, staged.path)
            await self.db.update_lora(rec.id, {"blake3": digest, "sha256": staged.info.sha256})
        except NotFound:
            pass  # deleted meanwhile
        finally:
            self.uploads.discard(staged)

    async def check_source_allowed(self, source: str) -> None:
        """The same source policy the pods apply, at registration: a source they would refuse (a host,
        a bucket, a pickle file) is refused now."""
        parsed = parse_source(source)
        name = PurePosixPath(urlsplit(parsed.uri).path if parsed.kind == "http" else parsed.key or str(parsed.path)).name
        if PurePosixPath(name).suffix.lower() in PICKLE_EXTENSIONS:
            check_extension(name, self.registry_policy.allow_pickle)  # pickle files are refused by name, before any byte is read
        await asyncio.get_running_loop().run_in_executor(None, lambda: check_source(parsed, self.registry_policy))

    async def inspect(self, source: str) -> LoraInfo:
        """The header of a registered source (ranged reads), under the pods' fetch policy."""
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: inspect_source(source, self.policy, with_hash=False))

    async def _check_pair_sources(self, fields: dict[str, Any]) -> None:
        """A pair registered by source: the low-noise file allowed too, both headers inspected."""
        await self.check_source_allowed(fields["low_noise_source"])
        check_pair({"high-noise": await self.inspect(fields["source"]),
                    "low-noise": await self.inspect(fields["low_noise_source"])})

    async def _keep_credentials_out(self, fields: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
        """Replace each source whose URL carries credentials by a copy in the bridge's LoRA store (read once
        with that URL, under the pods' fetch policy, hashed as it arrives; a given SHA-256 must match). The
        URL itself goes nowhere: the entry records where the copy came from without its query string
        (``metadata.<field>_origin``, added to ``metadata``: the entry's own when a change leaves it out). The copy
        also outlives the URL's expiry."""
        for key, sha_key in (("source", "sha256"), ("low_noise_source", "low_noise_sha256")):
            url = fields.get(key)
            if not url or not carries_credentials(url):
                continue
            staged = await asyncio.get_running_loop().run_in_executor(None, self.uploads.stage_source, url, self.policy)
            if fields.get(sha_key) and fields[sha_key].lower() != staged.info.sha256:
                self.uploads.discard(staged)
                raise IntegrityError(f"{key}: the file's SHA-256 is {staged.info.sha256}, not the {sha_key} given")
            fields[key], fields[sha_key] = await self.uploads.commit(staged), staged.info.sha256
            base = fields["metadata"] if "metadata" in fields else metadata
            fields["metadata"] = {**(base or {}), f"{key}_origin": redact_url(url)}

    async def register(self, body: LoraCreate) -> LoraRecord:
        """Register a LoRA by source: the source checked against the pods' policy, a pair's files both
        inspected, and what the request leaves out (family, variant, rank, trigger word) read from the header."""
        fields = body.registry_fields()
        source = fields.get("source")
        if source:
            await self.check_source_allowed(source)
        if fields.get("low_noise_source"):
            await self._check_pair_sources(fields)
        if source and not fields.get("family"):  # fill family, rank, trigger word from the header (ranged reads)
            info = await self.inspect(source)
            fields.setdefault("family", info.family)
            fields.setdefault("variant", info.variant)
            fields.setdefault("rank", info.rank)
            fields.setdefault("size", info.size)
            if not fields.get("trigger_word") and info.trigger_words:
                fields["trigger_word"] = info.trigger_words[0]
            fields["metadata"] = {**info.metadata, **(fields.get("metadata") or {})}
        await self._keep_credentials_out(fields)
        rec = await self.db.add_lora(fields)
        if rec.source and rec.source.startswith("s3://") and not fields.get("low_noise_source"):
            self.hash_later(rec)
        return rec

    async def update(self, lora_id: str, body: LoraPatch) -> LoraRecord:
        """Change an entry; a new source obeys the same rules as a registration's."""
        fields = body.registry_fields()
        current = await self.db.get_lora(lora_id)  # unknown: NotFound before anything else
        if fields.get("source"):
            await self.check_source_allowed(fields["source"])
        if fields.get("low_noise_source"):
            await self._check_pair_sources(fields)
        await self._keep_credentials_out(fields, current.metadata)
        return await self.db.update_lora(lora_id, fields)

    async def add_uploaded(self, lora: LoraCreate, file: StagedUpload, low_noise: StagedUpload | None = None,
                           blake3: str | None = None) -> LoraRecord:
        """Keep staged, checked files (a single LoRA, or a Wan 2.2 pair's high- and low-noise files) and
        register them (with the file's ``blake3`` where the caller hashed it); what ``lora`` leaves out is read
        from the file. The staged files are discarded if anything fails."""
        try:
            if low_noise is not None:
                check_pair({"high-noise": file.info, "low-noise": low_noise.info})
            source = await self.uploads.commit(file)
            pair = {"low_noise_source": await self.uploads.commit(low_noise), "low_noise_sha256": low_noise.info.sha256} \
                if low_noise is not None else {}
        except BaseException:
            for staged in (file, low_noise):
                if staged is not None:
                    self.uploads.discard(staged)
            raise
        info = file.info
        return await self.db.add_lora({
            **lora.registry_fields(), "source": source, "sha256": info.sha256, "size": info.size, "rank": info.rank,
            "family": lora.family or info.family, "variant": info.variant if lora.family in (None, info.family) else None,
            "metadata": info.metadata, "blake3": blake3, **pair,
            "trigger_word": lora.trigger_word or (info.trigger_words[0] if info.trigger_words else None)})
