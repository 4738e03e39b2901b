"""Templates, graph-editor conversion, LoRA insertion and rewiring, trigger words, validation."""

from __future__ import annotations

import json

import pytest
from comfyui_lora_bridge.bridge.graphs.builder import build_graph
from comfyui_lora_bridge.bridge.graphs.convert import WorkflowError, ui_to_api
from comfyui_lora_bridge.bridge.graphs.lora_insertion import (
    InsertionError,
    LoraRequest,
    insert_loras,
)
from comfyui_lora_bridge.bridge.graphs.templates import (
    TemplateError,
    list_templates,
    load_template,
)
from comfyui_lora_bridge.bridge.graphs.validate import GraphInvalid, validate_graph
from support import CHECKPOINT, LORA_FILES

SHIPPED = {"sd15_txt2img", "sd15_img2img", "sdxl_txt2img", "sdxl_img2img", "flux_txt2img", "qwen_image_txt2img",
           "z_image_txt2img", "wan21_t2v", "wan21_i2v", "wan22_t2v", "wan22_i2v"}


def model_path(graph: dict, ref: list) -> list[str]:
    """Class types from a MODEL input back to its loader."""
    chain = []
    while ref:
        node = graph[ref[0]]
        chain.append(node["class_type"])
        ref = node["inputs"].get("model")
    return chain


def samplers(graph: dict) -> list[str]:
    return [k for k, n in graph.items() if n["class_type"] in ("KSampler", "KSamplerAdvanced")]


def test_all_templates_ship_and_declare_parameters() -> None:
    assert SHIPPED <= set(list_templates())
    for name in SHIPPED:
        tpl = load_template(name)
        assert tpl.family in ("sd15", "sdxl", "flux", "qwen_image", "lumina2", "wan")
        assert {"prompt", "seed", "filename_prefix"} <= set(tpl.params)
        assert tpl.render()  # defaults alone give a graph


@pytest.mark.parametrize("prompt", ['a "quoted" \\ back\\slash', "line1\nline2\t{braces}", '"}, "99": {"class_type": "Evil", "inputs": {}}, "x": {"',
                                    "{{ seed }} {% raw %}", "\u202e\u0000 ✓"])
def test_prompts_cannot_break_the_json_or_add_nodes(prompt: str) -> None:
    graph = load_template("sd15_txt2img").render(prompt=prompt, negative=prompt)
    assert set(graph) == set(load_template("sd15_txt2img").render())
    assert graph["6"]["inputs"]["text"] == prompt and graph["7"]["inputs"]["text"] == prompt


def test_template_parameters_are_checked() -> None:
    tpl = load_template("sdxl_txt2img")
    for bad, msg in [({"steps": 0}, "outside"), ({"width": 1001}, "multiple of 8"), ({"seed": "1; drop"}, "integer"),
                     ({"sampler": "evil"}, "not one of"), ({"nope": 1}, "no parameter"), ({"cfg": float("nan")}, "number")]:
        with pytest.raises(TemplateError, match=msg):
            tpl.render(**bad)
    for name in ("../etc/passwd", "sd15_txt2img/../x", "missing"):
        with pytest.raises(TemplateError):
            load_template(name)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_insertion_on_every_template(name: str, object_info) -> None:
    tpl = load_template(name)
    base = tpl.render(prompt="portrait")
    graph, report = insert_loras(base, [LoraRequest("a.safetensors", 0.8, 0.5, family=tpl.family, trigger_words=("ohwx",))],
                                 object_info, graph_family=tpl.family)
    loaders = [n for k, n in graph.items() if k.startswith("lora:")]
    n_models = sum(1 for n in base.values() if n["class_type"] in ("CheckpointLoaderSimple", "UNETLoader"))
    assert len(loaders) == n_models == len(report.applied)
    for sid in samplers(graph):
        chain = model_path(graph, graph[sid]["inputs"]["model"])
        assert chain[-1] in ("CheckpointLoaderSimple", "UNETLoader")
        assert chain[-2] in ("LoraLoader", "LoraLoaderModelOnly")  # the LoRA sits right after the loader
    # every shipped graph has one text encoder per model, so the LoRA's text-encoder part is applied too
    assert {n["class_type"] for n in loaders} == {"LoraLoader"}
    assert report.trigger_words == ["ohwx"] and report.prompt_nodes
    for nid in report.prompt_nodes:
        assert any(isinstance(v, str) and v.startswith("ohwx, ") for v in graph[nid]["inputs"].values())
    negatives = {graph[s]["inputs"]["negative"][0] for s in samplers(graph)}
    assert not any(isinstance(v, str) and "ohwx" in v for n in negatives if n in graph for v in graph[n]["inputs"].values())
    assert insert_loras(graph, [LoraRequest("a.safetensors", 0.8, 0.5, family=tpl.family, trigger_words=("ohwx",))],
                        object_info, graph_family=tpl.family)[0] == graph  # idempotent


