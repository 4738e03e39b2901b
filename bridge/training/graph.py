"""The training graph: a ``kind: training`` template from ``workflows/``, fitted to the pod's ComfyUI.

ComfyUI's training nodes change between versions (0.3.75's ``TrainLoraNode`` has four outputs,
model first; later ones drop the model output and add inputs). So the template links outputs by
*name* (``["6", "lora"]``), resolved here against the pod's ``/object_info``, and every required
input the template leaves out is given the pod's own default. Nothing is assumed about a version.
"""

from __future__ import annotations

from typing import Any

from ..graphs.templates import TemplateError, load_template
from ..graphs.validate import Graph, GraphInvalid, split_spec, validate_graph

TRAINING_NODES = ("LoadImageTextDataSetFromFolder", "MakeTrainingDataset", "TrainLoraNode")


def check_training_support(object_info: dict[str, Any]) -> None:
    """``GraphInvalid`` naming the nodes a pod lacks for training (an older ComfyUI)."""
    missing = [name for name in (*TRAINING_NODES, "LoraBridgeSaveTrainedLora") if name not in object_info]
    if missing:
        raise GraphInvalid([f"the pod cannot train: its ComfyUI has no {', '.join(missing)} node(s)"], pod_facts=True)


def fit_to_pod(graph: Graph, object_info: dict[str, Any]) -> Graph:
    """``graph`` with named output links turned into indices and missing required inputs given the
    pod's defaults; ``GraphInvalid`` for a name the pod's node does not have."""
    errors: list[str] = []
    out: Graph = {}
    for node_id, node in graph.items():
        info = object_info.get(node["class_type"], {})
        inputs = dict(node["inputs"])
        for name, value in inputs.items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], str):
                src_cls = str(graph.get(value[0], {}).get("class_type"))
                names = list(object_info.get(src_cls, {}).get("output_name") or [])
                if value[1] not in names:
                    errors.append(f"node {node_id} input '{name}': node {value[0]} ({src_cls}) has no output "
                                  f"{value[1]!r} on this pod (it has {names})")
                    continue
                inputs[name] = [value[0], names.index(value[1])]
        for name, spec in (info.get("input", {}).get("required") or {}).items():
            if name not in inputs:
                kind, opts = split_spec(spec)
                if "default" in opts:
                    inputs[name] = opts["default"]
                elif isinstance(kind, list) and kind:
                    inputs[name] = kind[0]
        out[node_id] = {**node, "inputs": inputs}
    if errors:
        raise GraphInvalid(errors)
    return out


def training_graph(template: str, params: dict[str, Any], object_info: dict[str, Any]) -> Graph:
    """Render the training template ``template`` with ``params`` and fit it to the pod (validated)."""
    tpl = load_template(template)
    if tpl.kind != "training":
        raise TemplateError(f"template '{template}' is not a training template")
    check_training_support(object_info)
    graph = fit_to_pod(tpl.render(**params), object_info)
    validate_graph(graph, object_info)
    return graph
