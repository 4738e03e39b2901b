"""Every input of the bridge's ``/v1`` routes as closed, typed models: the request bodies of the job
core (``jobs/requests.py``, re-exported here), and the queries, paths, headers and forms of HTTP.

Requests are parsed once, at the edge (``routing.py``), into these models; the same models
generate ``/openapi.json``. JSON bodies must be RFC 8259 (no ``NaN``/``Infinity``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from ..errors import RequestInvalid
from ..jobs.requests import (
    Closed,
    Family,
    GenerationCreate,
    Id,
    LoraCreate,
    LoraPatch,
    LoraRef,
    LoraStatus,
    Name,
    Text,
    TrainingCreate,
)
from ..pack_protocol import PresetName, describe_validation_error

__all__ = ["GenerationCreate", "LoraCreate", "LoraPatch", "LoraRef", "TrainingCreate"]
EVENT_ID_MAX = 2**63 - 1


class LoraQuery(Closed):
    """``GET /v1/loras`` filters."""

    character_id: Annotated[str, Field(max_length=128)] | None = None
    brand_id: Annotated[str, Field(max_length=128)] | None = None
    owner_kind: Literal["character", "brand"] | None = None
    owner_id: Annotated[str, Field(max_length=128)] | None = None
    status: LoraStatus | None = None
    family: Family | None = None
    tag: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(None, description="LoRAs carrying this tag")

    def filters(self) -> dict[str, Any]:
        kind = "character" if self.character_id is not None else "brand" if self.brand_id is not None else self.owner_kind
        owner = self.character_id or self.brand_id or self.owner_id
        return {"owner_kind": kind, "owner_id": owner, "status": self.status, "family": self.family, "tag": self.tag}


class WaitQuery(Closed):
    wait: Literal["true", "false", "1", "0"] = Field("false", description="answer when the job has ended")

    @property
    def waits(self) -> bool:
        return self.wait in ("true", "1")


class EventsQuery(Closed):
    last_event_id: Annotated[int, Field(ge=0, le=EVENT_ID_MAX)] = Field(0, description="resume after this event")


class EventsHeaders(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    last_event_id: Annotated[int, Field(ge=0, le=EVENT_ID_MAX)] | None = Field(None, alias="Last-Event-ID")


class JobPath(Closed):
    id: Id


class PresetPath(Closed):
    name: PresetName


class PresetPut(Closed):
    """``PUT /v1/presets/{name}``: the LoRAs of a generation request's ``loras``, saved under the name."""

    loras: Annotated[list[LoraRef], Field(min_length=1, max_length=20)]
    description: Annotated[StrictStr, Field(max_length=500)] | None = None


class OutputPath(Closed):
    id: Id
    n: Annotated[int, Field(ge=0, le=10_000)]


class PodPath(Closed):
    id: Annotated[str, Field(pattern=r"^(pod-[0-9a-f]{12}|[0-9]{1,5})$",
                             description="the pod's id (GET /v1/pods), or its index in that list")]


class UploadFields(Closed):
    """``POST /v1/loras/upload``: the text fields sent beside ``file`` (multipart form)."""

    name: Name | None = None
    character_id: Annotated[StrictStr, Field(min_length=1, max_length=128)] | None = None
    brand_id: Annotated[StrictStr, Field(min_length=1, max_length=128)] | None = None
    status: LoraStatus | None = None
    family: Family | None = None
    trigger_word: Text | None = None
    fallback_style: Text | None = None
    tags: Annotated[StrictStr, Field(max_length=2400)] | None = Field(None, description="separated by commas")

    def lora(self, filename: str) -> LoraCreate:
        """The registration these fields describe (named after the file when ``name`` is left out)."""
        fields = {"name": filename, **self.model_dump(exclude_none=True)}
        if self.tags is not None:
            fields["tags"] = [tag.strip() for tag in self.tags.split(",") if tag.strip()]
        try:
            return LoraCreate.model_validate(fields)
        except ValidationError as exc:
            raise RequestInvalid(describe_validation_error(exc, "form")) from None


class UploadForm(UploadFields):
    """The multipart form, for the OpenAPI document: ``file`` (+ ``low_noise_file``) plus ``UploadFields``."""

    file: bytes = Field(json_schema_extra={"format": "binary"}, description="the LoRA (a Wan 2.2 pair: the high-noise expert's)")
    low_noise_file: bytes | None = Field(None, json_schema_extra={"format": "binary"},
                                         description="a Wan 2.2 pair: the low-noise expert's file")


class TrainingForm(Closed):
    """The multipart form of ``POST /v1/trainings``, for the OpenAPI document."""

    request: StrictStr = Field(description="the TrainingCreate JSON")
    dataset: bytes = Field(json_schema_extra={"format": "binary"}, description="zip: images (PNG, JPEG, WebP) with "
                                                                               "same-name .txt captions")
