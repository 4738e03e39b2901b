"""The records the database layer returns: a registry LoRA, a job, one event of a job.

Typed and immutable; the front doors turn them into JSON with ``view()`` (the job core reads
their fields). ``JobRecord.result`` stays an open mapping: it is the job's growing account
(applied LoRAs, warnings, timings, outputs), written in parts as the job runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..lorafiles.sources import carries_credentials, redact_url

LORA_STATUSES = ("pending", "training", "validating", "ready", "failed")
LORA_FIELDS = ("owner_kind", "owner_id", "name", "version", "status", "family", "trigger_word", "fallback_style",
               "source", "sha256", "size", "rank", "metadata", "variant", "low_noise_source", "low_noise_sha256", "blake3", "tags")
GENERATION = "generation"  # a job's kind when its request names none (trainings: "training")
INTERNAL_RESULT_FIELDS = ("client_id",)  # kept on the record for re-attaching, never shown


@dataclass(frozen=True)
class LoraRecord:
    """One registry entry: who owns it, what it is for, where its bytes are."""

    id: str
    owner_kind: str | None
    owner_id: str | None
    name: str
    version: int
    status: str
    family: str | None
    trigger_word: str | None
    fallback_style: str | None
    source: str | None
    sha256: str | None
    size: int | None
    rank: int | None
    metadata: dict[str, Any]
    variant: str | None
    low_noise_source: str | None
    low_noise_sha256: str | None
    blake3: str | None  # ``blake3:<hex>`` of the file's bytes, once read whole (Comfy API v2 assets name files by it)
    tags: list[str]  # the owner's words to find it by (the console filters on them)
    created: float
    updated: float
    last_used: float | None  # when a job last asked for it

    def view(self) -> dict[str, Any]:
        """Every field, as JSON; source URLs without their query string (credentials: entries stored
        before such sources were copied into the bridge's store may still hold one)."""
        return {**dataclasses.asdict(self), **{key: redact_url(url) for key in ("source", "low_noise_source")
                                               if (url := getattr(self, key)) and carries_credentials(url)}}


@dataclass(frozen=True)
class JobRecord:
    """One job (a generation or a training): its request, state, pod, prompt and account so far."""

    id: str
    status: str
    request: dict[str, Any]
    pod: str | None
    prompt_id: str | None
    result: dict[str, Any]
    created: float
    updated: float
    owner: str | None  # the replica holding its lease
    lease_until: float | None

    @property
    def kind(self) -> str:
        return str(self.request.get("kind", GENERATION))

    def view(self) -> dict[str, Any]:
        """The job as the API shows it: state, pod, prompt, and its account (internal fields left out)."""
        result = {k: v for k, v in self.result.items() if k not in INTERNAL_RESULT_FIELDS}
        return {"id": self.id, "status": self.status, "pod": self.pod, "prompt_id": self.prompt_id,
                "created": self.created, "updated": self.updated, **result}


@dataclass(frozen=True)
class AssetRecord:
    """An asset (Comfy API v2): a record over content-addressed bytes. ``kind`` is ``lora`` (bytes in the
    registry: ``lora_id``), ``input`` (a file for the pods' input folder) or ``output`` (a job's file);
    ``location`` is where the bytes are (a local path, or ``s3://bucket/key``)."""

    id: str
    kind: str
    blake3: str
    sha256: str | None
    size: int
    content_type: str
    file_path: str | None
    tags: list[str]
    location: str
    lora_id: str | None
    job_id: str | None
    node_id: str | None
    created: float


@dataclass(frozen=True)
class PresetRecord:
    """A LoRA stack saved in the registry under a name: the ``loras`` of a generation request (each by
    registry id, name, brand or character, with strengths), applied by naming the preset in a request."""

    name: str
    loras: list[dict[str, Any]]
    description: str | None
    created: float
    updated: float

    def view(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PodRecord:
    """A pod of the fleet (the ``pods`` table): how it joined (``origin``: ``config``, ``api``, ``announced``,
    ``dns`` — ``discovered_by`` the name:port), whether it drains, its heartbeat period (0: none) and last
    beat. ``token_ref`` names the bridge's environment variable with the pod's token (never the token)."""

    id: str
    url: str
    token_ref: str | None
    labels: list[str]
    origin: str
    discovered_by: str | None
    draining: bool
    heartbeat_s: float
    heartbeat_at: float | None
    created: float

    def lost_for(self, now: float) -> float | None:
        """Seconds since the pod missed its third heartbeat; None while it beats (or need not)."""
        if not self.heartbeat_s or self.heartbeat_at is None:
            return None
        late = now - self.heartbeat_at - 3 * self.heartbeat_s
        return late if late > 0 else None


class JobEvent(NamedTuple):
    """One event of a job's log; ``seq`` counts from 1 per job (the SSE ``id``)."""

    seq: int
    type: str
    data: dict[str, Any]
