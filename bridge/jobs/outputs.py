"""Where a job's outputs are kept: a folder per job on the bridge, and S3 when a bucket is configured
(``s3://bucket/generations/<job>/<file>``, answered with presigned GET URLs)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ..errors import LoraBridgeError
from ..pods.client import OutputFile


class OutputsNotSaved(LoraBridgeError):
    """The pod produced the outputs, but they could not be stored or uploaded."""


class OutputStore:
    """A job's files under ``root/<job>/``; copied to ``bucket`` (on ``s3_endpoint``) when one is set."""

    def __init__(self, root: Path, bucket: str | None = None, s3_endpoint: str | None = None) -> None:
        self.root, self.bucket, self.s3_endpoint = root, bucket, s3_endpoint

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def path(self, job_id: str, name: str) -> Path:
        return self.root / job_id / name

    def location(self, job_id: str, name: str) -> str:
        """Where a saved output's bytes are for every replica: the bucket when one is set, else this replica's folder."""
        return f"s3://{self.bucket}/{self.key(job_id, name)}" if self.bucket else str(self.path(job_id, name))

    @staticmethod
    def key(job_id: str, name: str) -> str:
        return f"generations/{job_id}/{name}"

    async def save(self, job_id: str, file: OutputFile) -> str:
        """Keep one output file (and upload it): where its bytes are for every replica (``location``)."""
        name = Path(file.filename).name
        path = self.path(job_id, name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(file.data)
        except OSError as exc:
            raise OutputsNotSaved(f"an output could not be saved in {path.parent}: {exc}") from None
        if self.bucket:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self._upload, job_id, path)
            except Exception as exc:  # botocore raises many types; all mean the same here
                raise OutputsNotSaved(f"the outputs are on the bridge but could not be uploaded to s3://{self.bucket}: "
                                      f"{type(exc).__name__}: {exc}") from None
        return self.location(job_id, name)

    async def account(self, job_id: str, names: list[str]) -> dict[str, list[str]]:
        """The saved outputs as the job record keeps them: ``{"outputs": names}``, plus presigned ``output_urls``
        with a bucket."""
        saved = {"outputs": names}
        if self.bucket:
            saved["output_urls"] = await asyncio.get_running_loop().run_in_executor(None, self._presign, job_id, names)
        return saved

    def _upload(self, job_id: str, path: Path) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.s3_endpoint).upload_file(str(path), self.bucket, self.key(job_id, path.name))

    def _presign(self, job_id: str, names: list[str], expires: int = 24 * 3600) -> list[str]:
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.s3_endpoint)
        return [s3.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": self.key(job_id, name)},
                                          ExpiresIn=expires) for name in names]
