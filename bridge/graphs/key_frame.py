"""Where an image graph becomes the first stage of a video graph: the pre-processing path.

The image graph (a key frame drawn with the character's image LoRA) is added to the
image-to-video graph under the ``kf:`` id prefix, and every input the video graph fed from its
``LoadImage`` nodes (the start image, the CLIP-vision image) takes the key frame's decoded IMAGE
instead, so the frame never leaves the pod. The key frame's own save node stays: it is an
output of the job.
"""

from __future__ import annotations

from typing import Any

from .lora_insertion import Graph, InsertionError

KEY_FRAME_PREFIX = "kf:"
IMAGE_SOURCES = {"LoadImage"}
IMAGE_SAVERS = {"SaveImage"}


def _link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def stage_of(node_id: str) -> str:
    """Which stage of a pre-processed job a node belongs to (for progress events)."""
    return "key_frame" if node_id.startswith(KEY_FRAME_PREFIX) else "video"


def attach_key_frame(video: Graph, image: Graph) -> Graph:
    """``video`` with its loaded images replaced by the decoded output of ``image`` (both API graphs)."""
    loads = {nid for nid, node in video.items() if node.get("class_type") in IMAGE_SOURCES}
    if not loads:
        raise InsertionError("the video template has no LoadImage node to take the key frame")
    savers = [node for node in image.values() if node.get("class_type") in IMAGE_SAVERS and _link(node["inputs"].get("images"))]
    if len(savers) != 1:
        raise InsertionError(f"the key-frame template must save exactly one image, it has {len(savers)} save nodes")
    frame = [KEY_FRAME_PREFIX + savers[0]["inputs"]["images"][0], savers[0]["inputs"]["images"][1]]
    out: Graph = {}
    for nid, node in image.items():
        inputs = {k: [KEY_FRAME_PREFIX + v[0], v[1]] if _link(v) else v for k, v in node.get("inputs", {}).items()}
        out[KEY_FRAME_PREFIX + nid] = {**node, "inputs": inputs}
    for nid, node in video.items():
        if nid in loads:
            continue
        inputs = dict(node.get("inputs", {}))
        for key, value in inputs.items():
            if _link(value) and value[0] in loads:
                if value[1] != 0:
                    raise InsertionError(f"node {nid} input '{key}' uses the loaded image's mask; a key frame has none")
                inputs[key] = list(frame)
        out[nid] = {**node, "inputs": inputs}
    return out