def test_wan22_targets_one_of_its_two_models(object_info) -> None:
    base = load_template("wan22_t2v").render()
    graph, report = insert_loras(base, [LoraRequest("hi.safetensors", 1.0, 1.0, family="wan", targets=("high_noise",)),
                                        LoraRequest("both.safetensors", 0.5, 0.5, family="wan")], object_info, graph_family="wan")
    high = model_path(graph, graph["81"]["inputs"]["model"])
    low = model_path(graph, graph["78"]["inputs"]["model"])
    assert high.count("LoraLoader") + high.count("LoraLoaderModelOnly") == 2
    assert low.count("LoraLoader") + low.count("LoraLoaderModelOnly") == 1
    assert [a["source_node"] for a in report.applied] == ["75", "75", "76"]


def test_model_only_without_text_encoder_weights(object_info) -> None:
    graph, _ = insert_loras(load_template("sd15_txt2img").render(), [LoraRequest("m.safetensors", 1, 1, text_encoder=False)], object_info)
    assert graph["lora:4:0"]["class_type"] == "LoraLoaderModelOnly"
    assert graph["6"]["inputs"]["clip"] == ["4", 1]


def test_existing_loras_are_kept_and_extended(object_info) -> None:
    base = load_template("sd15_txt2img").render()
    base["20"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": "old.safetensors",
                                                         "strength_model": 1.0, "strength_clip": 1.0}}
    base["3"]["inputs"]["model"] = ["20", 0]
    base["6"]["inputs"]["clip"] = base["7"]["inputs"]["clip"] = ["20", 1]
    graph, _ = insert_loras(base, [LoraRequest("new.safetensors")], object_info)
    assert graph["lora:4:0"]["inputs"]["model"] == ["20", 0] and graph["lora:4:0"]["inputs"]["clip"] == ["20", 1]
    assert graph["3"]["inputs"]["model"] == ["lora:4:0", 0] and graph["6"]["inputs"]["clip"] == ["lora:4:0", 1]
    assert model_path(graph, graph["3"]["inputs"]["model"]) == ["LoraLoader", "LoraLoader", "CheckpointLoaderSimple"]


def test_pack_mode_inserts_one_stack_node(object_info) -> None:
    graph, _ = insert_loras(load_template("sd15_txt2img").render(checkpoint=CHECKPOINT), [
        LoraRequest("char42", 1.0, 0.7, source="s3://loras/c42.safetensors", sha256="ab" * 32),
        LoraRequest("brand", 0.8, 0.8, source="https://cdn.example.com/b.safetensors")], object_info, mode="pack")
    stack = graph["lora:4:stack"]
    assert stack["class_type"] == "LoraBridgeApplyStack" and stack["inputs"]["mode"] == "merge"
    assert json.loads(stack["inputs"]["loras"]) == [
        {"source": "s3://loras/c42.safetensors", "name": "char42", "sha256": "ab" * 32, "strength_model": 1.0, "strength_clip": 0.7},
        {"source": "https://cdn.example.com/b.safetensors", "name": "brand", "strength_model": 0.8, "strength_clip": 0.8}]
    validate_graph(graph, object_info)
    hot = build_graph(object_info, template="sd15_txt2img", params={"checkpoint": CHECKPOINT}, mode="pack",
                      loras=[LoraRequest("c", source="s3://loras/c.safetensors")])
    assert hot.graph["lora:4:stack"]["inputs"]["mode"] == "auto"  # the bridge's default for pack mode


def test_family_mismatch_is_refused_or_skipped(object_info) -> None:
    base = load_template("sd15_txt2img").render()
    sdxl = LoraRequest("x.safetensors", family="sdxl", trigger_words=("zzz",))
    with pytest.raises(InsertionError, match="LoRA 'x.safetensors' is SDXL; the graph's model is SD1.x"):
        insert_loras(base, [sdxl], object_info, graph_family="sd15")
    graph, report = insert_loras(base, [sdxl], object_info, graph_family="sd15", on_mismatch="skip")
    assert graph == base and report.skipped[0]["name"] == "x.safetensors" and report.trigger_words == []


