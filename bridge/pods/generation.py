"""One generation end to end: LoRA requests described, graph built per pod, run on the pool, outputs saved."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from ..graphs.asset_refs import Placement, check_places, place
from ..graphs.builder import KeyFrame, build_graph
from ..graphs.lora_insertion import InsertionReport, LoraRequest
from ..graphs.templates import Template
from ..lorafiles.inspect import inspect_source
from ..lorafiles.sources import FetchPolicy
from ..pack_protocol import ApplyMode
from .client import EventCallback, FileCallback, OutputFile
from .pool import PodPool, PodStatus

_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def parse_lora_arg(text: str) -> tuple[str, float, float]:
    """``SOURCE[:model[:clip]]`` (sources may contain ':' themselves, e.g. ``s3://``)."""
    parts = text.rsplit(":", 2)
    if len(parts) == 3 and _NUMBER.match(parts[1]) and _NUMBER.match(parts[2]):
        return parts[0], float(parts[1]), float(parts[2])
    parts = text.rsplit(":", 1)
    if len(parts) == 2 and _NUMBER.match(parts[1]):
        return parts[0], float(parts[1]), float(parts[1])
    return text, 1.0, 1.0


def describe_lora(source: str, strength_model: float, strength_clip: float, sha256: str | None = None,
                  policy: FetchPolicy | None = None) -> LoraRequest:
    """A ``LoraRequest`` for a remote source (inspected by its header: family, trigger words) or a pod file name."""
    if "://" not in source:
        return LoraRequest(source, strength_model, strength_clip)
    info = inspect_source(source, policy, with_hash=False)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(source.split("?", 1)[0]).stem)[:100] or "lora"
    return LoraRequest(name, strength_model, strength_clip, source=source, sha256=sha256, family=info.family,
                       text_encoder=any(t.startswith("text_encoder") for t in info.targets),
                       trigger_words=tuple(info.trigger_words[:1]))


@dataclass
class JobOutcome:
    prompt_id: str
    pod: str
    files: list[OutputFile]
    report: InsertionReport
    saved: list[Path] = field(default_factory=list)


async def run_generation(pool: PodPool, loras: list[LoraRequest], template: str | Template | None = None,
                         params: dict[str, Any] | None = None, workflow: dict[str, Any] | None = None,
                         out_dir: Path | None = None, on_event: EventCallback | None = None,
                         apply_mode: ApplyMode = "auto", family: str | None = None,
                         on_built: Callable[[InsertionReport], Awaitable[None] | None] | None = None,
                         request_id: str | None = None, key_frame: KeyFrame | None = None,
                         placements: list[Placement] | None = None, placed_loras: list[LoraRequest] | None = None,
                         inputs: dict[str, str] | None = None, read: Callable[[str], Awaitable[bytes]] | None = None,
                         on_file: FileCallback | None = None) -> JobOutcome:
    """Build the graph for whichever pod the pool picks (pack or stock mode), run it, save outputs.

    ``on_built`` sees what will be applied as soon as a pod's graph is built; ``request_id``
    names the pod-side prefetches (so they can be cancelled). A ``key_frame``'s LoRAs are routed
    and prefetched with the job's own. A workflow's ``core/ASSET`` references (``placements``) are
    replaced by the pod's file names: ``placed_loras`` are fetched and linked there under their names
    (routed like the job's own), ``inputs`` (pod file name -> where its bytes are, as ``read`` reads them;
    by default a local file) uploaded to its input folder.
    ``on_file`` gets each output file as soon as the pod has it.
    """
    reports: dict[str, InsertionReport] = {}
    frame_loras = key_frame.loras if key_frame is not None else []
    placed = placed_loras or []

    async def build(pod: PodStatus, named: list[LoraRequest]) -> dict[str, Any]:
        own, frame = named[:len(loras)], named[len(loras):len(loras) + len(frame_loras)]
        stage = KeyFrame(key_frame.template, key_frame.params, frame) if key_frame is not None else None
        graph = workflow
        if placements and workflow is not None:
            check_places(workflow, placements, pod.object_info)
            graph = place(workflow, placements)
        built = build_graph(pod.object_info, template=template, params=params, workflow=graph, loras=own,
                            mode="pack" if pod.pack else "stock", family=family, apply_mode=apply_mode, key_frame=stage)
        reports[pod.config.url] = built.report
        if on_built is not None:
            stored = on_built(built.report)
            if inspect.isawaitable(stored):
                await stored
        return built.graph

    async def upload_inputs(pod: PodStatus) -> None:
        async with pool.client(pod, timeout=300) as client:
            for name, location in (inputs or {}).items():
                await client.upload_image(await read(location) if read else Path(location), name)

    result, pod = await pool.run(build, [*loras, *frame_loras, *placed], on_event, request_id=request_id,
                                 pack_only=bool(placed), stage=upload_inputs if inputs else None, on_file=on_file)
    outcome = JobOutcome(result.prompt_id, pod.config.name, result.files, reports[pod.config.url])
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in result.files:
            path = out_dir / Path(f.filename).name
            path.write_bytes(f.data)
            outcome.saved.append(path)
    return outcome
