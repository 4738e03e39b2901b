"""The contract between the bridge and the node pack, written once (torch-free).

Node class names, the LoRA-stack JSON that ``Apply LoRA Stack`` takes (encoder and parser),
strength bounds, mismatch policies and apply modes, and the pod routes with their request
payloads. The bridge (graph insertion, pool, service) and the nodes (inputs, routes) both
import from here, so a change to the contract is made and tested in one place.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    model_validator,
)

from .errors import LoraBridgeError, TooLarge

# -- nodes -------------------------------------------------------------------------------------

NODE_FETCH = "LoraBridgeFetch"
NODE_LOAD = "LoraBridgeLoadFile"
NODE_APPLY = "LoraBridgeApply"
NODE_APPLY_STACK = "LoraBridgeApplyStack"
NODE_TRIGGER_WORDS = "LoraBridgeTriggerWords"
NODE_SAVE_TRAINED = "LoraBridgeSaveTrainedLora"
# the ids by role, as the editor's views get them (``ROUTE_NODES``): the front end names no node itself
NODE_ROLES = {"fetch": NODE_FETCH, "load_file": NODE_LOAD, "apply": NODE_APPLY, "apply_stack": NODE_APPLY_STACK,
              "trigger_words": NODE_TRIGGER_WORDS, "save_trained": NODE_SAVE_TRAINED}
# training on a pod: the dataset in ``input/<TRAINING_DATASETS>/<job>``, the LoRA in ``output/<TRAINING_OUTPUTS>/<job>``
TRAINING_DATASETS = "lora_bridge_datasets"
TRAINING_OUTPUTS = "lora_bridge_trainings"
TRAINING_UI_KEY = "lora_bridge_training"  # the save node's entry in the prompt's history outputs
JOB_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

STRENGTH_MIN, STRENGTH_MAX, STRENGTH_STEP = -100.0, 100.0, 0.01
STORE_SCHEME = "sha256:"  # a source naming a file already in the pod's store by content: no URL, no credentials
ON_MISMATCH = ("error", "skip", "apply anyway")
APPLY_MODES = ("merge", "hotswap")  # how one LoRA is applied
STACK_APPLY_MODES = (*APPLY_MODES, "auto")  # a stack may also let the pod choose (merge on repeats, hot-swap on switches)
OnMismatch = Literal["error", "skip", "apply anyway"]
ApplyMode = Literal["merge", "hotswap", "auto"]

Strength = Annotated[float, Field(ge=STRENGTH_MIN, le=STRENGTH_MAX, allow_inf_nan=False)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]
SourceText = Annotated[str, Field(min_length=1, max_length=4096)]
FileName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^/\\\x00]+$")]
ClientId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]


class ProtocolError(LoraBridgeError):
    """A payload of the bridge/pack contract is malformed; the message names the field."""


class _Closed(BaseModel):
    """Closed objects: unknown fields are refused, strings are not coerced from numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class StackEntry(_Closed):
    """One LoRA of a stack: a ``source`` (s3://, https://) or a ``name`` in the pod's ``loras`` folders."""

    source: SourceText | None = None
    name: FileName | None = None
    sha256: Sha256 | None = None
    strength_model: Strength = 1.0
    strength_clip: Strength = 1.0
    enabled: StrictBool = Field(True, description="false: kept in the stack (the editor's row is off), not applied")

    @model_validator(mode="before")
    @classmethod
    def _no_hash(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("sha256") == "":  # the editor's empty field: no hash given
            data = {**data, "sha256": None}
        return data

    @model_validator(mode="after")
    def _has_source(self) -> "StackEntry":
        if not self.source and not self.name:
            raise ValueError("needs a 'source' (s3://, https://) or a 'name' (file in the loras folders)")
        return self

    @property
    def fetch_source(self) -> str:
        """What the pod fetches: the source, else the ``loras`` file name."""
        return self.source or self.name or ""

    @property
    def link_name(self) -> str | None:
        """The name to link a fetched source under (a bare name needs no link)."""
        return self.name if self.source else None


def store_reference(sha256: str) -> str:
    """The source that names a file in the pod's store by its SHA-256 (what the bridge puts in graphs
    for LoRAs whose URL carries credentials: the pod was given the URL by prefetch, never by the graph)."""
    return STORE_SCHEME + sha256.lower()


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """Pydantic's errors as one line naming each place: ``loras[1].strength_model: Input should be <= 100``."""
    parts = []
    for err in exc.errors(include_url=False):
        where = prefix
        for loc in err["loc"]:
            where += f"[{loc}]" if isinstance(loc, int) else (f".{loc}" if where else str(loc))
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] in ("float_type", "int_type") and isinstance(err.get("input"), (bool, str)):
            number = "a whole number" if err["type"] == "int_type" else "a number"
            message = f"must be {number}, not {'a boolean' if isinstance(err['input'], bool) else 'a string'}"
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


