"""A training dataset given as files (URLs, S3 keys, or every key under an S3 prefix): fetched under
the same source policy as LoRAs (hosts, addresses, credentials), size-limited file by file."""

from __future__ import annotations

from ..errors import FetchError
from ..lorafiles.sources import (
    FetchPolicy,
    SourceError,
    check_source,
    parse_source,
    transport_for,
)
from .dataset import DatasetInvalid, DatasetLimits

MAX_CAPTION_BYTES = 64 * 1024


def s3_prefix_sources(prefix: str, policy: FetchPolicy) -> list[str]:
    """Every object under ``s3://bucket/prefix`` (folders' placeholder keys left out)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    source = parse_source(prefix)
    if source.kind != "s3":
        raise SourceError(f"dataset_s3_prefix must be s3://bucket/prefix/, got {source.display!r}")
    client = boto3.client("s3", endpoint_url=policy.s3_endpoint)
    keys: list[str] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=source.bucket, Prefix=source.key):
            keys += [obj["Key"] for obj in page.get("Contents", []) if not obj["Key"].endswith("/")]
    except ClientError as exc:
        raise SourceError(f"{source.display}: {exc.response.get('Error', {}).get('Code', 'error')}") from None
    except BotoCoreError as exc:
        raise FetchError(f"{source.display}: {type(exc).__name__}") from None
    if not keys:
        raise DatasetInvalid(f"there are no files under {source.display}")
    return [f"s3://{source.bucket}/{key}" for key in keys]


def fetch_files(sources: list[str], policy: FetchPolicy, limits: DatasetLimits = DatasetLimits()) -> dict[str, bytes]:  # noqa: B008
    """The files named by ``sources``, by file name (checked against the policy before any request)."""
    parsed = [parse_source(text) for text in sources]
    for source in parsed:
        check_source(source, policy)
    files: dict[str, bytes] = {}
    total = 0
    for source in parsed:
        name = source.filename
        if not name or name in files:
            raise DatasetInvalid(f"{source.display}: {'no file name' if not name else f'a second file named {name!r}'}")
        limit = MAX_CAPTION_BYTES if name.lower().endswith(".txt") else limits.max_image_bytes
        try:
            transport = transport_for(source, policy)
            size = transport.stat().size
            if size > limit:
                raise DatasetInvalid(f"{source.display} is {size} bytes, over the limit of {limit} for this kind of file")
            total += size
            if total > limits.max_bytes:
                raise DatasetInvalid(f"the dataset's files are over {limits.max_bytes} bytes together")
            files[name] = transport.read_range(0, size) if size else b""
        except (ConnectionError, OSError, TimeoutError) as exc:
            raise FetchError(f"dataset file {source.display}: {type(exc).__name__}: {exc}") from None
    return files
