"""A character in a generated clip, through the bridge service and the real ComfyUI: the direct,
pre-processing and fallback paths, and the compatibility matrix they follow.

The video templates are the shipped Wan 2.1 ones, installed as a team's own versions
(``LORA_BRIDGE_TEMPLATES_DIR``) with two changes: their default model names are the generated
test files, and the UMT5-XXL encoder (5.7 B parameters, cannot be generated here) is swapped for
the test conditioning node. The diffusion models, the Wan VAE, CLIP vision, the SD1.5 key-frame
template and every LoRA patch are ComfyUI's real code.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from comfyui_lora_bridge.testing.dit_layout import (
    WAN21_T2V,
    WAN22_EXPERT,
)
from comfyui_lora_bridge.testing.weights import (
    DitLoraSpec,
    LoraSpec,
    cached_dit_lora,
    cached_lora,
)
from foreign_loras import write_foreign_lora
from PIL import Image
from service_harness import Service
from support import CHECKPOINT, frames_of
from video_templates import install_video_models

pytestmark = pytest.mark.comfy
VIDEO = {"width": 64, "height": 64, "length": 5, "steps": 2, "seed": 4, "prompt": "a portrait"}
KEY_FRAME = {"checkpoint": CHECKPOINT, "width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def service(comfy, s3, tmp_path_factory):
    templates = install_video_models(comfy, tmp_path_factory.mktemp("team-templates"), ("wan21_t2v", "wan21_i2v", "wan22_t2v"))
    svc = Service([comfy.url], tmp_path_factory.mktemp("video-svc"), s3.endpoint,
                  env={"LORA_BRIDGE_TEMPLATES_DIR": str(templates)}).start()
    yield svc
    svc.kill()


def upload(s3, owner: str, path: Path) -> str:
    key = f"video/{owner}/{path.name}"
    s3.client.put_object(Bucket="loras", Key=key, Body=path.read_bytes())
    return f"s3://loras/{key}"


def register(service, s3, owner: str, path: Path, name: str, **fields) -> dict:
    status, lora = service.call("POST", "/v1/loras", {"name": name, "character_id": owner, "status": "ready",
                                                      "source": upload(s3, owner, path), "fallback_style": "red scarf", **fields})
    assert status == 201, lora
    return lora


def generate(service, template: str = "wan21_t2v", **request) -> tuple[dict, list[bytes]]:
    status, rec = service.call("POST", "/v1/generations?wait=true", {"template": template, "params": VIDEO, **request})
    assert status == 200 and rec["status"] == "succeeded", rec
    files = []
    for n in range(len(rec["outputs"])):
        status, data = service.call("GET", f"/v1/generations/{rec['id']}/outputs/{n}")
        assert status == 200
        files.append(data)
    return rec, files


def test_the_compatibility_matrix_is_served(service) -> None:
    status, body = service.call("GET", "/v1/compatibility")
    assert status == 200
    rows = {(r["video_variant"], r["lora_family"], r["lora_variant"]): r for r in body["matrix"]}
    assert rows["1.3B", "wan", "1.3B"]["path"] == "direct"
    assert rows["14B", "wan", "1.3B"]["path"] == "not_possible" and "1.3B" in rows["14B", "wan", "1.3B"]["reason"]
    assert rows["14B", "sdxl", None]["path"] == "preprocess" and rows["14B", "sdxl", None]["key_frame_template"] == "sdxl_txt2img"
    assert rows["1.3B", "hunyuan_video", None]["path"] == "not_possible"
    assert body["video_templates"]["wan21_t2v"] == "wan21_i2v"


def test_direct_a_wan_lora_goes_into_the_video(service, s3) -> None:
    lora = register(service, s3, "cv-direct", cached_dit_lora(DitLoraSpec(WAN21_T2V, "kohya")), "wan character")
    rec, (video,) = generate(service, character_id="cv-direct")
    assert rec["path"] == "direct" and "Wan 2.x 1.3B LoRA is inserted" in rec["path_reason"]
    assert [a["name"] for a in rec["applied"]] == [f"lora-{lora['id']}"]
    plain, (base,) = generate(service)
    assert "path" not in plain
    with_lora, without = frames_of(video), frames_of(base)
    assert with_lora.shape == without.shape == (5, 64, 64, 3) and np.abs(with_lora - without).mean() > 0.5


def test_preprocess_an_image_lora_draws_the_key_frame_of_the_clip(service, s3, weights) -> None:
    register(service, s3, "cv-sd15-a", weights.loras["kohya"], "sd15 character a")
    register(service, s3, "cv-sd15-b", weights.loras["kohya_b"], "sd15 character b")
    outputs = {}
    for owner in ("cv-sd15-a", "cv-sd15-b"):
        rec, files = generate(service, character_id=owner, key_frame_params=KEY_FRAME)
        assert rec["path"] == "preprocess" and "sd15_txt2img" in rec["path_reason"], rec
        assert [a["source_node"].startswith("kf:") for a in rec["applied"]] == [True]
        assert rec["trigger_words"] == (["ohwx"] if owner.endswith("a") else ["zwx"])
        _, _, events = zip(*service.events(rec["id"]))
        stages = {e.get("stage") for e in events if "node" in e}
        assert {"key_frame", "video"} <= stages, stages  # both stages' progress in the stream
        (png,) = [f for name, f in zip(rec["outputs"], files) if name.endswith(".png")]  # the key frame is kept
        (mp4,) = [f for name, f in zip(rec["outputs"], files) if not name.endswith(".png")]
        outputs[owner] = (np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16), frames_of(mp4))
    (frame_a, clip_a), (frame_b, clip_b) = outputs.values()
    assert frame_a.shape == (64, 64, 3) and clip_a.shape == (5, 64, 64, 3)
    assert np.abs(frame_a - frame_b).mean() > 0.5  # another LoRA, another key frame
    assert np.abs(clip_a - clip_b).mean() > 0.1  # ... and another clip: the frame is the clip's start image


def test_fallback_without_a_usable_lora_and_strict_refuses(service, s3, tmp_path) -> None:
    rec, (video,) = generate(service, character_id="cv-nobody")
    assert rec["path"] == "fallback" and "has no LoRA" in rec["path_reason"] and rec["applied"] == []
    assert any("not found" in w for w in rec["warnings"]), rec["warnings"]
    assert frames_of(video).shape == (5, 64, 64, 3)
    status, err = service.call("POST", "/v1/generations", {"template": "wan21_t2v", "params": VIDEO,
                                                          "character_id": "cv-nobody", "lora_policy": "strict"})
    assert status == 422 and "not found" in err["error"]["message"]
    # a LoRA of a family with no key-frame template and no place in a Wan video: refused under strict
    register(service, s3, "cv-hunyuan", write_foreign_lora(tmp_path / "hunyuan.safetensors", "hunyuan_video", "peft"), "hunyuan character")
    status, err = service.call("POST", "/v1/generations", {"template": "wan21_t2v", "params": VIDEO,
                                                          "character_id": "cv-hunyuan", "lora_policy": "strict"})
    assert status == 422 and "HunyuanVideo" in err["error"]["message"], err
    # the key frame's LoRA left the bucket before any pod cached it: the video is made from the prompt alone
    gone = cached_lora(LoraSpec(seed=31, output_name="gone"))
    register(service, s3, "cv-gone", gone, "sd15 gone")
    s3.client.delete_object(Bucket="loras", Key=f"video/cv-gone/{gone.name}")
    rec, (video,) = generate(service, character_id="cv-gone", key_frame_params=KEY_FRAME)
    assert rec["path"] == "fallback" and "the key frame is not drawn" in rec["path_reason"] and rec["applied"] == []
    assert [e["path"] for _, kind, e in service.events(rec["id"]) if kind == "path"] == ["preprocess", "fallback"]
    rec, _ = generate(service, character_id="cv-hunyuan")  # fallback: prompt only, with the character's style words
    assert rec["path"] == "fallback" and "HunyuanVideo LoRAs have no key-frame template" in rec["path_reason"]
    assert rec["applied"] == [] and any("'red scarf'" in w for w in rec["warnings"]), rec["warnings"]


def test_direct_a_wan22_pair_puts_each_file_on_its_expert(service, s3) -> None:
    high, low = (cached_dit_lora(DitLoraSpec(WAN22_EXPERT, "kohya", seed=10 + i)) for i in range(2))
    status, err = service.call("POST", "/v1/loras", {"name": "half", "source": upload(s3, "cv-pair", high),
                                                     "low_noise_source": "s3://loras/video/cv-pair/missing.safetensors"})
    assert status in (400, 422) and "missing.safetensors" in err["error"]["message"]  # a pair needs both files
    status, err = service.call("POST", "/v1/loras", {"name": "mixed", "source": upload(s3, "cv-pair", high),
                                                     "low_noise_source": upload(s3, "cv-pair", cached_dit_lora(DitLoraSpec(WAN21_T2V, "kohya")))})
    assert status == 422 and "high-noise 14B, low-noise 1.3B" in err["error"]["message"]
    pair = register(service, s3, "cv-pair", high, "wan22 pair", low_noise_source=upload(s3, "cv-pair", low))
    assert pair["family"] == "wan" and pair["variant"] == "14B" and pair["low_noise_source"].endswith(low.name)
    status, uploaded = service.upload({"name": "uploaded pair"}, {"file": high, "low_noise_file": low})  # both files in one form
    assert status == 201 and uploaded["low_noise_sha256"] == hashlib.sha256(low.read_bytes()).hexdigest(), uploaded
    status, err = service.upload({"name": "bad pair"}, {"file": high, "low_noise_file": cached_dit_lora(DitLoraSpec(WAN21_T2V, "kohya"))})
    assert status == 422 and "high-noise 14B, low-noise 1.3B" in err["error"]["message"]
    video = {**VIDEO, "steps": 2, "switch_step": 1}
    runs = {}
    for label, extra in {"none": {}, "pair": {"character_id": "cv-pair"},
                         "high only": {"character_id": "cv-pair", "expert_strengths": {"low_noise": 0.0}}}.items():
        rec, (clip,) = generate(service, "wan22_t2v", **{"params": video, **extra})
        runs[label] = frames_of(clip)
        if extra:
            assert rec["path"] == "direct" and sorted(a["source_node"] for a in rec["applied"]) == ["75", "76"], rec
    for a, b in (("pair", "none"), ("high only", "none"), ("pair", "high only")):  # each expert's file and strength act
        assert np.abs(runs[a] - runs[b]).mean() > 0.1, (a, b)
    # a pair whose low-noise file left the bucket before any pod cached it: dropped as one (fallback), or the
    # job fails naming it (strict)
    high2, low2 = (cached_dit_lora(DitLoraSpec(WAN22_EXPERT, "kohya", seed=20 + i)) for i in range(2))
    register(service, s3, "cv-pair-2", high2, "wan22 pair 2", low_noise_source=upload(s3, "cv-pair-2", low2))
    s3.client.delete_object(Bucket="loras", Key=f"video/cv-pair-2/{low2.name}")
    rec, _ = generate(service, "wan22_t2v", params=video, character_id="cv-pair-2")
    assert rec["applied"] == [] and any("could not be fetched" in w for w in rec["warnings"]), rec["warnings"]
    status, rec = service.call("POST", "/v1/generations?wait=true", {"template": "wan22_t2v", "params": video,
                                                                    "character_id": "cv-pair-2", "lora_policy": "strict"})
    assert status == 200 and rec["status"] == "failed" and "could not be fetched" in rec["reason"], rec