class PayloadTooLarge(TooLarge, ProtocolError):
    """A request body over the route's limit."""


class UnencodableText(ProtocolError):
    """A JSON string that is no Unicode text (a lone surrogate such as ``"\\ud800"``): it could be neither
    stored, logged nor sent to a pod."""


def _unencodable(value: Any, where: str) -> str | None:
    """Where in ``value`` a string (or an object's key) holds a lone surrogate, else None."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return where or "(the value)"
    elif isinstance(value, dict):
        for key, item in value.items():
            found = _unencodable(key, f"{where}.{key!r}" if where else repr(key)) or \
                _unencodable(item, f"{where}.{key}" if where else key)
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if found := _unencodable(item, f"{where}[{i}]"):
                return found
    return None


def strict_json(text: str | bytes) -> Any:
    """``json.loads`` that refuses what RFC 8259 does not allow (``NaN``, ``Infinity``) and strings that are
    no Unicode text (``UnencodableText`` names where)."""
    def refuse(constant: str) -> Any:
        raise ProtocolError(f"{constant} is not valid JSON")

    try:
        data = json.loads(text, parse_constant=refuse)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not valid JSON: {exc}") from None
    if (where := _unencodable(data, "")) is not None:
        raise UnencodableText(f"{where}: not valid Unicode text (a lone surrogate); send UTF-8 text")
    return data


def validate_json(model: type[BaseModel], data: Any) -> Any:
    """``data`` (from ``strict_json``) as ``model`` with JSON's own types: a number field takes a JSON
    number only (never ``"1"`` or ``true``), a string field a JSON string. Every JSON input of the bridge
    and the pod routes is parsed through here."""
    return model.model_validate_json(json.dumps(data), strict=True)


def parse_stack(text: str) -> list[StackEntry]:
    """The ``loras`` input of ``Apply LoRA Stack``; ``ProtocolError`` names the entry and field at fault."""
    items = strict_json(text) if text.strip() else []
    if not isinstance(items, list):
        raise ProtocolError("loras must be a JSON list of objects")
    entries = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ProtocolError(f"loras[{i}] must be an object")
        try:
            entries.append(validate_json(StackEntry, item))
        except ValidationError as exc:
            raise ProtocolError(describe_validation_error(exc, f"loras[{i}]")) from None
    return entries


def encode_stack(entries: list[StackEntry]) -> str:
    """The compact JSON that ``parse_stack`` reads back (unset fields and ``enabled: true`` are left out)."""
    return json.dumps([e.model_dump(exclude_none=True, exclude=None if not e.enabled else {"enabled"}) for e in entries],
                      separators=(",", ":"))


# -- pod routes ---------------------------------------------------------------------------------

ROUTE_PREFIX = "/lora_bridge"
ROUTE_CACHE = f"{ROUTE_PREFIX}/cache"
ROUTE_CACHE_CLEAR = f"{ROUTE_PREFIX}/cache/clear"
ROUTE_PREFETCH = f"{ROUTE_PREFIX}/prefetch"
ROUTE_PREFETCH_CANCEL = f"{ROUTE_PREFIX}/prefetch/cancel"
ROUTE_LORAS = f"{ROUTE_PREFIX}/loras"
ROUTE_LORA_INFO = f"{ROUTE_PREFIX}/loras/info"
ROUTE_MODEL_INFO = f"{ROUTE_PREFIX}/models/info"
ROUTE_OPENAPI = f"{ROUTE_PREFIX}/openapi.json"
ROUTE_PRESETS = f"{ROUTE_PREFIX}/presets"  # GET: the pod's saved LoRA stacks; /{name}: PUT saves one, DELETE removes it
ROUTE_NODES = f"{ROUTE_PREFIX}/nodes"  # GET, like the OpenAPI document without a token: NODE_ROLES (what /object_info tells too)
ROUTE_DATASETS = f"{ROUTE_PREFIX}/datasets"  # /{job}: PUT a dataset zip, DELETE the job's dataset and outputs
ROUTE_DRAIN = f"{ROUTE_PREFIX}/drain"  # POST: take no more jobs, wait until idle (Kubernetes preStop); GET: the state
PREFETCH_EVENT = "lora_bridge.prefetch"  # WebSocket message with {request_id, sha256, done, total}


class PrefetchRequest(_Closed):
    """``POST /lora_bridge/prefetch``: download a LoRA into the pod's caches ahead of a job."""

    source: SourceText
    sha256: Sha256 | None = None
    name: FileName | None = None
    memory: StrictBool = False
    client_id: ClientId | None = Field(None, description="WebSocket client that receives progress messages")
    request_id: ClientId | None = Field(None, description="names this download for prefetch/cancel")


