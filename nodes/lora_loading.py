"""Where LoRA weights touch the model: load (memory-cached), key-convert, check, patch.

The patches are made as ComfyUI's ``load_lora_for_models`` makes them (its key maps, plus
the names it lacks from ``lora_keymaps``; same conversion, same ``add_patches`` calls), so
results are bit-identical to the stock loader wherever it maps every key; what differs is that
the file read and the key conversion are cached, keys the stock loader drops are applied, and
a LoRA whose keys do not fit the model is reported instead of silently ignored.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from ..bridge.errors import LoraBridgeError
from ..bridge.lorafiles.families import (
    COMFY_MODEL_FAMILIES,
    FAMILY_NAMES,
    config_variant,
    made_for_another,
    split_key,
    variant_name,
)
from ..bridge.lorafiles.sources import parse_source
from ..bridge.pack_protocol import APPLY_MODES, ON_MISMATCH
from ..bridge.settings import settings
from . import hotswap
from .lora_handle import LoraHandle
from .lora_keymaps import extra_unet_keys
from .memory_cache import CachedLora
from .pod_state import disk_store, fetch_handle, is_loras_name, log, memory_cache


class LoraMismatch(LoraBridgeError):
    """The LoRA was made for another base model (or none of its keys fit this one)."""


@dataclass
class ApplyReport:
    """What happened to one LoRA, shown on the node and returned to API callers."""

    name: str
    family: str
    model_family: str
    rank: int | None
    matched: int
    total: int
    strength_model: float
    strength_clip: float
    trigger_words: list[str]
    applied: bool
    note: str = ""
    memory_hit: bool = False
    mode: str = "merge"

    def line(self) -> str:
        verb = ("hot-swapped" if self.mode == "hotswap" else "applied") if self.applied else "skipped"
        head = f"{verb} {self.name} ({FAMILY_NAMES.get(self.family, self.family)}"
        head += f", rank {self.rank})" if self.rank else ")"
        text = f"{head}: {self.matched}/{self.total} keys, model {self.strength_model:g}, clip {self.strength_clip:g}"
        if self.trigger_words:
            text += f"; trigger: {', '.join(self.trigger_words)}"
        return text + (f"; {self.note}" if self.note else "")


def model_family(model: Any) -> str:
    """Our family id for a ComfyUI MODEL (``unknown`` for classes we do not map)."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    return COMFY_MODEL_FAMILIES.get(type(config).__name__, "unknown") if config is not None else "unknown"


def model_variant(model: Any, family: str) -> str | None:
    """The variant of a ComfyUI MODEL that LoRAs cannot cross (see ``families.variant_of``), if known."""
    unet_config = getattr(getattr(getattr(model, "model", None), "model_config", None), "unet_config", None) or {}
    return config_variant(family, unet_config)


