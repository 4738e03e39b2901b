"""What the job core is asked to do, as closed, typed models: register a LoRA, run a generation,
train a LoRA.

The front doors (``bridge/http``) parse their inputs once into these models (and the OpenAPI
document is generated from them); the core only ever sees validated objects. Unknown fields are
refused, numbers are ranged and finite, strings bounded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)

from ..lorafiles.families import FAMILY_NAMES, VARIANTS
from ..pack_protocol import ApplyMode, PresetName, Sha256, SourceText, Strength
from .records import LORA_STATUSES

Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
OwnerId = Annotated[StrictStr, Field(min_length=1, max_length=128)] | Annotated[StrictInt, Field(ge=0, le=2**53)]
Text = Annotated[StrictStr, Field(max_length=1000)]
Name = Annotated[StrictStr, Field(min_length=1, max_length=200)]
Tag = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[^,\s](?:[^,]*[^,\s])?$",
                                 description="a word or phrase, without commas or outer spaces")]
if TYPE_CHECKING:  # the checker sees text; pydantic (and so the OpenAPI document) the closed list
    Family = str
else:
    Family = Literal[tuple(FAMILY_NAMES)]
Variant = Literal[VARIANTS]  # type: ignore[valid-type]
Expert = Literal["high_noise", "low_noise"]
LoraStatus = Literal[LORA_STATUSES]  # type: ignore[valid-type]
JsonScalar = StrictStr | StrictBool | StrictInt | Annotated[float, Field(allow_inf_nan=False, strict=True)] | None
Metadata = dict[Annotated[str, Field(max_length=256)], Annotated[StrictStr, Field(max_length=65536)] | JsonScalar]


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AssetInfo(Closed):
    id: Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    hash: Annotated[StrictStr, Field(max_length=100)] | None = None
    file_path: Annotated[StrictStr, Field(max_length=400)] | None = None


class AssetReference(Closed):
    """A Comfy API v2 asset where a file name goes (``{"__type": "core/ASSET", "info": {"id": …}}``): in a
    template parameter, an input file (a start image) the chosen pod receives before the prompt."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True)

    type: Literal["core/ASSET"] = Field(alias="__type")
    info: AssetInfo


# -- LoRA registry -------------------------------------------------------------------------------


