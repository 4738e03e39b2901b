"""Validate an API-format graph against a pod's ``/object_info`` before submitting it.

Every class exists, required inputs are present, links point at existing outputs of the
right type, values have the right type and lie within range or among the choices (so a
stock-mode LoRA file missing on the pod is caught here). Errors name node and input.

The rule: what ``/object_info`` states is checked, and a graph it proves wrong is refused with
the reason; what it cannot state is left to the pod's own ``/prompt`` validation. That is
the nodes with an input of ComfyUI's dynamic V3 types (``COMFY_*_V3``: match-type, dynamic
combo, autogrow) or a socketless widget, whose final inputs ComfyUI derives from the values
sent: for them only the class and the link sources are checked, and a link to or from a
dynamic type matches any type.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import LoraBridgeError

Graph = dict[str, dict[str, Any]]
_DYNAMIC = re.compile(r"^COMFY_\w+_V3$")


def is_dynamic_type(kind: Any) -> bool:
    """A V3 dynamic type (match-type, dynamic combo, autogrow) whose inputs only the pod can finalize."""
    return isinstance(kind, str) and bool(_DYNAMIC.match(kind))


def split_spec(spec: Any) -> tuple[Any, dict[str, Any]]:
    """An ``/object_info`` input spec as (type, options)."""
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    opts = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    return kind, opts


def _finalized_by_pod(spec: Any) -> bool:
    kind, opts = split_spec(spec)
    return is_dynamic_type(kind) or bool(opts.get("socketless"))


class GraphInvalid(LoraBridgeError):
    """The graph would be refused; ``errors`` lists one line per problem. ``pod_facts`` is true when
    a problem may come from stale pod facts (a class or a choice, such as a file, the pod may have gained)."""

    def __init__(self, errors: list[str], pod_facts: bool = False) -> None:
        super().__init__("invalid graph: " + "; ".join(errors[:20]) + (f"; … {len(errors) - 20} more" if len(errors) > 20 else ""))
        self.errors = errors
        self.pod_facts = pod_facts


def _types_match(out_type: str, in_type: Any) -> bool:
    if out_type == "*" or in_type == "*" or is_dynamic_type(out_type) or is_dynamic_type(in_type):
        return True
    if isinstance(in_type, list):  # a combo fed by a link: from a string/combo output
        return out_type in ("COMBO", "STRING", "*") or isinstance(out_type, list)
    accepted = {t.strip() for t in str(in_type).split(",")}
    return bool({t.strip() for t in str(out_type).split(",")} & accepted)


def _check_value(where: str, kind: Any, opts: dict[str, Any], value: Any) -> str | None:
    if kind == "*":
        return None  # an any-type input takes constants too, as ComfyUI does
    if isinstance(kind, str) and "," in kind:  # e.g. "FLOAT,INT": any of them will do
        problems = [_check_value(where, k.strip(), opts, value) for k in kind.split(",")]
        return None if None in problems else problems[0]
    if isinstance(kind, list) or kind == "COMBO":
        choices = kind if isinstance(kind, list) else opts.get("options", [])
        if choices and value not in choices:
            shown = ", ".join(map(str, choices[:8])) + (", …" if len(choices) > 8 else "")
            return f"{where}: {value!r} is not one of the pod's choices ({shown})"
        return None
    if kind == "INT":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{where}: expected an integer, got {value!r}"
    elif kind == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{where}: expected a number, got {value!r}"
    elif kind == "STRING":
        return None if isinstance(value, str) else f"{where}: expected a string, got {type(value).__name__}"
    elif kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{where}: expected true or false, got {value!r}"
    else:
        return f"{where}: a {kind} input must be linked to another node's output"
    lo, hi = opts.get("min"), opts.get("max")
    if lo is not None and value < lo or hi is not None and value > hi:
        return f"{where}: {value} is outside [{lo}, {hi}]"
    return None


def validate_graph(graph: Graph, object_info: dict[str, Any], skip: frozenset[tuple[str, str]] = frozenset()) -> None:
    """Raise ``GraphInvalid`` listing every problem found (nothing is raised for a valid graph); the values of
    the (node, input) pairs in ``skip`` are left unchecked (asset references, named by the pod only later)."""
    errors: list[str] = []
    pod_facts = False
    if not isinstance(graph, dict) or not graph:
        raise GraphInvalid(["the graph is empty or not an object"])
    for node_id, node in graph.items():
        if not isinstance(node, dict) or not isinstance(node.get("inputs", {}), dict):
            errors.append(f"node {node_id}: not an object with 'class_type' and 'inputs'")
            continue
        cls = node.get("class_type")
        info = object_info.get(cls) if isinstance(cls, str) else None
        if info is None:
            errors.append(f"node {node_id}: class {cls!r} does not exist on the pod")
            pod_facts = True
            continue
        inputs = node.get("inputs", {})
        sections = info.get("input", {})
        specs = {**(sections.get("optional") or {}), **(sections.get("required") or {})}
        finalized_by_pod = any(_finalized_by_pod(spec) for spec in specs.values())
        for name in sections.get("required") or {}:
            if name not in inputs and not finalized_by_pod:
                errors.append(f"node {node_id} ({cls}) input '{name}': required but missing")
        for name, value in inputs.items():
            spec = specs.get(name)
            if spec is None:
                continue  # extra inputs are ignored by ComfyUI too
            kind, opts = split_spec(spec)
            where = f"node {node_id} ({cls}) input '{name}'"
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int):
                src = graph.get(value[0])
                if src is None:
                    errors.append(f"{where}: linked to missing node {value[0]}")
                    continue
                outs = object_info.get(str(src.get("class_type")), {}).get("output", [])
                if value[1] >= len(outs):
                    errors.append(f"{where}: node {value[0]} has no output {value[1]}")
                elif not _types_match(outs[value[1]] if isinstance(outs[value[1]], str) else "COMBO", kind):
                    errors.append(f"{where}: expects {kind}, linked to a {outs[value[1]]} output of node {value[0]}")
                continue
            if finalized_by_pod or (str(node_id), name) in skip:
                continue  # the pod derives this node's inputs from the values sent; an asset is placed later
            problem = _check_value(where, kind, opts, value)
            if problem:
                errors.append(problem)
                pod_facts = pod_facts or isinstance(kind, list) or kind == "COMBO"
    if errors:
        raise GraphInvalid(errors, pod_facts)
