"""End to end against the real ComfyUI: graphs run, events stream, LoRAs change images as they should."""

from __future__ import annotations

import os
import subprocess

import pytest
from comfyui_lora_bridge.bridge.errors import PodStartError
from comfyui_lora_bridge.testing.server import LocalComfy
from support import (
    LORA_FILES,
    POD_TOKEN,
    LoraRequest,
    assert_steps,
    image_of,
    mean_abs_diff,
    run_graph,
    stock,
    txt2img,
)

pytestmark = pytest.mark.comfy


def with_lora(graph, name=LORA_FILES["kohya"], sm=1.0, sc=1.0):
    return stock(graph, [LoraRequest(name, sm, sc)])


def test_lora_graph_streams_progress_and_saves_a_png(comfy) -> None:
    graph = with_lora(txt2img(steps=3))
    assert graph["3"]["inputs"]["model"] == ["lora:4:0", 0]  # the sampler reads the LoRA's model
    result = run_graph(comfy, graph)
    types = [e.type for e in result.events]
    assert types[:2] == ["submitting", "submitted"] and types[-1] == "success"
    assert result.events[0].data["prompt_id"] == result.events[1].data["prompt_id"] == result.prompt_id  # ours, kept by the pod
    assert "started" in types
    executed = [e.data["node"] for e in result.events if e.type == "executing" and e.data.get("node")]
    assert "lora:4:0" in executed and executed.index("lora:4:0") < executed.index("3")
    steps = [(e.data["value"], e.data["max"]) for e in result.events if e.type == "progress" and e.data["node"] == "3"]
    assert_steps([v for v, _ in steps], 3)
    assert all(m == 3 for _, m in steps)
    (out,) = result.files
    assert out.node_id == "9" and out.type == "output" and out.filename.endswith(".png")
    assert out.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert image_of(result).shape == (64, 64, 3)
    assert (comfy.output_dir / out.subfolder / out.filename).read_bytes() == out.data


def test_strength_zero_gives_exactly_the_base_image(comfy) -> None:
    base = image_of(run_graph(comfy, txt2img(seed=11)))
    zero = image_of(run_graph(comfy, with_lora(txt2img(seed=11), sm=0.0, sc=0.0)))
    assert (base == zero).all()


def test_strength_changes_the_image_measurably(comfy) -> None:
    base = image_of(run_graph(comfy, txt2img(seed=12)))
    half = image_of(run_graph(comfy, with_lora(txt2img(seed=12), sm=0.5, sc=0.5)))
    full = image_of(run_graph(comfy, with_lora(txt2img(seed=12), sm=1.0, sc=1.0)))
    # pixel values are 0..255; a LoRA that did nothing would give 0
    assert mean_abs_diff(base, half) > 3
    assert mean_abs_diff(half, full) > 3
    assert mean_abs_diff(base, full) > mean_abs_diff(base, half)


@pytest.mark.parametrize("layout", ["peft", "loha"])
def test_other_lora_layouts_load_and_change_the_image(comfy, layout) -> None:
    base = image_of(run_graph(comfy, txt2img(seed=13)))
    lora = image_of(run_graph(comfy, with_lora(txt2img(seed=13), name=LORA_FILES[layout])))
    assert mean_abs_diff(base, lora) > 3


def test_node_pack_is_loaded(comfy) -> None:
    import asyncio

    from comfyui_lora_bridge.bridge.pods.client import PodClient

    async def info():
        async with PodClient(comfy.url, token=POD_TOKEN) as pod:
            return await pod.object_info()

    nodes = asyncio.run(info())
    assert nodes["LoraBridgeApply"]["category"] == "LoRA Bridge"
    assert set(nodes["LoraBridgeApply"]["input"]["required"]) == {"model", "lora", "strength_model", "strength_clip", "on_mismatch"}
    kind, options = nodes["LoraBridgeLoadFile"]["input"]["required"]["lora_name"]  # a V3 combo: the loras folders' files
    assert kind == "COMBO" and LORA_FILES["kohya"] in options["options"]
    log = comfy.log_tail(10**7)
    assert "comfyui-lora-bridge" in log and "IMPORT FAILED" not in log.split("comfyui-lora-bridge")[0][-200:]


def test_failed_start_surfaces_comfyui_log(tmp_path) -> None:
    pod = LocalComfy(base_dir=tmp_path, extra_args=["--no-such-option"])
    with pytest.raises(PodStartError) as err:
        pod.start(timeout=120)
    assert "unrecognized arguments: --no-such-option" in str(err.value)
    assert pod.process is None


def test_stop_leaves_no_process_behind(tmp_path) -> None:
    pod = LocalComfy(base_dir=tmp_path).start()
    pid = pod.process.pid
    assert pod.is_ready()
    pod.stop()
    assert not pod.is_ready()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    group = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout.strip()
    assert group == ""


def test_demo_command_writes_two_different_images(tmp_path) -> None:
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).with_name("lora-bridge"))
    res = subprocess.run([exe, "demo", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    with_lora, without = (tmp_path / "with_lora.png").read_bytes(), (tmp_path / "without_lora.png").read_bytes()
    assert with_lora[:4] == without[:4] == b"\x89PNG" and with_lora != without
    assert f"with_lora: {tmp_path / 'with_lora.png'}" in res.stdout and "the LoRA changed the image" in res.stdout
    assert '"trigger_words": [\n    "ohwx"\n  ]' in res.stdout and "step 4/4" in res.stdout