def ui(nodes: list[dict], links: list[list]) -> dict:
    return {"nodes": nodes, "links": links, "version": 0.4}


def n(id: int, type: str, inputs=(), outputs=(), widgets=None, mode: int = 0) -> dict:
    return {"id": id, "type": type, "mode": mode, "widgets_values": widgets or [],
            "inputs": [{"name": a, "type": t, "link": lk} for a, t, lk in inputs],
            "outputs": [{"name": t, "type": t, "links": lks} for t, lks in outputs]}


def editor_sd15() -> dict:
    """A hand-made editor workflow: a reroute on MODEL, a primitive seed, a muted and a bypassed node."""
    return ui([
        n(4, "CheckpointLoaderSimple", outputs=[("MODEL", [1]), ("CLIP", [2, 3]), ("VAE", [9])], widgets=["sd15-tiny.safetensors"]),
        n(20, "Reroute", inputs=[("", "*", 1)], outputs=[("MODEL", [4])]),
        n(6, "CLIPTextEncode", inputs=[("clip", "CLIP", 2)], outputs=[("CONDITIONING", [5])], widgets=["a cat"]),
        n(7, "CLIPTextEncode", inputs=[("clip", "CLIP", 3)], outputs=[("CONDITIONING", [6])], widgets=["blurry"]),
        n(5, "EmptyLatentImage", outputs=[("LATENT", [7])], widgets=[64, 64, 1]),
        n(30, "PrimitiveNode", outputs=[("INT", [8])], widgets=[1234, "fixed"]),
        n(31, "FreeU", inputs=[("model", "MODEL", 4)], outputs=[("MODEL", [10])], widgets=[1.3, 1.4, 0.9, 0.2], mode=4),
        n(3, "KSampler", inputs=[("model", "MODEL", 10), ("positive", "CONDITIONING", 5), ("negative", "CONDITIONING", 6),
                                 ("latent_image", "LATENT", 7), ("seed", "INT", 8)], outputs=[("LATENT", [11])],
          widgets=[99, "randomize", 3, 5.0, "euler", "normal", 1.0]),
        n(8, "VAEDecode", inputs=[("samples", "LATENT", 11), ("vae", "VAE", 9)], outputs=[("IMAGE", [12])]),
        n(9, "SaveImage", inputs=[("images", "IMAGE", 12)], widgets=["ui"]),
        n(40, "SaveImage", inputs=[("images", "IMAGE", None)], widgets=["muted"], mode=2),
        n(41, "Note", widgets=["hello"]),
    ], [[1, 4, 0, 20, 0, "MODEL"], [2, 4, 1, 6, 0, "CLIP"], [3, 4, 1, 7, 0, "CLIP"], [4, 20, 0, 31, 0, "MODEL"],
        [5, 6, 0, 3, 1, "CONDITIONING"], [6, 7, 0, 3, 2, "CONDITIONING"], [7, 5, 0, 3, 3, "LATENT"], [8, 30, 0, 3, 4, "INT"],
        [9, 4, 2, 8, 1, "VAE"], [10, 31, 0, 3, 0, "MODEL"], [11, 3, 0, 8, 0, "LATENT"], [12, 8, 0, 9, 0, "IMAGE"]])


def test_editor_workflow_conversion(object_info) -> None:
    graph = ui_to_api(editor_sd15(), object_info)
    assert set(graph) == {"4", "6", "7", "5", "3", "8", "9"}  # reroute, primitive, bypassed, muted, note gone
    assert graph["3"]["inputs"]["model"] == ["4", 0]  # through the reroute and the bypassed FreeU
    assert graph["3"]["inputs"]["seed"] == 1234  # from the primitive, not the widget
    assert (graph["3"]["inputs"]["steps"], graph["3"]["inputs"]["cfg"], graph["3"]["inputs"]["sampler_name"]) == (3, 5.0, "euler")
    assert graph["6"]["inputs"]["text"] == "a cat" and graph["5"]["inputs"] == {"width": 64, "height": 64, "batch_size": 1}
    validate_graph(graph, object_info)
    with pytest.raises(WorkflowError, match="not installed on the pod"):
        ui_to_api(ui([n(1, "NoSuchNode", outputs=[("IMAGE", [1])]), n(2, "SaveImage", inputs=[("images", "IMAGE", 1)])],
                     [[1, 1, 0, 2, 0, "IMAGE"]]), object_info)