class _LoraFields(Closed):
    character_id: OwnerId | None = Field(None, description="owner: a character (sets owner_kind/owner_id)")
    brand_id: OwnerId | None = Field(None, description="owner: a brand (sets owner_kind/owner_id)")
    owner_kind: Literal["character", "brand"] | None = None
    owner_id: OwnerId | None = None
    version: Annotated[StrictInt, Field(ge=1, le=1_000_000)] | None = None
    status: LoraStatus | None = None
    family: Family | None = Field(None, description="base model family; inspected from the file when left out")
    variant: Variant | None = Field(None, description="the model size the LoRA cannot cross (Wan 1.3B / 14B / 2.2 5B, "
                                                      "Flux.1 / Flux.2); inspected with the family")
    trigger_word: Text | None = None
    fallback_style: Text | None = Field(None, description="style words appended to the prompt when the LoRA is dropped")
    source: SourceText | None = Field(None, description="s3://bucket/key, https://…, or an uploaded file (a Wan 2.2 pair: "
                                                        "the high-noise expert's file)")
    sha256: Sha256 | None = None
    low_noise_source: SourceText | None = Field(None, description="a Wan 2.2 expert pair: the low-noise expert's file")
    low_noise_sha256: Sha256 | None = None
    size: Annotated[StrictInt, Field(ge=0, le=2**53)] | None = None
    rank: Annotated[StrictInt, Field(ge=1, le=65536)] | None = None
    metadata: Metadata | None = None
    tags: Annotated[list[Tag], Field(max_length=32)] | None = Field(None, description="words to find the LoRA by")

    @model_validator(mode="after")
    def _one_owner(self) -> "_LoraFields":
        given = [k for k in ("character_id", "brand_id", "owner_id") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one owner, not {' and '.join(given)}")
        if (self.owner_id is None) != (self.owner_kind is None):
            raise ValueError("owner_kind and owner_id go together")
        if self.low_noise_source is not None and self.source is None:
            raise ValueError("a Wan 2.2 pair needs both files: 'source' (high-noise expert) and 'low_noise_source'")
        return self

    def registry_fields(self) -> dict[str, Any]:
        """The fields as the registry stores them (owner folded into ``owner_kind``/``owner_id``)."""
        fields = self.model_dump(exclude_unset=True, exclude={"character_id", "brand_id"})
        for kind in ("character", "brand"):
            owner = getattr(self, f"{kind}_id")
            if owner is not None:
                fields["owner_kind"], fields["owner_id"] = kind, str(owner)
        if fields.get("owner_id") is not None:
            fields["owner_id"] = str(fields["owner_id"])
        return fields


class LoraCreate(_LoraFields):
    """``POST /v1/loras``: register a LoRA by source (its header is inspected for what is left out)."""

    name: Name


class LoraPatch(_LoraFields):
    """``PATCH /v1/loras/{id}``: change some fields."""

    name: Name | None = None


# -- generations ----------------------------------------------------------------------------------


class LoraRef(Closed):
    """One LoRA of a request: by registry id, or the best LoRA of a brand or a character."""

    lora_id: Id | None = None
    name: Name | None = Field(None, description="instead of lora_id: the registry's newest LoRA of that name (ready first)")
    brand_id: OwnerId | None = Field(None, description="instead of lora_id: the brand's LoRA for the workflow's family")
    character_id: OwnerId | None = Field(None, description="instead of lora_id: the character's LoRA for the family")
    strength_model: Strength = 1.0
    strength_clip: Strength | None = Field(None, description="default: strength_model")
    type: Annotated[StrictStr, Field(min_length=1, max_length=64)] | None = Field(
        None, description="a label kept with the job (style, product, photography…)")

    @model_validator(mode="after")
    def _one_reference(self) -> "LoraRef":
        given = [k for k in ("lora_id", "name", "brand_id", "character_id") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("name the LoRA one way: 'lora_id', 'name', 'brand_id' or 'character_id'")
        return self

    @property
    def owner(self) -> tuple[str, str] | None:
        """(kind, id) of a reference by owner; None for one by ``lora_id``."""
        for kind in ("brand", "character"):
            value = getattr(self, f"{kind}_id")
            if value is not None:
                return kind, str(value)
        return None


class GenerationCreate(Closed):
    """``POST /v1/generations``: a template (+ params) or an editor/API workflow, and the LoRAs."""

    template: Annotated[StrictStr, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_-]+$")] | None = None
    params: dict[Annotated[str, Field(max_length=100)], JsonScalar | AssetReference] = Field(
        default_factory=dict, description="the template's parameters; a file parameter (a start image) may be an asset")
    key_frame_params: dict[Annotated[str, Field(max_length=100)], JsonScalar] = Field(
        default_factory=dict, description="a character in a video template with only an image LoRA: parameters of the "
                                          "key frame's image template (its prompt and seed default to the video's)")
    workflow: dict[str, Any] | None = Field(None, description="API-format or graph-editor workflow JSON")
    family: Family | None = Field(None, description="the workflow's base family (templates declare theirs)")
    variant: Variant | None = Field(None, description="the workflow's model variant, where it has one (templates may declare theirs)")
    character_id: OwnerId | None = None
    brand_id: OwnerId | None = None
    loras: Annotated[list[LoraRef], Field(max_length=20)] | None = None
    lora_configs: Annotated[list[LoraRef], Field(max_length=20)] | None = Field(None, description="alias of loras")
    preset: PresetName | None = Field(None, description="a LoRA stack saved in the registry (PUT /v1/presets/{name}): "
                                                         "its LoRAs are applied first, then those of 'loras'")
    lora_strength: Strength = Field(1.0, description="strength of the character's or brand's LoRA")
    experts: Annotated[list[Expert], Field(min_length=1, max_length=2)] | None = Field(
        None, description="two-expert templates (Wan 2.2 A14B): the experts a single-file LoRA goes on (default both; "
                          "a pair puts each file on its own expert)")
    expert_strengths: dict[Expert, Strength] | None = Field(
        None, description="two-expert templates: model strength of the character's or brand's LoRA per expert "
                          "(default lora_strength)")
    lora_policy: Literal["fallback", "strict"] = "fallback"
    apply_mode: ApplyMode = Field("auto", description="how pack pods apply the LoRAs: merge, hotswap, or auto "
                                  "(hot-swap a stack the first time, merge it while the pod repeats it)")
    webhook_url: Annotated[StrictStr, Field(max_length=2048, pattern=r"^https?://")] | None = None
    labels: Annotated[dict[Annotated[StrictStr, Field(min_length=1, max_length=64)],
                           Annotated[StrictStr, Field(max_length=256)]], Field(max_length=16)] | None = Field(
        None, description="string labels kept with the job (the Comfy API v2 job's metadata)")

    @model_validator(mode="after")
    def _one_graph(self) -> "GenerationCreate":
        if (self.template is None) == (self.workflow is None):
            raise ValueError("give a 'template' (with 'params') or a 'workflow'")
        if self.loras is not None and self.lora_configs is not None:
            raise ValueError("give 'loras' or its alias 'lora_configs', not both")
        return self

    @property
    def lora_refs(self) -> list[LoraRef]:
        return list(self.loras or self.lora_configs or [])


# -- trainings -----------------------------------------------------------------------------------

class TrainingCreate(Closed):
    """``POST /v1/trainings``: what to train (JSON; or multipart: this JSON as the ``request`` part,
    the dataset zip as the ``dataset`` part)."""

    name: Name
    trigger_word: Annotated[StrictStr, Field(min_length=1, max_length=100, pattern=r"^[^,\n]+$")]
    character_id: OwnerId | None = Field(None, description="owner of the LoRA: a character")
    brand_id: OwnerId | None = Field(None, description="owner of the LoRA: a brand")
    template: Id = Field("train_sd15_lora", description="a training template of workflows/ (its family is the LoRA's)")
    checkpoint: Annotated[StrictStr, Field(min_length=1, max_length=255)] = Field(
        description="the base model's checkpoint (or UNet) file name on the pods")
    preset: Literal["fast", "balanced", "quality"] = "balanced"
    steps: Annotated[StrictInt, Field(ge=1, le=100_000)] | None = Field(None, description="default: epochs x images / batch")
    epochs: Annotated[StrictInt, Field(ge=1, le=1000)] | None = None
    rank: Annotated[StrictInt, Field(ge=1, le=128)] | None = None
    learning_rate: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = None
    batch_size: Annotated[StrictInt, Field(ge=1, le=64)] | None = None
    resolution: Annotated[StrictInt, Field(ge=64, le=2048, multiple_of=8)] | None = None
    seed: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)] = 0
    training_dtype: Literal["bf16", "fp32"] = "bf16"
    dataset_urls: Annotated[list[SourceText], Field(min_length=1, max_length=1000)] | None = Field(
        None, description="the dataset as files: images and their same-name .txt captions (https:// or s3://)")
    dataset_s3_prefix: SourceText | None = Field(None, description="the dataset as every file under s3://bucket/prefix/")
    validation_prompt: Text = Field("a portrait", description="the sample generation's prompt (after the trigger word)")
    validation_params: dict[Annotated[str, Field(max_length=64)], JsonScalar] = Field(
        default_factory=dict, description="parameters of the sample generation's template (steps, size, seed…)")
    retries: Annotated[StrictInt, Field(ge=0, le=3)] = Field(0, description="run again on another pod when the pod dies")
    webhook_url: Annotated[StrictStr, Field(max_length=2048)] | None = None

    @model_validator(mode="after")
    def _checks(self) -> "TrainingCreate":
        if self.character_id is not None and self.brand_id is not None:
            raise ValueError("give one owner, not character_id and brand_id")
        if self.dataset_urls is not None and self.dataset_s3_prefix is not None:
            raise ValueError("give the dataset one way: dataset_urls or dataset_s3_prefix")
        return self

    def overrides(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("steps", "epochs", "rank", "learning_rate", "batch_size", "resolution")}
