"""Hot-swap mode in the real ComfyUI: same images as merge (within fp rounding), no leftover state."""

from __future__ import annotations

import json

import numpy as np
import pytest
from comfyui_lora_bridge.testing.server import LocalComfy
from support import (
    CHECKPOINT,
    LORA_FILES,
    image_of,
    node_text,
    run_graph,
    txt2img,
)

pytestmark = pytest.mark.comfy
# fp32 on the CPU: W·x + up(down(x)) vs (W + up·down)·x differ by rounding only
MAX_PIXEL_DIFF, MEAN_PIXEL_DIFF = 2, 0.05


def stacked(seed: int, loras: list[tuple[str, float, float]], mode: str) -> dict:
    graph = txt2img(seed=seed)
    graph["40"] = {"class_type": "LoraBridgeApplyStack", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "on_mismatch": "error", "mode": mode,
        "loras": json.dumps([{"name": n, "strength_model": sm, "strength_clip": sc} for n, sm, sc in loras])}}
    graph["3"]["inputs"]["model"] = ["40", 0]
    graph["6"]["inputs"]["clip"] = graph["7"]["inputs"]["clip"] = ["40", 1]
    return graph


def close(a: np.ndarray, b: np.ndarray) -> bool:
    diff = np.abs(a - b)
    return int(diff.max()) <= MAX_PIXEL_DIFF and float(diff.mean()) <= MEAN_PIXEL_DIFF


@pytest.mark.parametrize("strength", [1.0, 0.5, -0.5])
def test_hotswap_matches_merge_with_two_stacked_loras(comfy, strength) -> None:
    loras = [(LORA_FILES["kohya"], strength, strength), (LORA_FILES["kohya_b"], 0.7, -0.3)]
    merged = image_of(run_graph(comfy, stacked(31, loras, "merge")))
    result = run_graph(comfy, stacked(31, loras, "hotswap"))
    hot = image_of(result)
    base = image_of(run_graph(comfy, txt2img(seed=31)))
    assert close(hot, merged), (np.abs(hot - merged).max(), np.abs(hot - merged).mean())
    assert np.abs(hot - base).mean() > 3  # and the LoRAs really act
    assert all(line.startswith("hot-swapped") for line in node_text(result, "40"))


def test_peft_file_hotswaps_and_loha_falls_back_to_merge(comfy) -> None:
    peft = [(LORA_FILES["peft"], 1.0, 1.0)]
    assert close(image_of(run_graph(comfy, stacked(32, peft, "hotswap"))), image_of(run_graph(comfy, stacked(32, peft, "merge"))))
    loha = run_graph(comfy, stacked(32, [(LORA_FILES["loha"], 1.0, 1.0)], "hotswap"))
    assert "merged: this LoRA type cannot be hot-swapped" in node_text(loha, "40")[0]
    assert (image_of(loha) == image_of(run_graph(comfy, stacked(32, [(LORA_FILES["loha"], 1.0, 1.0)], "merge")))).all()


def test_strength_zero_and_no_lora_give_the_base_image_exactly(comfy) -> None:
    base = image_of(run_graph(comfy, txt2img(seed=33)))
    assert (image_of(run_graph(comfy, stacked(33, [(LORA_FILES["kohya"], 0.0, 0.0)], "hotswap"))) == base).all()
    assert (image_of(run_graph(comfy, stacked(33, [], "hotswap"))) == base).all()
    # a hot-swapped run in between leaves nothing behind
    run_graph(comfy, stacked(33, [(LORA_FILES["kohya"], 1.0, 1.0)], "hotswap"))
    assert (image_of(run_graph(comfy, txt2img(seed=33))) == base).all()


