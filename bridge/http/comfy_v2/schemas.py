"""The inputs of the Comfy API v2 routes as closed, typed models (they also produce the OpenAPI document)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator

from ...jobs.requests import Closed

Hash = Annotated[str, Field(pattern=r"^blake3:[0-9a-f]{64}$", description="blake3:<hex>")]
AssetId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
Label = Annotated[StrictStr, Field(min_length=1, max_length=64)]
FilePath = Annotated[StrictStr, Field(min_length=1, max_length=400)]
_METADATA_KEY = re.compile(r"^metadata\[([^\]]{1,64})\]$")
JOB_STATUSES = ("queued", "running", "succeeded", "canceling", "canceled", "failed", "expired")


class JobCreate(Closed):
    """``POST /api/v2/jobs``: an API-format workflow, verbatim (``core/ASSET`` references where files go)."""

    workflow: dict[str, Any] = Field(description="API-format workflow graph")
    metadata: dict[Label, Annotated[StrictStr, Field(max_length=256)]] | None = Field(
        None, max_length=16, description="string labels kept with the job")
    extra_data: dict[str, Any] | None = Field(None, description="not supported here: partner-node keys would have "
                                                                "to be stored with the job")
    webhook_url: Any = Field(None, description="reserved by the spec; refused")
    inputs: Any = Field(None, description="reserved by the spec; refused")

    @model_validator(mode="after")
    def _reserved(self) -> "JobCreate":
        if self.webhook_url is not None or self.inputs is not None:
            raise ValueError("'webhook_url' and 'inputs' are reserved by the Comfy API v2 and not accepted")
        if self.extra_data:
            raise ValueError("'extra_data' (partner-node API keys) is not accepted: the bridge would have to keep the "
                             "key with the job to run it on any pod")
        return self


class JobPath(Closed):
    id: AssetId


class JobListQuery(BaseModel):
    """``GET /api/v2/jobs``: newest first; ``metadata[<key>]=<value>`` filters by label."""

    model_config = ConfigDict(extra="allow", frozen=True)

    limit: Annotated[int, Field(ge=1, le=100)] = 50
    status: Annotated[str, Field(max_length=200)] | None = Field(None, description="comma-separated job statuses")
    cursor: AssetId | None = None

    @model_validator(mode="after")
    def _filters(self) -> "JobListQuery":
        for key in self.model_extra or {}:
            if not _METADATA_KEY.match(key):
                raise ValueError(f"unknown parameter {key!r}")
        unknown = set(self.statuses) - set(JOB_STATUSES)
        if unknown:
            raise ValueError(f"unknown status(es) {sorted(unknown)}")
        return self

    @property
    def statuses(self) -> list[str]:
        return [s.strip() for s in (self.status or "").split(",") if s.strip()]

    @property
    def labels(self) -> dict[str, str]:
        return {m[1]: str(v) for k, v in (self.model_extra or {}).items() if (m := _METADATA_KEY.match(k))}


class AssetPath(Closed):
    id: AssetId


class HashPath(Closed):
    hash: Hash


class ContentQuery(Closed):
    """A signed content URL's parameters (without them, the bearer key is needed)."""

    expires: Annotated[int, Field(ge=0, le=2**40)] | None = None
    signature: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None


class FromHash(Closed):
    """``POST /api/v2/assets/from-hash``: a new asset over bytes the bridge has (an asset's, or a registry LoRA's)."""

    hash: Hash
    file_path: FilePath | None = None
    tags: Annotated[list[Annotated[StrictStr, Field(max_length=64)]], Field(max_length=32)] | None = None


class AssetForm(Closed):
    """The multipart form of ``POST /api/v2/assets``, for the OpenAPI document."""

    file: bytes = Field(json_schema_extra={"format": "binary"}, description="the bytes: a LoRA (.safetensors) or an "
                                                                           "input file (an image…)")
    content_type: StrictStr
    file_path: FilePath = Field(description="the file's name (a LoRA: *.safetensors, or models/loras/*.safetensors)")
    expected_hash: Hash | None = None
    tags: list[StrictStr] | None = None


class IdempotencyHeaders(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    idempotency_key: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$")] | None = Field(
        None, alias="Idempotency-Key")

