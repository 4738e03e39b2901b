"""The pack's nodes on ComfyUI's V3 node schema keep the contract of the first node API: what the editor and
API graphs see in ``/object_info`` (ids, inputs in order, widgets and their bounds, outputs, tooltips), and a
workflow the graph editor saved with the first-API pack loads and runs, giving the stock loader's image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from comfyui_lora_bridge.bridge.graphs.convert import ui_to_api
from comfyui_lora_bridge.bridge.graphs.lora_insertion import LoraRequest
from support import LORA_FILES, image_of, node_text, pod_object_info, run_graph, stock, txt2img

pytestmark = pytest.mark.comfy

SAVED = Path(__file__).parent / "saved"
CONTRACT = ("name", "display_name", "description", "category", "output_node", "input", "input_order", "output",
            "output_name", "output_is_list", "output_tooltips")
FILE_LISTS = {("LoraBridgeLoadFile", "lora_name")}  # the pod's files: whatever is in its folders today


def _spec(node: str, name: str, spec: list[Any]) -> tuple[str, dict[str, Any]]:
    """One input as the editor reads it, in one spelling: the first API writes a combo as its list of options,
    V3 as ``["COMBO", {"options": …}]``; options that are off (false, empty) say nothing either way."""
    kind, opts = spec[0], dict(spec[1]) if len(spec) > 1 else {}
    if isinstance(kind, list):
        kind, opts = "COMBO", {**opts, "options": kind}
    if (node, name) in FILE_LISTS:
        opts.pop("options", None)
    return kind, {key: value for key, value in opts.items() if value not in (False, None, "")}


def contract(object_info: dict[str, Any]) -> dict[str, Any]:
    """The pack's nodes as the editor and API graphs see them (hidden inputs have no widget and no socket)."""
    out = {}
    for node, info in object_info.items():
        if not node.startswith("LoraBridge"):
            continue
        entry = {key: info.get(key) for key in CONTRACT}
        entry["input"] = {section: {name: _spec(node, name, spec) for name, spec in info["input"].get(section, {}).items()}
                          for section in ("required", "optional")}
        entry["input_order"] = {section: info["input_order"].get(section, []) for section in ("required", "optional")}
        entry["output_tooltips"] = [tip or None for tip in info.get("output_tooltips") or [None] * len(info["output"])]
        out[node] = entry
    return out


def test_the_v3_nodes_keep_the_first_api_contract(comfy) -> None:
    saved = json.loads((SAVED / "pack_object_info_first_api.json").read_text())
    now = pod_object_info(comfy)
    assert set(contract(saved)) == set(contract(now)) == {
        "LoraBridgeFetch", "LoraBridgeLoadFile", "LoraBridgeApply", "LoraBridgeApplyStack", "LoraBridgeTriggerWords",
        "LoraBridgeSaveTrainedLora"}
    for node, before in contract(saved).items():
        assert contract(now)[node] == before, node


def test_a_workflow_saved_with_the_first_api_pack_runs(comfy) -> None:
    """Load LoRA File -> Apply LoRA (0.8) -> Apply LoRA Stack (second LoRA, 0.5), Fetch LoRA -> Trigger Words ->
    the prompt: the image of two stock loaders and the prompt with the trigger word written out."""
    workflow = json.loads((SAVED / "editor_workflow_first_api.json").read_text())
    graph = ui_to_api(workflow, pod_object_info(comfy))
    result = run_graph(comfy, graph)
    expected = stock(txt2img(prompt="zwx, a portrait", seed=1234),
                     [LoraRequest(LORA_FILES["kohya"], 0.8, 0.8), LoraRequest(LORA_FILES["kohya_b"], 0.5, 0.5)])
    assert (image_of(result) == image_of(run_graph(comfy, expected))).all()
    assert node_text(result, "14")[0] == "zwx, a portrait"
