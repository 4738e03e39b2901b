"""Where uploaded LoRA files go: a local folder by default, or an S3 bucket."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from .lorafiles.inspect import inspect_file
from .lorafiles.validate import SizeLimits, check_extension, safe_name


class LoraUploads:
    """``local_dir`` always stages the file (checked there); ``bucket`` (optional) then receives it."""

    def __init__(self, local_dir: Path, bucket: str | None = None, prefix: str = "loras/",
                 limits: SizeLimits = SizeLimits(), s3_endpoint: str | None = None) -> None:
        self.local_dir, self.bucket, self.prefix, self.limits, self.s3_endpoint = local_dir, bucket, prefix, limits, s3_endpoint
        local_dir.mkdir(parents=True, exist_ok=True)

    async def save(self, part: Any) -> dict[str, Any]:
        filename = safe_name(part.filename or "upload.safetensors")
        check_extension(filename)  # safetensors only: uploads never take pickle files
        tmp = self.local_dir / f".{os.getpid()}.{id(part)}.upload"
        sha, size = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as f:
                while chunk := await part.read_chunk(1 << 20):
                    size += len(chunk)
                    self.limits.check(size, f"upload {filename}")
                    sha.update(chunk)
                    f.write(chunk)
            info = inspect_file(tmp, with_hash=False)
            info.sha256 = sha.hexdigest()
            final = self.local_dir / f"{info.sha256}.safetensors"
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        source = str(final)
        if self.bucket:
            import boto3

            key = f"{self.prefix}{info.sha256}.safetensors"
            boto3.client("s3", endpoint_url=self.s3_endpoint).upload_file(str(final), self.bucket, key)
            source = f"s3://{self.bucket}/{key}"
        return {"filename": filename, "source": source, "info": info}
