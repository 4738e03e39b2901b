"""How a character gets into a generated video: the compatibility matrix and the choice of path.

- **direct**: the character has a ready LoRA of the video model's family and variant; it is
  inserted into the video graph.
- **preprocess**: the character only has an image LoRA (SD1.x, SDXL, Flux, Z-Image, Qwen-Image);
  a key frame is generated with it (and its trigger word) and animated by the image-to-video
  template, in one graph on one pod.
- **fallback**: no usable LoRA; prompt-only generation with the character's fallback style words
  and a warning (refused under ``strict``).

The matrix is data (``VIDEO_TEMPLATES``, ``KEY_FRAME_TEMPLATES``): a family gains a path by gaining
a template, never by a special case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..lorafiles.families import FAMILY_NAMES, UNKNOWN, variant_name

CharacterPath = Literal["direct", "preprocess", "fallback"]

# video templates -> the image-to-video template a key frame goes into (its start image)
VIDEO_TEMPLATES = {"wan21_t2v": "wan21_i2v", "wan21_i2v": "wan21_i2v", "wan22_t2v": "wan22_i2v", "wan22_i2v": "wan22_i2v"}
VIDEO_FAMILIES = {"wan", "hunyuan_video"}
# image families a key frame can be generated for -> the template that draws it
KEY_FRAME_TEMPLATES = {"sd15": "sd15_txt2img", "sdxl": "sdxl_txt2img", "flux": "flux_txt2img",
                       "lumina2": "z_image_txt2img", "qwen_image": "qwen_image_txt2img"}


@dataclass(frozen=True)
class Verdict:
    """What a LoRA of one family can do for a video of another: a path, or why not."""

    path: Literal["direct", "preprocess"] | None
    reason: str


def verdict(video_family: str, video_variant: str | None, lora_family: str | None, lora_variant: str | None) -> Verdict:
    """The path a LoRA of ``lora_family`` (``lora_variant``) takes into a video of ``video_family``."""
    video = variant_name(video_family, video_variant)
    if lora_family in (None, UNKNOWN):  # as everywhere: inserted, and the pod checks its keys against the model
        return Verdict("direct", f"the LoRA's base model is unknown: inserted, the pod checks that it fits {video}")
    lora = variant_name(lora_family, lora_variant)
    if lora_family == video_family:
        if video_variant and lora_variant and lora_variant != video_variant:
            return Verdict(None, f"a {lora} LoRA does not fit a {video} model (another size of the same family)")
        return Verdict("direct", f"a {lora} LoRA is inserted into the {video} video graph")
    if lora_family in KEY_FRAME_TEMPLATES:
        return Verdict("preprocess", f"a {lora} LoRA draws a key frame ({KEY_FRAME_TEMPLATES[lora_family]}) that "
                                     f"{video} image-to-video animates")
    return Verdict(None, f"{lora} LoRAs have no key-frame template and do not fit {video}")


def matrix() -> list[dict[str, Any]]:
    """Every video model × LoRA family pair with its path (``GET /v1/compatibility``)."""
    videos = [("wan", "1.3B"), ("wan", "14B")]
    loras: list[tuple[str, str | None]] = [(family, None) for family in FAMILY_NAMES if family not in (UNKNOWN, "wan")]
    loras[0:0] = [("wan", "1.3B"), ("wan", "14B")]
    rows = []
    for video_family, video_variant in videos:
        for lora_family, lora_variant in loras:
            v = verdict(video_family, video_variant, lora_family, lora_variant)
            rows.append({"video_family": video_family, "video_variant": video_variant, "lora_family": lora_family,
                         "lora_variant": lora_variant, "path": v.path or "not_possible", "reason": v.reason,
                         "key_frame_template": KEY_FRAME_TEMPLATES.get(lora_family) if v.path == "preprocess" else None})
    return rows
