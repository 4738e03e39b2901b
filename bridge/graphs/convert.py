"""Graph-editor workflows (what ComfyUI's editor saves) to API-format graphs.

Uses the pod's ``/object_info`` to know each node's inputs in order and which are widgets.
Handles links, ``widgets_values`` (with the extra ``control_after_generate`` and upload
entries), reroutes, primitive nodes, muted (removed) and bypassed (passed through, by the editor's own
slot rule) nodes, notes and groups (dropped), converted widgets fed by links, and subgraphs from
``definitions.subgraphs`` (flattened; inner nodes get ids like ``"75:37"`` as the editor does; a
muted or bypassed subgraph instance is removed or passed through as a whole, like any node).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from ..errors import LoraBridgeError
from ..pack_protocol import describe_validation_error
from .validate import is_dynamic_type, split_spec

Graph = dict[str, dict[str, Any]]
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
VIRTUAL = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode", "PrimitiveString", "Label (rgthree)"}
MUTED, BYPASSED = 2, 4
SUBGRAPH_INPUT, SUBGRAPH_OUTPUT = -10, -20


class WorkflowError(LoraBridgeError):
    """The workflow cannot be converted (unknown node type, broken link, malformed JSON)."""


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")  # the editor saves much more than conversion reads


NodeId = Union[StrictInt, StrictStr]


class _Slot(_Open):
    name: StrictStr
    link: StrictInt | None = None
    type: Any = None


class _LinkObject(_Open):
    id: StrictInt
    origin_id: NodeId
    origin_slot: StrictInt
    target_id: NodeId
    target_slot: StrictInt


_LinkArray = Annotated[list[Any], Field(min_length=6)]


class _EditorNode(_Open):
    id: NodeId
    type: StrictStr = ""
    mode: StrictInt | None = 0
    inputs: list[_Slot] | None = None
    outputs: list[dict[str, Any]] | None = None
    widgets_values: list[Any] | dict[str, Any] | None = None
    title: StrictStr | None = None
    properties: dict[str, Any] | None = None


class _Scope(_Open):
    nodes: list[_EditorNode]
    links: list[_LinkObject | _LinkArray] | None = None


class _Subgraph(_Scope):
    id: StrictStr
    inputs: list[dict[str, Any]] = []


class _Definitions(_Open):
    subgraphs: list[_Subgraph] = []


class EditorWorkflow(_Scope):
    """What conversion reads of an editor workflow, typed (everything else is kept and ignored)."""

    definitions: _Definitions | None = None


def check_editor_workflow(workflow: dict[str, Any]) -> None:
    """Refuse an editor workflow whose structure conversion cannot read (``WorkflowError`` naming the place)."""
    try:
        EditorWorkflow.model_validate(workflow)
    except ValidationError as exc:
        raise WorkflowError(f"malformed workflow: {describe_validation_error(exc)}") from None


def is_ui_workflow(data: Any) -> bool:
    """True for the editor's format (``nodes`` + ``links`` lists), False for API format."""
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


# A source of an input value: ("node", flat_id, slot) or ("value", v) or None (nothing connected).
Source = tuple[Any, ...] | None


@dataclass
class _Node:
    id: str
    type: str
    mode: int
    inputs: list[dict[str, Any]]  # editor input slots: name, type, link, widget
    outputs: list[dict[str, Any]]
    widgets_values: Any
    title: str | None
    sources: dict[str, Source] = field(default_factory=dict)  # input name -> resolved source


def _links_table(links: list[Any]) -> dict[int, tuple[int, int, str]]:
    table = {}
    for link in links or []:
        if isinstance(link, dict):
            table[link["id"]] = (link["origin_id"], link["origin_slot"], link.get("type", "*"))
        elif isinstance(link, list) and len(link) >= 6:
            table[link[0]] = (link[1], link[2], link[5])
        else:
            raise WorkflowError(f"malformed link {link!r}")
    return table