def with_freeu_subgraph(mode: int) -> dict:
    """editor_sd15 with its MODEL going through a one-node subgraph instance (FreeU inside) in ``mode``."""
    wf = editor_sd15()
    wf["nodes"] = [node for node in wf["nodes"] if node["id"] != 31]
    inner = n(1, "FreeU", inputs=[("model", "MODEL", 101)], outputs=[("MODEL", [102])], widgets=[1.3, 1.4, 0.9, 0.2])
    wf["definitions"] = {"subgraphs": [{
        "id": "sg-freeu", "inputs": [{"name": "model", "type": "MODEL"}], "outputs": [{"name": "MODEL", "type": "MODEL"}],
        "nodes": [inner],
        "links": [{"id": 101, "origin_id": -10, "origin_slot": 0, "target_id": 1, "target_slot": 0, "type": "MODEL"},
                  {"id": 102, "origin_id": 1, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "MODEL"}]}]}
    wf["nodes"].append(n(31, "sg-freeu", inputs=[("model", "MODEL", 4)], outputs=[("MODEL", [10])], mode=mode))
    return wf


def test_bypassed_or_muted_subgraph_instances_act_as_one_node(object_info) -> None:
    active = ui_to_api(with_freeu_subgraph(0), object_info)
    assert active["3"]["inputs"]["model"] == ["31:1", 0] and active["31:1"]["class_type"] == "FreeU"
    bypassed = ui_to_api(with_freeu_subgraph(4), object_info)
    assert bypassed["3"]["inputs"]["model"] == ["4", 0]  # passed through like the editor does
    assert not any(":" in node_id for node_id in bypassed)  # nothing inside a bypassed instance runs
    validate_graph(bypassed, object_info)
    muted = ui_to_api(with_freeu_subgraph(2), object_info)
    assert "model" not in muted["3"]["inputs"] and not any(":" in node_id for node_id in muted)


def test_bypass_passes_the_input_the_editor_picks(object_info) -> None:
    """The editor's slot rule: the consumer's type decides; a wildcard consumer takes the same index."""
    def clip_input_through(consumer_type: str) -> list:
        graph = ui_to_api(ui([
            n(1, "CheckpointLoaderSimple", outputs=[("MODEL", [1]), ("CLIP", [2])], widgets=["sd15-tiny.safetensors"]),
            n(2, "AnyPackNode", inputs=[("clip", "CLIP", 2), ("model", "MODEL", 1)],  # inputs in the other order
              outputs=[("MODEL", []), ("CLIP", [3])], mode=4),
            n(3, "CLIPTextEncode", inputs=[("clip", consumer_type, 3)], outputs=[("CONDITIONING", [4])], widgets=["a"]),
            n(4, "PreviewAny", inputs=[("source", "*", 4)]),
        ], [[1, 1, 0, 2, 1, "MODEL"], [2, 1, 1, 2, 0, "CLIP"], [3, 2, 1, 3, 0, "CLIP"], [4, 3, 0, 4, 0, "*"]]),
            {**object_info, "PreviewAny": {"input": {"required": {"source": ["*", {}]}}, "output_node": True}})
        return graph["3"]["inputs"]["clip"]
    assert clip_input_through("CLIP") == ["1", 1]  # the input of the consumer's type
    assert clip_input_through("*") == ["1", 0]  # a wildcard consumer gets the same-index input (here the MODEL)


def test_validation_names_node_and_input(object_info) -> None:
    graph = load_template("sd15_txt2img").render()
    graph["3"]["inputs"]["steps"] = 100000
    graph["3"]["inputs"]["positive"] = ["5", 0]  # a LATENT into CONDITIONING
    del graph["8"]["inputs"]["vae"]
    graph["99"] = {"class_type": "NoSuchNode", "inputs": {}}
    with pytest.raises(GraphInvalid) as err:
        validate_graph(graph, object_info)
    text = str(err.value)
    assert "node 3 (KSampler) input 'steps': 100000 is outside" in text
    assert "node 3 (KSampler) input 'positive': expects CONDITIONING, linked to a LATENT output of node 5" in text
    assert "node 8 (VAEDecode) input 'vae': required but missing" in text
    assert "node 99: class 'NoSuchNode' does not exist" in text
    assert "'v1-5-pruned-emaonly.safetensors' is not one of the pod's choices" in text  # stock mode needs files on the pod


