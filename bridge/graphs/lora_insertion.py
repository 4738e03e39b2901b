"""Where graphs are rewritten: LoRA loaders inserted after each model source, consumers rewired.

Model and CLIP sources are found by output types from the pod's ``/object_info`` (any loader
with a MODEL output and no MODEL input: checkpoint, UNet, GGUF/NF4, diffusers loaders), not
by node ids. LoRA loaders already in the graph are kept and the new chain is appended after
them; every consumer of the old end (samplers, model patches, guiders, text encoders) is
rewired to the new end. Stock mode inserts ``LoraLoader``/``LoraLoaderModelOnly`` (the file
must be on the pod); pack mode inserts one ``LoraBridgeApplyStack`` that fetches by source and
hash. New node ids are stable (``lora:<source>:<n>``) and inserting into a graph that already
went through here replaces the earlier insertion, so building twice gives the same graph.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import LoraBridgeError
from ..lorafiles.families import FAMILY_NAMES
from ..pack_protocol import NODE_APPLY, NODE_APPLY_STACK, ApplyMode, StackEntry, encode_stack
from .prompts import with_trigger_words

Graph = dict[str, dict[str, Any]]
ObjectInfo = dict[str, Any]
PREFIX = "lora:"
LORA_LOADERS = {"LoraLoader", "LoraLoaderModelOnly", NODE_APPLY, NODE_APPLY_STACK}
PROMPT_INPUTS = ("text", "prompt", "clip_l", "t5xxl", "text_g", "text_l")
ZEROING = {"ConditioningZeroOut"}  # nodes whose output carries none of the input's text
TRIGGER_JOIN = "StringConcatenate"  # core node that prepends trigger words to a prompt computed in the graph
# used when no /object_info is at hand: class -> output types
KNOWN_OUTPUTS: dict[str, list[str]] = {
    "CheckpointLoaderSimple": ["MODEL", "CLIP", "VAE"], "CheckpointLoader": ["MODEL", "CLIP", "VAE"],
    "UNETLoader": ["MODEL"], "CLIPLoader": ["CLIP"], "DualCLIPLoader": ["CLIP"], "TripleCLIPLoader": ["CLIP"],
    "ImageOnlyCheckpointLoader": ["MODEL", "CLIP_VISION", "VAE"], "LoraLoader": ["MODEL", "CLIP"],
    "LoraLoaderModelOnly": ["MODEL"], NODE_APPLY: ["MODEL", "CLIP"], NODE_APPLY_STACK: ["MODEL", "CLIP"],
}


class InsertionError(LoraBridgeError):
    """A LoRA cannot be inserted (wrong base model under the refuse policy, no model source, …)."""


@dataclass(frozen=True)
class LoraRequest:
    """One LoRA to apply. ``name`` is the file on the pod (stock mode) or a display name (pack mode)."""

    name: str
    strength_model: float = 1.0
    strength_clip: float = 1.0
    source: str | None = None  # pack mode: s3://… or https://…
    sha256: str | None = None
    family: str | None = None  # detected base family; None/unknown skips the family check
    text_encoder: bool = True  # has text-encoder weights
    trigger_words: tuple[str, ...] = ()
    targets: tuple[str, ...] | None = None  # model-source node ids or loader file names (substrings)
    source_nodes: tuple[str, ...] | None = None  # exactly these model-source nodes (a template's experts)
    linked: bool = False  # the graph names the file itself (a core/ASSET LoRA): the pod links it under ``name``


@dataclass
class InsertionReport:
    applied: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    trigger_words: list[str] = field(default_factory=list)
    prompt_nodes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def merge(self, other: "InsertionReport", node_prefix: str = "") -> None:
        """Add what ``other`` (a stage whose node ids got ``node_prefix``) applied, skipped and said."""
        self.applied += [{**a, "source_node": node_prefix + a["source_node"]} for a in other.applied]
        self.skipped += other.skipped
        self.trigger_words = list(dict.fromkeys(self.trigger_words + other.trigger_words))
        self.prompt_nodes += [node_prefix + n for n in other.prompt_nodes]
        self.warnings += other.warnings


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _outputs(node: dict[str, Any], object_info: ObjectInfo | None) -> list[str]:
    info = (object_info or {}).get(node["class_type"])
    if info is not None:
        return [o if isinstance(o, str) else "COMBO" for o in info.get("output", [])]
    return KNOWN_OUTPUTS.get(node["class_type"], [])


def _input_types(node: dict[str, Any], object_info: ObjectInfo | None) -> dict[str, Any]:
    info = (object_info or {}).get(node["class_type"], {})
    types: dict[str, Any] = {}
    for section in ("required", "optional"):
        for name, spec in (info.get("input", {}).get(section) or {}).items():
            types[name] = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    if not info and node["class_type"] in LORA_LOADERS:  # no /object_info: only LoRA loaders take a MODEL
        types.update({"model": "MODEL", "clip": "CLIP"})
    return types


def _consumers(graph: Graph, ref: list[Any], skip: set[str]) -> list[tuple[str, str]]:
    return [(nid, key) for nid, node in graph.items() if nid not in skip
            for key, value in node.get("inputs", {}).items() if _is_link(value) and value == ref]


def strip_inserted(graph: Graph) -> Graph:
    """Remove nodes an earlier insertion added, wiring their consumers back to their inputs."""
    out = copy.deepcopy(graph)
    for nid in [k for k in out if k.startswith(PREFIX)]:
        node = out.pop(nid)
        ins = node.get("inputs", {})
        passed = ("string_b",) if node["class_type"] == TRIGGER_JOIN else ("model", "clip")
        for slot, key in enumerate(passed):
            for cid, ckey in _consumers(out, [nid, slot], set()):
                out[cid]["inputs"][ckey] = ins.get(key)
    return out


@dataclass
class _Source:
    node_id: str
    model: list[Any]  # end of the existing MODEL chain (after LoRA loaders already there)
    clip: list[Any] | None
    file: str


def _chain_end(graph: Graph, ref: list[Any], object_info: ObjectInfo | None) -> tuple[list[Any], list[Any] | None]:
    """Follow LoRA loaders already hanging off ``ref``; returns the last MODEL (and CLIP) output."""
    clip_ref = None
    while True:
        loaders = [nid for nid, key in _consumers(graph, ref, set())
                   if key == "model" and graph[nid]["class_type"] in LORA_LOADERS]
        if len(loaders) != 1:
            return ref, clip_ref
        nid = loaders[0]
        ref = [nid, 0]
        if "CLIP" in _outputs(graph[nid], object_info) and _is_link(graph[nid]["inputs"].get("clip")):
            clip_ref = [nid, 1]


def find_model_sources(graph: Graph, object_info: ObjectInfo | None = None) -> list[_Source]:
    """Every loader with a MODEL output (and no MODEL input), with the CLIP that goes with it."""
    clip_sources = []
    sources = []
    for nid, node in sorted(graph.items()):
        outs = _outputs(node, object_info)
        ins = _input_types(node, object_info)
        if "MODEL" in outs and "MODEL" not in ins.values() and node["class_type"] not in LORA_LOADERS:
            sources.append((nid, node, outs))
        elif "CLIP" in outs and "CLIP" not in ins.values() and node["class_type"] not in LORA_LOADERS:
            clip_sources.append([nid, outs.index("CLIP")])
    found = []
    for nid, node, outs in sources:
        model_ref, chained_clip = _chain_end(graph, [nid, outs.index("MODEL")], object_info)
        clip_ref = chained_clip or ([nid, outs.index("CLIP")] if "CLIP" in outs else None)
        if clip_ref is None and len(clip_sources) == 1:
            clip_ref = clip_sources[0]
        file = next((v for k, v in node["inputs"].items() if k.endswith("_name") and isinstance(v, str)), "")
        found.append(_Source(nid, model_ref, clip_ref, file))
    return found


def _targets(lora: LoraRequest, src: _Source) -> bool:
    if lora.source_nodes is not None:
        return src.node_id in lora.source_nodes
    if lora.targets:
        return any(t == src.node_id or (t and t in src.file) for t in lora.targets)
    return True


def _family_ok(lora: LoraRequest, graph_family: str | None) -> str | None:
    """None when compatible, else the reason."""
    if not lora.family or lora.family == "unknown" or not graph_family or graph_family == "unknown":
        return None
    if lora.family != graph_family:
        return (f"LoRA '{lora.name}' is {FAMILY_NAMES.get(lora.family, lora.family)}; the graph's model is "
                f"{FAMILY_NAMES.get(graph_family, graph_family)}")
    return None


def _stack_json(loras: list[LoraRequest]) -> str:
    return encode_stack([StackEntry(source=lora.source or lora.name, name=lora.name if lora.source else None,
                                    sha256=lora.sha256, strength_model=lora.strength_model,
                                    strength_clip=lora.strength_clip) for lora in loras])


def insert_loras(
    graph: Graph,
    loras: list[LoraRequest],
    object_info: ObjectInfo | None = None,
    mode: Literal["stock", "pack"] = "stock",
    graph_family: str | None = None,
    on_mismatch: Literal["refuse", "skip"] = "refuse",
    apply_mode: ApplyMode = "merge",
) -> tuple[Graph, InsertionReport]:
    """Return a new graph with ``loras`` applied in order to every targeted model, and a report.

    ``apply_mode`` is the pack node's ``mode`` (``hotswap``: no weight re-patching between jobs);
    stock mode always merges, as ComfyUI's own loader does.
    """
    out = strip_inserted(graph)
    report = InsertionReport()
    usable = []
    for lora in loras:
        reason = _family_ok(lora, graph_family)
        if reason:
            if on_mismatch == "refuse":
                raise InsertionError(reason)
            report.skipped.append({"name": lora.name, "reason": reason})
            continue
        usable.append(lora)
    if not usable:
        return out, report
    sources = find_model_sources(out, object_info)
    if not sources:
        raise InsertionError("the graph has no model loader to apply LoRAs to")
    for src in sources:
        chosen = [lora for lora in usable if _targets(lora, src)]
        if not chosen:
            continue
        model, clip = src.model, src.clip
        added: set[str] = set()
        if mode == "pack":
            nid = f"{PREFIX}{src.node_id}:stack"
            inputs: dict[str, Any] = {"model": model, "loras": _stack_json(chosen), "on_mismatch": "error", "mode": apply_mode}
            if clip is not None:
                inputs["clip"] = clip
            out[nid] = {"class_type": NODE_APPLY_STACK, "inputs": inputs}
            added.add(nid)
            new_model, new_clip = [nid, 0], ([nid, 1] if clip is not None else None)
        else:
            new_model, new_clip = model, clip
            for i, lora in enumerate(chosen):
                nid = f"{PREFIX}{src.node_id}:{i}"
                if new_clip is not None and lora.text_encoder:
                    out[nid] = {"class_type": "LoraLoader", "inputs": {
                        "model": new_model, "clip": new_clip, "lora_name": lora.name,
                        "strength_model": lora.strength_model, "strength_clip": lora.strength_clip}}
                    new_model, new_clip = [nid, 0], [nid, 1]
                else:
                    out[nid] = {"class_type": "LoraLoaderModelOnly", "inputs": {
                        "model": new_model, "lora_name": lora.name, "strength_model": lora.strength_model}}
                    new_model = [nid, 0]
                added.add(nid)
        for cid, key in _consumers(out, model, added):
            out[cid]["inputs"][key] = list(new_model)
        if clip is not None and new_clip is not None and new_clip != clip:
            for cid, key in _consumers(out, clip, added):
                out[cid]["inputs"][key] = list(new_clip)
        for lora in chosen:
            report.applied.append({"name": lora.name, "source_node": src.node_id, "strength_model": lora.strength_model,
                                   "strength_clip": lora.strength_clip if clip is not None else 0.0})
    triggers = list(dict.fromkeys(w for lora in usable for w in lora.trigger_words if w))
    if triggers and report.applied:
        add_trigger_words(out, triggers, object_info, report)
    return out, report


def _upstream_encoders(graph: Graph, ref: Any, object_info: ObjectInfo | None, seen: set[str]) -> set[str]:
    """Text-encoder nodes whose conditioning reaches ``ref``."""
    if not _is_link(ref) or ref[0] in seen or ref[0] not in graph:
        return set()
    seen.add(ref[0])
    node = graph[ref[0]]
    if node["class_type"] in ZEROING:
        return set()  # the zero-out erases whatever the encoder says: no text of it reaches here
    inputs = node.get("inputs", {})
    info = (object_info or {}).get(node["class_type"], {})
    names = info.get("output_name") or []
    out_name = names[ref[1]] if ref[1] < len(names) else None
    if "clip" in inputs and any(isinstance(inputs.get(k), str) or _is_link(inputs.get(k)) for k in PROMPT_INPUTS):
        # an encoder with its own negative output encodes that from its own negative input, which is never touched
        return set() if out_name == "negative" else {ref[0]}
    if out_name in ("positive", "negative") and out_name in inputs:  # e.g. WanImageToVideo
        return _upstream_encoders(graph, inputs[out_name], object_info, seen)
    found: set[str] = set()
    for key, value in inputs.items():
        if _is_link(value) and (key.startswith("conditioning") or key in ("positive", "cond")):
            found |= _upstream_encoders(graph, value, object_info, seen)
    return found


def add_trigger_words(graph: Graph, triggers: list[str], object_info: ObjectInfo | None, report: InsertionReport) -> None:
    """Prepend ``"{trigger}, "`` to the text of every encoder on a sampler's positive side, once.

    A prompt that only reaches a negative input is never touched. An encoder that feeds both sides
    (a CFG-1 graph) gets the words: both sides then carry the same text, as they did before. A
    prompt computed in the graph (a linked ``text``) gets a ``StringConcatenate`` in front of it.
    """
    positive: set[str] = set()
    for node in graph.values():
        inputs = node.get("inputs", {})
        if "positive" in inputs and _is_link(inputs["positive"]):
            positive |= _upstream_encoders(graph, inputs["positive"], object_info, set())
        if node["class_type"] in ("BasicGuider",) and _is_link(inputs.get("conditioning")):
            positive |= _upstream_encoders(graph, inputs["conditioning"], object_info, set())
    can_join = object_info is None or TRIGGER_JOIN in object_info
    for nid in sorted(positive):
        inputs = graph[nid]["inputs"]
        added = False
        for key in PROMPT_INPUTS:
            if isinstance(inputs.get(key), str):
                inputs[key] = with_trigger_words(inputs[key], triggers)
                added = True
            elif _is_link(inputs.get(key)) and can_join:  # text computed in the graph: join in front of it
                join_id = f"{PREFIX}trigger:{nid}:{key}"
                graph[join_id] = {"class_type": TRIGGER_JOIN, "_meta": {"title": "Trigger words (LoRA bridge)"},
                                  "inputs": {"string_a": ", ".join(triggers), "string_b": inputs[key], "delimiter": ", "}}
                inputs[key] = [join_id, 0]
                added = True
        if added:
            report.prompt_nodes.append(nid)
        else:
            report.warnings.append(f"prompt node {nid}: its text comes from the graph and the pod has no "
                                   f"{TRIGGER_JOIN} node: no trigger words added there")
    if report.prompt_nodes:
        report.trigger_words = triggers
