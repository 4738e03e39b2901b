"""One weight-bearing layer of a generated model file, shared by every layout module."""

from __future__ import annotations

from dataclasses import dataclass

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Layer:
    """One weight-bearing layer of a model file: its name, weight shape and how it is stored
    (shared by the UNet and transformer layouts; ``weights`` fills it)."""

    name: str
    shape: Shape
    bias: bool = True
    norm: bool = False
    raw: bool = False  # a parameter stored under ``name`` itself (open_clip's embeddings, Wan's modulation)
    scale_key: str = "weight"  # a norm's scale parameter (Flux's RMSNorm saves ``.scale``, the Wan VAE's ``.gamma``)