class PrefetchCancel(_Closed):
    """``POST /lora_bridge/prefetch/cancel``: stop the downloads started under ``request_id``."""

    request_id: ClientId


class CacheClear(_Closed):
    """``POST /lora_bridge/cache/clear``: ``memory`` (default) and/or unpinned, unused ``disk`` files."""

    memory: StrictBool = True
    disk: StrictBool = False


class LoraListQuery(_Closed):
    """``GET /lora_bridge/loras``: with a model file (a checkpoint or a diffusion model), each LoRA
    also says whether it was made for that model (``fits_model``)."""

    model_folder: Literal["checkpoints", "diffusion_models"] | None = None
    model_name: Annotated[str, Field(min_length=1, max_length=400, description="as ComfyUI lists it")] | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> "LoraListQuery":
        if (self.model_folder is None) != (self.model_name is None):
            raise ValueError("give model_folder and model_name together")
        return self


class LoraInfoQuery(_Closed):
    """``GET /lora_bridge/loras/info``: one file of the loras folders, inspected whole (metadata, SHA-256)."""

    name: Annotated[str, Field(min_length=1, max_length=400, description="as ComfyUI lists it")]


class ModelInfoQuery(_Closed):
    """``GET /lora_bridge/models/info``: a model file's family and variant (what its LoRAs must be made for)."""

    folder: Literal["checkpoints", "diffusion_models"]
    name: Annotated[str, Field(min_length=1, max_length=400, description="as ComfyUI lists it")]


class DatasetPath(_Closed):
    """``/lora_bridge/datasets/{job}``: a training job's folder name."""

    job: Annotated[str, Field(pattern=JOB_FOLDER.pattern, description="letters, digits, '-' and '_' (1-64)")]


PresetName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$",
                                  description="letters, digits, space, '_', '.' and '-' (1-64), first a letter or digit")]
MAX_STACK = 64  # LoRAs in one saved stack


class PresetPath(_Closed):
    """``/lora_bridge/presets/{name}``: a saved stack's name."""

    name: PresetName


class PresetBody(_Closed):
    """``PUT /lora_bridge/presets/{name}``: the rows of an Apply LoRA Stack, as its ``loras`` input holds them."""

    loras: list[StackEntry] = Field(max_length=MAX_STACK)


def parse_path(model: type[_Closed], match_info: Any, where: str = "path") -> Any:
    """A pod route's path (or, with ``where="query"``, query) parameters as ``model``; ``ProtocolError`` otherwise."""
    try:
        return model.model_validate(dict(match_info))
    except ValidationError as exc:
        raise ProtocolError(describe_validation_error(exc, where)) from None


def parse_payload(model: type[_Closed], raw: bytes) -> Any:
    """A pod route's JSON body as ``model`` (an empty body means all defaults); ``ProtocolError`` otherwise."""
    data = strict_json(raw) if raw.strip() else {}
    if not isinstance(data, dict):
        raise ProtocolError("body must be a JSON object")
    try:
        return validate_json(model, data)
    except ValidationError as exc:
        raise ProtocolError(describe_validation_error(exc)) from None


class DrainQuery(_Closed):
    """``POST /lora_bridge/drain?wait_s=N``: stop taking jobs (the bridge is told), then wait up to ``wait_s``
    for the pod's queue to empty (a ``preStop`` hook blocks on it; 0 answers at once)."""

    wait_s: float = Field(0.0, ge=0.0, le=3600.0, allow_inf_nan=False)


# -- fleet membership (the pack announcing its pod to the bridge) --------------------------------

Label = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:=/-]+$")]
EnvName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Z_][A-Z0-9_]*$")]
PodUrl = Annotated[str, Field(min_length=8, max_length=512, pattern=r"^https?://[^\s/?#@]+(/[^\s?#]*)?$")]
POD_ANNOUNCE = "/v1/pods/announce"  # on the bridge: a pod's pack announces itself (registration token)
POD_HEARTBEAT = "/v1/pods/{id}/heartbeat"  # on the bridge: the pack renews its membership
POD_PATH = "/v1/pods/{id}"  # on the bridge: DELETE drains the pod, then removes it once idle


class PodAnnouncement(_Closed):
    """What a pod's pack (or an operator through ``POST /v1/pods``) tells the bridge: where the pod answers,
    which credential the bridge sends it (the *name* of one of the bridge's environment variables, never the
    secret itself), its labels (GPU kind, families it serves), how often it renews (0: it does not)."""

    url: PodUrl
    token_ref: EnvName | None = Field(None, description="environment variable on the bridge holding the pod's token; "
                                                        "default LORA_BRIDGE_POD_TOKEN")
    labels: list[Label] = Field(default_factory=list, max_length=32)
    heartbeat_s: float = Field(0.0, ge=0.0, le=3600.0, allow_inf_nan=False,
                               description="seconds between heartbeats; a pod that misses three is lost")