def _signature(model: Any, clip: Any) -> str:
    """Identifies the key maps: same model architecture and text encoder give the same conversion."""
    parts = []
    if model is not None:
        config = model.model.model_config
        parts.append(f"{type(config).__name__}:{sorted((k, repr(v)) for k, v in config.unet_config.items())}")
    if clip is not None:
        parts.append(f"{type(clip.cond_stage_model).__name__}:{len(clip.cond_stage_model.state_dict())}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _read(handle: LoraHandle) -> CachedLora:
    import comfy.lora_convert
    import comfy.utils

    if not handle.path.exists():
        if not handle.source:
            raise LoraBridgeError(f"LoRA file {handle.path} is gone")
        handle = fetch_handle(handle.source, handle.sha256)
    with disk_store().in_use(handle.sha256):  # eviction skips the file while it is read
        state_dict = comfy.lora_convert.convert_lora(comfy.utils.load_torch_file(str(handle.path), safe_load=True))
    nbytes = sum(t.numel() * t.element_size() for t in state_dict.values() if hasattr(t, "numel"))
    return CachedLora(handle.sha256, handle.name, state_dict, nbytes)


def load_into_memory(handle: LoraHandle) -> tuple[CachedLora, bool]:
    """The LoRA's state dict from the memory cache, reading the file on a miss."""
    return memory_cache().get_or_load(handle.sha256, lambda: _read(handle))


def _fits(key: Any, patch: Any, shapes: dict[str, tuple[int, ...]]) -> bool:
    """Whether a LoRA patch can be added to its weight (LoRA up/down widths checked; a key
    ``(name, (dim, first, count))`` addresses a slice of a fused weight)."""
    shape = shapes.get(key if isinstance(key, str) else key[0])
    if shape is None:
        return False
    if not isinstance(key, str):
        dim, _, count = key[1]
        shape = tuple(count if i == dim else n for i, n in enumerate(shape))
    weights = getattr(patch, "weights", None)
    if getattr(patch, "name", "") != "lora" or not weights or weights[3] is not None or weights[5] is not None:
        return True  # other adapters (LoHa, LoKr, …), tucker convs and reshapes: trust the key
    up, down = weights[0], weights[1]  # a conv's down factor may be flattened (ComfyUI's trainer)
    return up.shape[0] == shape[0] and (len(shape) < 2 or math.prod(down.shape[1:]) == math.prod(shape[1:]))


def _patches(entry: CachedLora, model: Any, clip: Any) -> tuple[dict[Any, Any], frozenset[Any]]:
    """The LoRA's patches for this model and text encoder (only those whose shapes fit), and
    which of them belong to the diffusion model."""
    import comfy.lora

    def convert() -> tuple[dict[Any, Any], frozenset[Any]]:
        key_map: dict[str, Any] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        if model is not None:
            key_map = extra_unet_keys(model.model, comfy.lora.model_lora_keys_unet(model.model, key_map))
            shapes.update((k, tuple(v.shape)) for k, v in model.model.state_dict().items())
        if clip is not None:
            key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
            shapes.update((k, tuple(v.shape)) for k, v in clip.cond_stage_model.state_dict().items())
        loaded = comfy.lora.load_lora(entry.state_dict, key_map, log_missing=False)
        fitting = {k: p for k, p in loaded.items() if _fits(k, p, shapes)}
        model_keys = set(model.model.state_dict()) if model is not None else set()
        return fitting, frozenset(k for k in fitting if (k if isinstance(k, str) else k[0]) in model_keys)

    return memory_cache().converted(entry, _signature(model, clip), convert)[0]


def _target_count(state_dict: dict[str, Any]) -> int:
    """How many model parameters the LoRA patches: one per module, two where it also patches the
    bias (``.diff_b``, ``.b_norm``), so that it compares with the number of patches made."""
    targets = set()
    for key in state_dict:
        module, suffix = split_key(key)
        if suffix not in ("", ".alpha", ".dora_scale"):
            targets.add((module, suffix in (".diff_b", ".b_norm")))
    return len(targets)


def apply_lora(model: Any, clip: Any, handle: LoraHandle, strength_model: float, strength_clip: float,
               on_mismatch: str = "error", mode: str = "merge") -> tuple[Any, Any, ApplyReport]:
    """Apply ``handle`` to ``model``/``clip``: ``merge`` patches weights like ComfyUI's loader,
    ``hotswap`` adds the LoRA at run time; returns new clones and a report."""
    if on_mismatch not in ON_MISMATCH:
        raise LoraBridgeError(f"on_mismatch must be one of {ON_MISMATCH}, got {on_mismatch!r}")
    if mode not in APPLY_MODES:
        raise LoraBridgeError(f"mode must be one of {APPLY_MODES}, got {mode!r}")
    m_family = model_family(model)
    report = ApplyReport(handle.name, handle.family, m_family, max(handle.info.get("ranks") or [0]) or None, 0, 0,
                         strength_model, strength_clip, handle.trigger_words, False)
    if strength_model == 0 and strength_clip == 0:
        report.note = "both strengths are 0: nothing to do"
        return model, clip, report
    entry, report.memory_hit = load_into_memory(handle)
    patches, model_keys = _patches(entry, model, clip)
    report.matched, report.total = len(patches), _target_count(entry.state_dict)
    m_variant = model_variant(model, m_family)
    if made_for_another(handle.family, handle.variant, m_family, m_variant) or report.matched == 0:
        problem = (f"LoRA '{handle.name}' is {variant_name(handle.family, handle.variant)}; model is "
                   f"{variant_name(m_family, m_variant)}; {report.matched} of {report.total} keys match")
        if on_mismatch == "error":
            raise LoraMismatch(problem + " (set on_mismatch to 'skip' or 'apply anyway' to go on)")
        if on_mismatch == "skip":
            report.note = "skipped: " + problem
            return model, clip, report
        report.note = "applied anyway: " + problem
    if mode == "hotswap" and not all(hotswap.supported(k, p) for k, p in patches.items()):
        mode = "merge"
        report.note = (report.note + "; " if report.note else "") + "merged: this LoRA type cannot be hot-swapped"
    new_model, new_clip = model, clip
    if mode == "hotswap":
        if model is not None:
            part = {k: p for k, p in patches.items() if k in model_keys}
            new_model = hotswap.attach_to_model(model, hotswap.build_terms(model.model, part, strength_model))
        if clip is not None:
            part = {k: p for k, p in patches.items() if k not in model_keys}
            new_clip = hotswap.attach_to_clip(clip, hotswap.build_terms(clip.cond_stage_model, part, strength_clip))
    else:
        if model is not None:
            new_model = model.clone()
            new_model.add_patches(patches, strength_model)
        if clip is not None:
            new_clip = clip.clone()
            new_clip.add_patches(patches, strength_clip)
    report.applied, report.mode = True, mode
    return new_model, new_clip, report


def preload_configured() -> None:
    """Fetch, pin and load into memory what ``LORA_BRIDGE_PRELOAD`` names (sources or ``loras`` names)."""
    for item in settings().preload:
        shown = item if is_loras_name(item) else parse_source(item).display
        try:
            load_into_memory(fetch_handle(item, pin=True))
            log.info("lora_bridge: preloaded %s", shown)
        except Exception as exc:  # start-up must go on; the error is logged with its reason
            log.error("lora_bridge: could not preload %s: %s", shown, exc)
