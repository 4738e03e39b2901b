"""``core/ASSET`` references in API-format graphs (Comfy API v2): found, checked against a pod's
``/object_info``, and replaced by the file names the chosen pod holds.

A reference stands where a file name goes, as a node's input value::

    {"__type": "core/ASSET", "info": {"id": "<asset uuid>", "hash": "blake3:…", "file_path": "x.png"}}

A LoRA asset may stand in any input that lists the ``loras`` folder (``LoraLoader``'s
``lora_name``, ``LoraLoaderModelOnly``, this pack's loaders, or any node whose choices are the
same listing); an input asset in any other file input (``LoadImage``'s ``image``…).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from .validate import GraphInvalid

ASSET_TYPE = "core/ASSET"
LORA_INPUTS = {("LoraLoader", "lora_name"), ("LoraLoaderModelOnly", "lora_name"), ("LoraBridgeLoadFile", "lora_name")}
MODEL_INPUTS = {("CheckpointLoaderSimple", "ckpt_name"): "checkpoints", ("UNETLoader", "unet_name"): "diffusion_models"}


def is_reference(value: Any) -> bool:
    """A value tagged as an asset reference (whether well formed or not)."""
    return isinstance(value, dict) and value.get("__type") == ASSET_TYPE


@dataclass(frozen=True)
class AssetRef:
    """One reference: where it stands, and the asset id it names (None: malformed)."""

    node: str
    input: str
    asset_id: str | None


@dataclass(frozen=True)
class Placement:
    """An asset put where a reference stood: ``name`` is the file name the pod sees (a LoRA linked into the
    ``loras`` folder by the pack's fetch, or an input file uploaded to the ``input`` folder)."""

    node: str
    input: str
    asset_id: str
    kind: str  # "lora" or "input"
    name: str


def find_references(graph: dict[str, Any]) -> list[AssetRef]:
    """Every reference among the graph's node inputs; one nested deeper than an input's value is refused."""
    refs: list[AssetRef] = []
    for node_id, node in graph.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            continue
        for name, value in inputs.items():
            if is_reference(value):
                info = value.get("info")
                asset_id = info.get("id") if isinstance(info, dict) else None
                refs.append(AssetRef(str(node_id), name, asset_id if isinstance(asset_id, str) and asset_id else None))
            elif _nested(value):
                raise GraphInvalid([f"node {node_id} input '{name}': a core/ASSET reference must be the input's value"])
    return refs


def _nested(value: Any) -> bool:
    if is_reference(value):
        return True
    if isinstance(value, dict):
        return any(_nested(v) for v in value.values())
    if isinstance(value, list):
        return any(_nested(v) for v in value)
    return False


def pod_file_name(kind: str, digest: str, file_path: str | None) -> str:
    """The file name an asset gets on a pod: its own name made safe, with a short content hash (so two
    files of one name never overwrite each other, and one file is one name on every pod)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", PurePosixPath(file_path or "asset").name)[:80].lstrip("._-") or "asset"
    short = digest.removeprefix("blake3:")[:12]
    if kind == "lora":
        return f"{PurePosixPath(stem).stem or 'lora'}-{short}.safetensors"
    return f"{short}-{stem}"


def _choices(object_info: dict[str, Any], cls: str, name: str) -> list[Any] | None:
    sections = (object_info.get(cls) or {}).get("input") or {}
    spec = {**(sections.get("optional") or {}), **(sections.get("required") or {})}.get(name)
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else None
    if isinstance(kind, list):
        return kind
    if kind == "COMBO" and isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict):
        return list(spec[1].get("options") or [])
    return None


def takes_loras(object_info: dict[str, Any], cls: str, name: str) -> bool:
    """Whether ``cls.name`` lists the ``loras`` folder: a known LoRA input, or the same listing as ``LoraLoader``'s."""
    if (cls, name) in LORA_INPUTS:
        return True
    listing = _choices(object_info, "LoraLoader", "lora_name")
    return bool(listing) and _choices(object_info, cls, name) == listing


def check_places(graph: dict[str, Any], placements: list[Placement], object_info: dict[str, Any]) -> None:
    """Each asset stands where its kind belongs on this pod: a LoRA in an input that lists the ``loras``
    folder, an input file in another file input; ``GraphInvalid`` names each misplaced one."""
    errors = []
    for p in placements:
        cls = str(graph[p.node].get("class_type"))
        lora_input = takes_loras(object_info, cls, p.input)
        if p.kind == "lora" and not lora_input:
            errors.append(f"node {p.node} ({cls}) input '{p.input}': asset {p.asset_id} is a LoRA, and this input "
                          "does not take files of the loras folder")
        elif p.kind != "lora" and (lora_input or _choices(object_info, cls, p.input) is None):
            errors.append(f"node {p.node} ({cls}) input '{p.input}': asset {p.asset_id} is an input file, and this "
                          "input does not take one")
    if errors:
        raise GraphInvalid(errors)


def place(graph: dict[str, Any], placements: list[Placement]) -> dict[str, Any]:
    """A copy of ``graph`` with each placed reference replaced by the asset's file name on the pod."""
    placed = copy.deepcopy(graph)
    for p in placements:
        placed[p.node]["inputs"][p.input] = p.name
    return placed


def model_files(graph: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The model files the graph loads by name: (node, folder, file name), for the family check."""
    found = []
    for node_id, node in graph.items():
        if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
            continue
        for (cls, name), folder in MODEL_INPUTS.items():
            value = node["inputs"].get(name)
            if node.get("class_type") == cls and isinstance(value, str):
                found.append((str(node_id), folder, value))
    return found