class _Flattener:
    def __init__(self, workflow: dict[str, Any]) -> None:
        defs = (workflow.get("definitions") or {}).get("subgraphs") or []
        self.subgraphs = {sg["id"]: sg for sg in defs if isinstance(sg, dict) and "id" in sg}
        self.nodes: dict[str, _Node] = {}
        self.depth = 0

    def flatten(self, nodes: list[dict[str, Any]], links: list[Any], prefix: str, bindings: list[Source]) -> list[Source]:
        """Add this scope's nodes; returns the sources feeding the scope's outputs (for subgraphs)."""
        self.depth += 1
        if self.depth > 16:
            raise WorkflowError("subgraphs nested too deeply (or recursive)")
        table = _links_table(links)
        by_id = {n["id"]: n for n in nodes}
        instance_outputs: dict[tuple[int, int], Source] = {}

        def resolve(link_id: int | None) -> Source:
            if link_id is None:
                return None
            if link_id not in table:
                raise WorkflowError(f"link {link_id} is referenced but not defined")
            origin, slot, _ = table[link_id]
            if origin == SUBGRAPH_INPUT:
                return bindings[slot] if slot < len(bindings) else None
            if (origin, slot) in instance_outputs:
                return instance_outputs[(origin, slot)]
            if origin not in by_id:
                raise WorkflowError(f"link {link_id} comes from missing node {origin}")
            return ("node", f"{prefix}{origin}", slot)

        # active subgraph instances first (in dependency order), so links from their outputs resolve;
        # a muted or bypassed instance stays one node (the editor neither expands nor runs its inside)
        pending = [n for n in nodes if n.get("type") in self.subgraphs and not _inactive(n)]
        while pending:
            progressed = False
            for node in list(pending):
                deps = [table[i["link"]][0] for i in node.get("inputs", []) if i.get("link") in table]
                if any(d in {p["id"] for p in pending} for d in deps):
                    continue
                sg = self.subgraphs[node["type"]]
                inner_bindings = self._instance_bindings(node, sg, resolve)
                outs = self.flatten(sg.get("nodes", []), sg.get("links", []), f"{prefix}{node['id']}:", inner_bindings)
                for j, src in enumerate(outs):
                    instance_outputs[(node["id"], j)] = src
                pending.remove(node)
                progressed = True
            if not progressed:
                raise WorkflowError("subgraph instances depend on each other in a cycle")
        for node in nodes:
            if node.get("type") in self.subgraphs and not _inactive(node):
                continue
            flat = _Node(f"{prefix}{node['id']}", node.get("type", ""), node.get("mode", 0) or 0,
                         node.get("inputs", []) or [], node.get("outputs", []) or [], node.get("widgets_values"),
                         node.get("title"))
            for slot in flat.inputs:
                flat.sources[slot["name"]] = resolve(slot.get("link"))
            self.nodes[flat.id] = flat
        outputs: list[Source] = []
        if prefix:  # a subgraph: what feeds its output node
            out_links = {}
            for link in links or []:
                target = link["target_id"] if isinstance(link, dict) else link[3]
                if target == SUBGRAPH_OUTPUT:
                    out_links[link["target_slot"] if isinstance(link, dict) else link[4]] = link["id"] if isinstance(link, dict) else link[0]
            outputs = [resolve(out_links.get(j)) for j in range(max(out_links, default=-1) + 1)]
        self.depth -= 1
        return outputs

    @staticmethod
    def _instance_bindings(node: dict[str, Any], sg: dict[str, Any], resolve: Any) -> list[Source]:
        """Sources for a subgraph's inputs: the instance's links, else its promoted widget values."""
        linked = {i["name"]: resolve(i.get("link")) for i in node.get("inputs", []) if i.get("link") is not None}
        values = node.get("widgets_values") or []
        proxies = (node.get("properties") or {}).get("proxyWidgets") or []
        promoted = {}
        for k, pair in enumerate(proxies):
            if isinstance(pair, list) and len(pair) == 2 and str(pair[0]) == "-1" and k < len(values):
                promoted[pair[1]] = ("value", values[k])
        bindings: list[Source] = []
        for sg_input in sg.get("inputs", []):
            name = sg_input.get("name")
            bindings.append(linked.get(name) or promoted.get(name))
        return bindings


def _inactive(node: dict[str, Any]) -> bool:
    return (node.get("mode") or 0) in (MUTED, BYPASSED)


def _connectable(a: Any, b: Any) -> bool:
    """The editor's ``isValidConnection``: wildcards match anything, ``"A,B"`` lists must overlap."""
    if a in (None, "", "*") or b in (None, "", "*"):
        return True
    return bool(set(str(a).upper().split(",")) & set(str(b).upper().split(",")))


def _bypass_input(node: _Node, slot: int, target_type: Any) -> dict[str, Any] | None:
    """The input a bypassed node passes to output ``slot`` for a consumer of ``target_type``.

    The graph editor's rule (``ExecutableNodeDTO._getBypassSlotIndex``): a wildcard consumer
    takes the same-index input (else the first); otherwise the same-index input if it fits both
    the output's and the consumer's type, else the first input of exactly the consumer's type,
    else the first that fits both; else nothing passes.
    """
    inputs = node.inputs
    if not inputs:
        return None
    if target_type in (None, "", "*"):
        return inputs[slot] if slot < len(inputs) else inputs[0]
    out_type = node.outputs[slot].get("type") if slot < len(node.outputs) else None
    fits = [inp for inp in inputs
            if _connectable(inp.get("type"), out_type) and _connectable(inp.get("type"), target_type)]
    if slot < len(inputs) and inputs[slot] in fits:
        return inputs[slot]
    exact = [inp for inp in inputs if inp.get("type") == target_type]
    return next(iter(exact or fits), None)


