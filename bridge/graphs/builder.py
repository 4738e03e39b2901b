"""Build the graph a job submits: template or saved workflow + LoRAs + prompt, validated.

``build_graph`` accepts a template name with parameters, an API-format graph, or a
graph-editor workflow (converted with the pod's ``/object_info``), inserts the LoRAs
(stock ``LoraLoader`` or pack-mode ``Apply LoRA Stack``), prepends trigger words to the
positive prompt, and validates the result against ``/object_info``. With a ``KeyFrame`` the
graph is a pre-processed video: the key frame's image template, with its own LoRAs, feeds the
image-to-video template's start image (``key_frame.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..pack_protocol import ApplyMode
from .convert import WorkflowError, is_ui_workflow, ui_to_api
from .key_frame import KEY_FRAME_PREFIX, attach_key_frame
from .lora_insertion import InsertionReport, LoraRequest, insert_loras
from .templates import Template, load_template
from .validate import validate_graph

Graph = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class KeyFrame:
    """The image stage of a pre-processed video: an image template drawn with its LoRAs."""

    template: Template
    params: dict[str, Any] = field(default_factory=dict)
    loras: list[LoraRequest] = field(default_factory=list)


@dataclass
class BuiltGraph:
    graph: Graph
    report: InsertionReport
    family: str | None


def build_graph(
    object_info: dict[str, Any],
    template: str | Template | None = None,
    params: dict[str, Any] | None = None,
    workflow: dict[str, Any] | None = None,
    loras: list[LoraRequest] | None = None,
    mode: Literal["stock", "pack"] = "stock",
    family: str | None = None,
    on_mismatch: Literal["refuse", "skip"] = "refuse",
    apply_mode: ApplyMode = "auto",
    key_frame: KeyFrame | None = None,
) -> BuiltGraph:
    """One of ``template`` (+ ``params``) or ``workflow``; returns the validated graph and what was
    applied (with a ``key_frame``: to both stages). A template is given by name or as loaded."""
    if (template is None) == (workflow is None):
        raise WorkflowError("give exactly one of a template name or a workflow")
    if template is not None:
        tpl = template if isinstance(template, Template) else load_template(template)
        graph = tpl.render(**(params or {}))
        family = family or tpl.family
    else:
        if not isinstance(workflow, dict):
            raise WorkflowError("the workflow must be a JSON object")
        graph = ui_to_api(workflow, object_info) if is_ui_workflow(workflow) else workflow
    graph, report = insert_loras(graph, loras or [], object_info, mode, family, on_mismatch, apply_mode)
    if key_frame is not None:
        tpl = key_frame.template
        image, image_report = insert_loras(tpl.render(**key_frame.params), key_frame.loras, object_info, mode,
                                           tpl.family, on_mismatch, apply_mode)
        graph = attach_key_frame(graph, image)
        report.merge(image_report, node_prefix=KEY_FRAME_PREFIX)
    validate_graph(graph, object_info)
    return BuiltGraph(graph, report, family)