def test_build_graph_from_editor_workflow_with_lora(object_info) -> None:
    built = build_graph(object_info, workflow=editor_sd15(), loras=[LoraRequest(LORA_FILES["kohya"], family="sd15",
                                                                                 trigger_words=("ohwx",))], family="sd15")
    assert built.graph["6"]["inputs"]["text"] == "ohwx, a cat" and built.graph["7"]["inputs"]["text"] == "blurry"
    assert built.graph["3"]["inputs"]["model"] == ["lora:4:0", 0]


def test_dynamic_v3_inputs_are_left_to_the_pod() -> None:
    info = {
        "Src": {"input": {}, "output": ["AUDIO"]},
        "Switch": {"input": {"required": {"on_true": ["COMFY_MATCHTYPE_V3", {}], "format": ["COMFY_DYNAMICCOMBO_V3", {}]}},
                   "output": ["COMFY_MATCHTYPE_V3"]},
        "Save": {"input": {"required": {"audio": ["AUDIO", {}]}}, "output": []},
    }
    graph = {"1": {"class_type": "Src", "inputs": {}}, "2": {"class_type": "Switch", "inputs": {"on_true": ["1", 0]}},
             "3": {"class_type": "Save", "inputs": {"audio": ["2", 0]}}}
    validate_graph(graph, info)  # the match-type link and the missing dynamic combo are the pod's to judge
    graph["3"]["inputs"]["audio"] = ["1", 0]
    graph["4"] = {"class_type": "Save", "inputs": {}}
    with pytest.raises(GraphInvalid, match="node 4 \\(Save\\) input 'audio': required but missing"):
        validate_graph(graph, info)  # what object_info does state is still checked


def test_trigger_words_reach_an_encoder_whose_negative_is_zeroed_out() -> None:
    """The official Flux/SD3.5/Z-Image layout: one encoder, its output zeroed out for the negative."""
    graph = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "a", "clip_name2": "b", "type": "flux"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a portrait", "clip": ["2", 0]}},
        "7": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["6", 0]}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0], "seed": 1, "steps": 2, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
    }
    out, report = insert_loras(graph, [LoraRequest("char.safetensors", trigger_words=("ohwx",))])
    assert out["6"]["inputs"]["text"] == "ohwx, a portrait" and report.trigger_words == ["ohwx"]
    assert not report.warnings
    # an encoder that feeds both sides (CFG 1) gets it too: both sides keep the same text
    graph["3"]["inputs"]["negative"] = ["6", 0]
    out, report = insert_loras(graph, [LoraRequest("char.safetensors", trigger_words=("ohwx",))])
    assert out["6"]["inputs"]["text"] == "ohwx, a portrait" and not report.warnings


def test_trigger_words_join_a_prompt_computed_in_the_graph(object_info) -> None:
    """A prompt from a string node (switches, prompt generators): a StringConcatenate goes in front of it."""
    graph = load_template("sd15_txt2img").render(checkpoint=CHECKPOINT)
    graph["20"] = {"class_type": "StringConcatenate", "inputs": {"string_a": "a portrait", "string_b": "studio", "delimiter": ", "}}
    positive = next(k for k, v in graph.items() if v["class_type"] == "CLIPTextEncode" and k == graph["3"]["inputs"]["positive"][0])
    graph[positive]["inputs"]["text"] = ["20", 0]
    lora = LoraRequest(LORA_FILES["kohya"], trigger_words=("ohwx",))
    out, report = insert_loras(graph, [lora], object_info)
    join = out[positive]["inputs"]["text"]
    assert out[join[0]]["class_type"] == "StringConcatenate" and out[join[0]]["inputs"]["string_b"] == ["20", 0]
    assert out[join[0]]["inputs"]["string_a"] == "ohwx" and report.trigger_words == ["ohwx"]
    validate_graph(out, object_info)
    assert insert_loras(out, [lora], object_info)[0] == out  # building again gives the same graph
    without_join = {k: v for k, v in object_info.items() if k != "StringConcatenate"}
    out, report = insert_loras(graph, [lora], without_join)
    assert out[positive]["inputs"]["text"] == ["20", 0] and "no trigger words added" in report.warnings[0]