def _spec_inputs(info: dict[str, Any]) -> list[tuple[str, Any, dict[str, Any]]]:
    out = []
    for section in ("required", "optional"):
        for name, spec in (info.get("input", {}).get(section) or {}).items():
            kind, opts = split_spec(spec)
            out.append((name, kind, opts))
    return out


def _is_widget(kind: Any, opts: dict[str, Any]) -> bool:
    if opts.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _widget_values(node: _Node, info: dict[str, Any]) -> dict[str, Any]:
    values = node.widgets_values
    if isinstance(values, dict):
        return dict(values)
    values = list(values or [])
    out: dict[str, Any] = {}
    i = 0
    for name, kind, opts in _spec_inputs(info):
        if not _is_widget(kind, opts):
            continue
        if i < len(values):
            out[name] = values[i]
        i += 1
        if opts.get("control_after_generate") or (kind == "INT" and name in ("seed", "noise_seed") and i < len(values)
                                                   and values[i] in ("fixed", "increment", "decrement", "randomize")):
            i += 1  # the editor stores the control_after_generate choice after the value
        if opts.get("image_upload") or opts.get("video_upload") or opts.get("audio_upload"):
            i += 1  # the upload button's entry
    return out


def ui_to_api(workflow: dict[str, Any], object_info: dict[str, Any]) -> Graph:
    """Convert an editor workflow to API format (raises ``WorkflowError`` with the node at fault)."""
    if not is_ui_workflow(workflow):
        raise WorkflowError("not a graph-editor workflow (expected 'nodes' and 'links')")
    check_editor_workflow(workflow)
    flat = _Flattener(workflow)
    flat.flatten(workflow["nodes"], workflow.get("links", []), "", [])
    nodes = flat.nodes

    def real_source(src: Source, target_type: Any, seen: frozenset[str] = frozenset()) -> Source:
        """Follow reroutes, primitives and bypassed nodes to a real node output or a value.

        ``target_type`` is the type of the input being fed, which decides a bypassed node's pass-through.
        """
        if src is None or src[0] == "value":
            return src
        _, node_id, slot = src
        if node_id in seen:
            raise WorkflowError(f"cycle through node {node_id}")
        node = nodes.get(node_id)
        if node is None:
            return None
        if node.type == "Reroute":
            return real_source(next(iter(node.sources.values()), None), target_type, seen | {node_id})
        if node.type.startswith("Primitive"):
            values = node.widgets_values or []
            return ("value", values[0] if isinstance(values, list) and values else values)
        if node.mode == MUTED:
            return None
        if node.mode == BYPASSED:
            passed = _bypass_input(node, slot, target_type)
            return None if passed is None else real_source(node.sources.get(passed["name"]), target_type, seen | {node_id})
        return src

    graph: Graph = {}
    for node in nodes.values():
        if node.type in VIRTUAL or node.type.startswith("Primitive") or node.mode in (MUTED, BYPASSED):
            continue
        info = object_info.get(node.type)
        if info is None:
            if not node.inputs and not node.outputs:
                continue  # a decoration (group label, note) from another pack
            raise WorkflowError(f"node {node.id}: type {node.type!r} is not installed on the pod")
        inputs = _widget_values(node, info)
        slot_types = {slot["name"]: slot.get("type") for slot in node.inputs}
        for name, src in node.sources.items():
            resolved = real_source(src, slot_types.get(name))
            if resolved is None:
                continue
            inputs[name] = resolved[1] if resolved[0] == "value" else [resolved[1], resolved[2]]
        specs = _spec_inputs(info)
        known = {name for name, _, _ in specs}
        grown = tuple(f"{name}." for name, kind, _ in specs if is_dynamic_type(kind))
        # a V3 dynamic input (autogrow, dynamic combo) is sent as its own "name.sub" inputs
        entry: dict[str, Any] = {"class_type": node.type,
                                 "inputs": {k: v for k, v in inputs.items() if k in known or k.startswith(grown or ("\0",))}}
        if node.title:
            entry["_meta"] = {"title": node.title}
        graph[node.id] = entry
    return _drop_unreachable(graph, object_info)


def _drop_unreachable(graph: Graph, object_info: dict[str, Any]) -> Graph:
    """Keep only nodes that feed an output node (as ComfyUI itself would execute)."""
    outputs = [k for k, n in graph.items() if object_info.get(n["class_type"], {}).get("output_node")]
    keep: set[str] = set()
    stack = list(outputs)
    while stack:
        node_id = stack.pop()
        if node_id in keep or node_id not in graph:
            continue
        keep.add(node_id)
        for value in graph[node_id]["inputs"].values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                stack.append(value[0])
    return {k: v for k, v in graph.items() if k in keep}
