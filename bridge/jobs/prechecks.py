"""What is checked against the pods before a job is stored, so a graph they would refuse costs no pod time:
the graph against a pod's node list, and its LoRA assets against the models it loads (a pack pod
describes each model file, ``/lora_bridge/models/info``: the family ComfyUI detects; a LoRA made for
another family is refused naming both)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from ..errors import PodError
from ..graphs.asset_refs import find_references, model_files
from ..graphs.validate import GraphInvalid, validate_graph
from ..lorafiles.families import FAMILY_NAMES
from ..pack_protocol import ROUTE_MODEL_INFO
from ..pods.pool import PodPool
from .planner import Plan


async def check_model_families(pool: PodPool, plan: Plan) -> None:
    """``GraphInvalid`` when a LoRA asset's family differs from that of a model the graph loads. Without a
    healthy pack pod to ask, or for a model it cannot describe, nothing is refused here (the pod's own
    loader reports a mismatch when the job runs)."""
    workflow = plan.request.workflow
    loras = [lora for lora in (plan.assets.loras if plan.assets else []) if lora.family not in (None, "unknown")]
    if not loras or workflow is None:
        return
    pod = next((p for p in await pool.refresh() if p.healthy and p.pack), None)
    if pod is None:
        return
    errors = []
    async with pool.client(pod, timeout=60) as client:
        for node, folder, name in model_files(workflow):
            try:
                model = await client.get_json(f"{ROUTE_MODEL_INFO}?{urlencode({'folder': folder, 'name': name})}")
            except PodError:
                continue  # not on this pod: the graph's validation names it
            family = model.get("family")
            if family in (None, "unknown"):
                continue
            for lora in loras:
                if lora.family != family:
                    errors.append(f"LoRA {lora.name} is {FAMILY_NAMES.get(str(lora.family), lora.family)}; the model "
                                  f"{name} (node {node}) is {model.get('family_name') or FAMILY_NAMES.get(family, family)}")
    if errors:
        raise GraphInvalid(errors)


async def validate_on_pod(pool: PodPool, workflow: dict[str, Any]) -> None:
    """The graph checked against a healthy pod's node list (classes, inputs, links, values; asset references
    are placed later): ``GraphInvalid`` per node, before the job is stored. A class the pod may have gained
    since its list was read is re-read once. Without a healthy pod the check waits for the run."""
    pod = next((p for p in await pool.refresh() if p.healthy and p.pack), None) \
        or next((p for p in pool.status.values() if p.healthy), None)
    if pod is None:
        return
    skip = frozenset((ref.node, ref.input) for ref in find_references(workflow))
    try:
        validate_graph(workflow, pod.object_info, skip)
    except GraphInvalid as exc:
        if not exc.pod_facts:
            raise
        await pool.refresh_facts(pod)
        validate_graph(workflow, pod.object_info, skip)