def test_trigger_words_skip_an_encoders_own_negative_prompt() -> None:
    """An encoder with positive and negative outputs (prompt + negative_prompt inputs): only its prompt."""
    info = {"TextEncodeEdit": {"input": {"required": {"clip": ["CLIP", {}], "prompt": ["STRING", {}], "negative_prompt": ["STRING", {}]}},
                               "output": ["CONDITIONING", "CONDITIONING"], "output_name": ["positive", "negative"]},
            "UNETLoader": {"input": {"required": {"unet_name": [["u.safetensors"], {}]}}, "output": ["MODEL"], "output_name": ["MODEL"]},
            "CLIPLoader": {"input": {"required": {"clip_name": [["c.safetensors"], {}]}}, "output": ["CLIP"], "output_name": ["CLIP"]},
            "KSampler": {"input": {"required": {"model": ["MODEL", {}], "positive": ["CONDITIONING", {}], "negative": ["CONDITIONING", {}]}},
                         "output": ["LATENT"], "output_name": ["LATENT"]}}
    graph = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "u.safetensors"}},
             "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "c.safetensors"}},
             "6": {"class_type": "TextEncodeEdit", "inputs": {"clip": ["2", 0], "prompt": "remove the hat", "negative_prompt": "blurry"}},
             "3": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["6", 0], "negative": ["6", 1]}}}
    out, report = insert_loras(graph, [LoraRequest("char.safetensors", trigger_words=("ohwx",))], info)
    assert out["6"]["inputs"]["prompt"] == "ohwx, remove the hat" and out["6"]["inputs"]["negative_prompt"] == "blurry"


def test_a_key_frame_graph_feeds_the_image_to_video_start_image() -> None:
    from comfyui_lora_bridge.bridge.graphs.key_frame import attach_key_frame, stage_of

    image, _ = insert_loras(load_template("sd15_txt2img").render(), [LoraRequest("char.safetensors", trigger_words=("ohwx",))])
    video = load_template("wan21_i2v").render()
    graph = attach_key_frame(video, image)
    assert not any(n["class_type"] == "LoadImage" for n in graph.values())
    (decode,) = [k for k, n in graph.items() if k.startswith("kf:") and n["class_type"] == "VAEDecode"]
    assert graph["50"]["inputs"]["start_image"] == [decode, 0] and graph["51"]["inputs"]["image"] == [decode, 0]
    assert {graph[k]["class_type"] for k in graph if k.startswith("kf:")} >= {"SaveImage", "LoraLoader", "CheckpointLoaderSimple"}
    assert all(v[0] in graph for n in graph.values() for v in n["inputs"].values() if isinstance(v, list) and len(v) == 2
               and isinstance(v[0], str))  # every link points at a node of the combined graph
    assert graph["kf:6"]["inputs"]["text"].startswith("ohwx, ") and stage_of("kf:3") == "key_frame" and stage_of("3") == "video"
    with pytest.raises(InsertionError, match="no LoadImage"):
        attach_key_frame(load_template("wan21_t2v").render(), image)


def test_the_compatibility_matrix_picks_a_path_per_family() -> None:
    from comfyui_lora_bridge.bridge.jobs.character_paths import verdict

    assert verdict("wan", "14B", "wan", "14B").path == "direct"
    assert verdict("wan", None, "wan", "1.3B").path == "direct"  # a template that fixes no size: the pod checks
    refused = verdict("wan", "14B", "wan", "1.3B")
    assert refused.path is None and "Wan 2.x 1.3B" in refused.reason and "Wan 2.x 14B" in refused.reason
    assert verdict("wan", "14B", "lumina2", None).path == "preprocess" and "z_image_txt2img" in verdict("wan", "14B", "lumina2", None).reason
    assert verdict("wan", "1.3B", "sd3", None).path is None


@pytest.mark.parametrize("name", ["wan22_t2v", "wan22_i2v"])
def test_two_expert_templates_name_their_experts_loaders(name: str) -> None:
    tpl = load_template(name)
    graph = tpl.render(high_noise="h.safetensors", low_noise="l.safetensors")
    assert tpl.experts is not None and {expert: graph[node]["inputs"]["unet_name"] for expert, node in tpl.experts.items()} == {
        "high_noise": "h.safetensors", "low_noise": "l.safetensors"}
    _, report = insert_loras(graph, [LoraRequest("low.safetensors", source_nodes=(tpl.experts["low_noise"],))])
    assert [a["source_node"] for a in report.applied] == [tpl.experts["low_noise"]]
