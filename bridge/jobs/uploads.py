"""Where uploaded LoRA files go: a local folder by default, or an S3 bucket.

An upload is first *staged* under a hidden temporary name (hashed, size-limited and inspected
as it arrives); it is *committed* (renamed to its content address, copied to the bucket) only
once the whole request is valid, and *discarded* otherwise, so a refused request leaves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence

from ..lorafiles.inspect import LoraInfo, inspect_file
from ..lorafiles.sources import Digest, FetchPolicy, copy_whole, parse_source
from ..lorafiles.validate import SizeLimits, check_extension, safe_name


async def copy_part(part: Any, out: BinaryIO, digests: Sequence[Digest], limits: SizeLimits, what: str) -> int:
    """Receive a multipart file part into ``out``, size-limited and hashed (each digest) as it arrives; its size."""
    size = 0
    while chunk := await part.read_chunk(1 << 20):
        size += len(chunk)
        limits.check(size, what)
        for digest in digests:
            digest.update(chunk)
        out.write(chunk)
    return size


@dataclass
class StagedUpload:
    filename: str
    path: Path
    info: LoraInfo


class LoraUploads:
    """``local_dir`` stages and keeps the files; ``bucket`` (optional) also receives them."""

    def __init__(self, local_dir: Path, bucket: str | None = None, prefix: str = "loras/",
                 limits: SizeLimits = SizeLimits(), s3_endpoint: str | None = None) -> None:  # noqa: B008 (frozen)
        self.local_dir, self.bucket, self.prefix, self.limits, self.s3_endpoint = local_dir, bucket, prefix, limits, s3_endpoint
        local_dir.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _staging(self) -> Iterator[Path]:
        """A hidden temporary file in the store's folder, removed if the block raises."""
        tmp = self.local_dir / f".{uuid.uuid4().hex}.upload"
        try:
            yield tmp
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @staticmethod
    def _staged(filename: str, tmp: Path, sha256: str) -> StagedUpload:
        """The staged file inspected (raises if it is not a LoRA), with the SHA-256 of what was written."""
        info = inspect_file(tmp, with_hash=False)
        info.sha256 = sha256
        return StagedUpload(filename, tmp, info)

    async def stage(self, part: Any) -> StagedUpload:
        """Receive a multipart file part under a temporary name; raises (and keeps nothing) if it is not a LoRA."""
        filename = safe_name(part.filename or "upload.safetensors")
        check_extension(filename)  # safetensors only: uploads never take pickle files
        sha = hashlib.sha256()
        with self._staging() as tmp:
            with open(tmp, "wb") as f:
                await copy_part(part, f, [sha], self.limits, f"upload {filename}")
            return self._staged(filename, tmp, sha.hexdigest())

    def stage_bytes(self, data: bytes, filename: str) -> StagedUpload:
        """Stage a file the bridge holds already (a LoRA trained on a pod); raises if it is not a LoRA."""
        self.limits.check(len(data), f"LoRA {filename}")
        with self._staging() as tmp:
            tmp.write_bytes(data)
            return self._staged(filename, tmp, hashlib.sha256(data).hexdigest())

    def stage_source(self, source: str, policy: FetchPolicy) -> StagedUpload:
        """Download ``source`` (under the pods' fetch policy) into a staged file, hashed as it arrives;
        raises (and keeps nothing) if it is not a LoRA. For sources whose URL carries credentials: the
        URL is used for this one read and never stored."""
        src = parse_source(source)
        filename = safe_name(src.filename or "lora.safetensors")
        check_extension(filename)
        sha = hashlib.sha256()
        with self._staging() as tmp:
            with open(tmp, "wb") as f:
                copy_whole(src, policy, f, [sha], self.limits, f"LoRA {src.display}")
            return self._staged(filename, tmp, sha.hexdigest())

    def discard(self, staged: StagedUpload) -> None:
        staged.path.unlink(missing_ok=True)

    async def commit(self, staged: StagedUpload) -> str:
        """Keep a staged file under its content address (and in the bucket); returns its source."""
        final = self.local_dir / f"{staged.info.sha256}.safetensors"
        os.replace(staged.path, final)
        if not self.bucket:
            return str(final)
        key = f"{self.prefix}{staged.info.sha256}.safetensors"

        def upload() -> None:
            import boto3

            boto3.client("s3", endpoint_url=self.s3_endpoint).upload_file(str(final), self.bucket, key)

        await asyncio.get_running_loop().run_in_executor(None, upload)
        return f"s3://{self.bucket}/{key}"