def test_alternating_loras_leave_no_state(comfy, weights) -> None:
    a, b = [(LORA_FILES["kohya"], 1.0, 1.0)], [(LORA_FILES["kohya_b"], 0.8, 0.8)]
    # the reference images: a ComfyUI that keeps nothing between prompts (it loads the checkpoint anew for each)
    with LocalComfy(extra_args=["--cache-none"]) as pod:
        (pod.models_dir("checkpoints") / CHECKPOINT).symlink_to(weights.checkpoint)
        for key in ("kohya", "kohya_b"):
            (pod.models_dir("loras") / LORA_FILES[key]).symlink_to(weights.loras[key])
        fresh = {label: image_of(run_graph(pod, stacked(34, loras, "hotswap"))) for label, loras in (("A", a), ("B", b), ("none", []))}
    for label in ("A", "B", "none", "A", "B", "A"):
        loras = {"A": a, "B": b, "none": []}[label]
        assert (image_of(run_graph(comfy, stacked(34, loras, "hotswap"))) == fresh[label]).all(), label


@pytest.mark.parametrize("foreign_first", [False, True])
def test_another_nodes_model_wrapper_and_hotswap_both_act(comfy, foreign_first) -> None:
    """A node that takes ComfyUI's single ``model_function_wrapper`` slot, before or after ours."""
    loras = [(LORA_FILES["kohya"], 1.0, 1.0)]

    def with_foreign(graph: dict, scale: float) -> dict:
        graph["50"] = {"class_type": "TestForeignModelWrapper", "inputs": {"model": ["4", 0], "scale": scale}}
        if foreign_first:
            graph["40"]["inputs"]["model"] = ["50", 0]
        else:
            graph["50"]["inputs"]["model"] = ["40", 0]
            graph["3"]["inputs"]["model"] = ["50", 0]
        return graph

    hot = image_of(run_graph(comfy, with_foreign(stacked(35, loras, "hotswap"), 0.8)))
    merged = image_of(run_graph(comfy, with_foreign(stacked(35, loras, "merge"), 0.8)))
    unwrapped = image_of(run_graph(comfy, stacked(35, loras, "merge")))
    no_lora = image_of(run_graph(comfy, with_foreign(stacked(35, [], "hotswap"), 0.8)))
    assert close(hot, merged)  # ours acted as a merge would, with the other wrapper in place
    assert np.abs(hot - unwrapped).mean() > 3 and np.abs(hot - no_lora).mean() > 3  # and both really act


def test_auto_hot_swaps_a_new_stack_and_merges_it_while_it_repeats(comfy) -> None:
    """``auto``: the first run of a stack is hot-swapped, the next merged (ComfyUI's own patching, the image
    exactly the merge mode's), later repeats reuse that merged model without running the node; a switch
    hot-swaps again. Every image is the LoRAs' (merge's within fp rounding)."""
    a, b = [(LORA_FILES["kohya"], 0.9, 0.9)], [(LORA_FILES["kohya_b"], 0.6, 0.6)]

    def auto(loras: list[tuple[str, float, float]]):
        graph = stacked(35, loras, "auto")
        graph["45"] = graph.pop("40")  # a node id of its own: auto remembers what each stack node applied
        graph["3"]["inputs"]["model"] = ["45", 0]
        graph["6"]["inputs"]["clip"] = graph["7"]["inputs"]["clip"] = ["45", 1]
        return run_graph(comfy, graph)

    merged = {label: image_of(run_graph(comfy, stacked(35, loras, "merge"))) for label, loras in (("A", a), ("B", b))}
    for label, expect in (("A", "hot-swapped"), ("A", "merged"), ("A", "cached"), ("B", "hot-swapped"),
                          ("A", "hot-swapped"), ("A", "merged")):
        result = auto(a if label == "A" else b)
        cached = [n for e in result.events if e.type == "cached" for n in e.data.get("nodes", [])]
        image = image_of(result)
        if expect == "cached":
            assert "45" in cached and (image == merged[label]).all()
        else:
            lines = node_text(result, "45")
            assert "45" not in cached and lines[0].startswith(f"auto: {expect}"), lines
            assert lines[1].startswith("applied" if expect == "merged" else "hot-swapped"), lines
            assert (image == merged[label]).all() if expect == "merged" else close(image, merged[label])
