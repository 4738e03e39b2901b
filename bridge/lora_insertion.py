"""Insert LoRA loaders into API-format graphs and rewire every consumer to the chain's end."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

Graph = dict[str, dict[str, Any]]

# class_type -> (MODEL output index, CLIP output index or None)
MODEL_SOURCES: dict[str, tuple[int, int | None]] = {
    "CheckpointLoaderSimple": (0, 1),
    "CheckpointLoader": (0, 1),
}


@dataclass(frozen=True)
class StockLora:
    """A LoRA file already in the pod's ``loras`` folder, applied with ComfyUI's own loader."""

    name: str
    strength_model: float = 1.0
    strength_clip: float = 1.0


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _rewire(graph: Graph, old: list[Any], new: list[Any], skip: set[str]) -> None:
    for node_id, node in graph.items():
        if node_id in skip:
            continue
        for key, value in node.get("inputs", {}).items():
            if _is_link(value) and value == old:
                node["inputs"][key] = list(new)


def insert_lora_loaders(graph: Graph, loras: list[StockLora]) -> Graph:
    """Return a copy of ``graph`` with ``LoraLoader`` nodes chained after each checkpoint loader."""
    out = copy.deepcopy(graph)
    if not loras:
        return out
    for src_id in [k for k, n in graph.items() if n.get("class_type") in MODEL_SOURCES]:
        model_idx, clip_idx = MODEL_SOURCES[graph[src_id]["class_type"]]
        model, clip = [src_id, model_idx], [src_id, clip_idx]
        chain: set[str] = set()
        for i, lora in enumerate(loras):
            node_id = f"{src_id}.lora{i}"
            out[node_id] = {
                "class_type": "LoraLoader",
                "inputs": {"model": model, "clip": clip, "lora_name": lora.name,
                           "strength_model": lora.strength_model, "strength_clip": lora.strength_clip},
            }
            chain.add(node_id)
            model, clip = [node_id, 0], [node_id, 1]
        _rewire(out, [src_id, model_idx], model, chain)
        _rewire(out, [src_id, clip_idx], clip, chain)
    return out
