"""Build the graph a job submits: template or saved workflow + LoRAs + prompt, validated.

``build_graph`` accepts a template name with parameters, an API-format graph, or a
graph-editor workflow (converted with the pod's ``/object_info``), inserts the LoRAs
(stock ``LoraLoader`` or pack-mode ``Apply LoRA Stack``), prepends trigger words to the
positive prompt, and validates the result against ``/object_info``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .convert import WorkflowError, is_ui_workflow, ui_to_api
from .lora_insertion import InsertionReport, LoraRequest, insert_loras
from .templates import load_template
from .validate import validate_graph

Graph = dict[str, dict[str, Any]]


@dataclass
class BuiltGraph:
    graph: Graph
    report: InsertionReport
    family: str | None


def build_graph(
    object_info: dict[str, Any],
    template: str | None = None,
    params: dict[str, Any] | None = None,
    workflow: dict[str, Any] | None = None,
    loras: list[LoraRequest] | None = None,
    mode: Literal["stock", "pack"] = "stock",
    family: str | None = None,
    on_mismatch: Literal["refuse", "skip"] = "refuse",
    apply_mode: Literal["merge", "hotswap"] = "hotswap",
) -> BuiltGraph:
    """One of ``template`` (+ ``params``) or ``workflow``; returns the validated graph and what was applied."""
    if (template is None) == (workflow is None):
        raise WorkflowError("give exactly one of a template name or a workflow")
    if template is not None:
        tpl = load_template(template)
        graph = tpl.render(**(params or {}))
        family = family or tpl.family
    else:
        if not isinstance(workflow, dict):
            raise WorkflowError("the workflow must be a JSON object")
        graph = ui_to_api(workflow, object_info) if is_ui_workflow(workflow) else workflow
    graph, report = insert_loras(graph, loras or [], object_info, mode, family, on_mismatch, apply_mode)
    validate_graph(graph, object_info)
    return BuiltGraph(graph, report, family)
