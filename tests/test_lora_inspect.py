"""Header parsing, inspection and base-model detection of LoRA files (torch-free core)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from comfyui_lora_bridge.bridge.lorafiles.header import InvalidLoraFile, parse_header
from comfyui_lora_bridge.bridge.lorafiles.inspect import inspect_file, trigger_words
from comfyui_lora_bridge.bridge.lorafiles.validate import (
    LoraNotFound,
    LoraValidationError,
    SizeLimits,
    check_extension,
    resolve_name,
    safe_name,
)
from comfyui_lora_bridge.testing.dit_layout import (
    FLUX,
    QWEN_IMAGE,
    WAN21_T2V,
    Z_IMAGE,
    DitSpec,
)
from comfyui_lora_bridge.testing.weights import (
    DitLoraSpec,
    LoraSpec,
    dit_lora_tensors,
    write_lora,
    write_safetensors,
)
from foreign_loras import (
    KEYSETS,
    write_foreign_lora,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def _file(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize("layout, fmt", [("kohya", "kohya_lora"), ("peft", "peft"), ("loha", "lycoris_loha")])
def test_unet_layouts_are_described(weights, layout, fmt) -> None:
    info = inspect_file(weights.loras[layout])
    assert (info.format, info.family, info.family_source) == (fmt, "sd15", "keys")
    assert info.targets == ["text_encoder", "unet"]
    assert info.ranks == [8]
    assert info.alphas == ([] if layout == "peft" else [8.0])
    assert info.trigger_words == ["ohwx"]
    assert info.metadata["ss_base_model_version"] == "sd_v1"
    assert len(info.sha256) == 64 and info.autov2 == info.sha256[:10].upper()
    assert info.size == Path(weights.loras[layout]).stat().st_size


@pytest.mark.parametrize("family, layout", [(f, lay) for f, lays in KEYSETS.items() for lay in lays])
def test_other_families_are_detected_from_keys(tmp_path, family, layout) -> None:
    info = inspect_file(write_foreign_lora(tmp_path / "x.safetensors", family, layout))
    assert info.family == family, info.family_evidence
    assert info.family_source == "keys"
    assert info.ranks == [2]


@pytest.mark.parametrize("layout", ["kohya", "diffusion_model", "diffusers", "diffsynth"])
@pytest.mark.parametrize("model, variant, name", [
    (FLUX, "Flux.1", "Flux.1"), (WAN21_T2V, "1.3B", "Wan 2.x 1.3B"), (QWEN_IMAGE, None, "Qwen-Image"), (Z_IMAGE, None, "Z-Image/Lumina2"),
    (DitSpec("wan", 5120, ffn_width=13824), "14B", "Wan 2.x 14B"), (DitSpec("wan", 3072, ffn_width=14336), "2.2 5B", "Wan 2.x 2.2 5B"),
])
def test_transformer_loras_name_the_variant_they_cannot_cross(tmp_path, model, variant, name, layout) -> None:
    info = inspect_file(write_safetensors(tmp_path / "x.safetensors", dit_lora_tensors(DitLoraSpec(model, layout)), None))
    assert (info.family, info.variant, info.family_name) == (model.family, variant, name)
    assert info.to_dict()["family_name"] == name


def test_unknown_keys_say_unknown_and_metadata_is_only_a_hint(tmp_path) -> None:
    import numpy as np

    tensors = {"foo.bar.lora_A.weight": np.zeros((2, 64), np.float16), "foo.bar.lora_B.weight": np.zeros((64, 2), np.float16)}
    plain = inspect_file(write_safetensors(tmp_path / "a.safetensors", tensors, None))
    assert plain.family == "unknown"
    hinted = inspect_file(write_safetensors(tmp_path / "b.safetensors", tensors, {"ss_base_model_version": "sdxl_base_v1-0"}))
    assert (hinted.family, hinted.family_source) == ("sdxl", "metadata")
    lying = write_lora(tmp_path / "c.safetensors", LoraSpec())
    raw = lying.read_bytes().replace(b'"sd_v1"', b'"sdxl1"').replace(b"stable-diffusion-v1/", b"stable-diffusion-xl/")
    lying.write_bytes(raw)
    info = inspect_file(lying)
    assert info.family == "sd15" and any("metadata says SDXL" in w for w in info.warnings)


def test_trigger_words() -> None:
    assert trigger_words({"modelspec.trigger_phrase": "zwx man, red scarf"}) == ["zwx man", "red scarf"]
    freq = {"10_a": {"ohwx": 40, "1girl": 12}, "5_b": {"ohwx": 5, "smile": 30}}
    assert trigger_words({"ss_tag_frequency": json.dumps(freq)}) == ["ohwx"]  # counted across folders
    tied = {"10_a": {"ohwx": 20, "smile": 20, "1girl": 3}}
    assert trigger_words({"ss_tag_frequency": json.dumps(tied)}) == ["ohwx", "smile"]
    assert trigger_words({"ss_tag_frequency": "not json"}) == []


@pytest.mark.parametrize(
    "blob, problem",
    [
        (b"\x01\x02", "too short"),
        (struct.pack("<Q", 2**63) + b"{}", "exceeds the limit"),
        (struct.pack("<Q", 500) + b"{}", "past the end"),
        (struct.pack("<Q", 4) + b"[1,2", "not valid JSON"),
        (_file({"a": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 6]}}, b"\0" * 8), "needs 8 bytes"),
        (_file({"a": {"dtype": "F99", "shape": [1], "data_offsets": [0, 2]}}, b"\0" * 2), "unknown dtype"),
        (_file({"a": {"dtype": "F16", "shape": [-1], "data_offsets": [0, 2]}}, b"\0" * 2), "non-negative"),
        (_file({"a": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]}, "b": {"dtype": "F16", "shape": [4], "data_offsets": [4, 12]}}, b"\0" * 12), "overlap"),
        (_file({"a": {"dtype": "F32", "shape": [1024], "data_offsets": [0, 4096]}}, b"\0" * 100), "truncated"),
        (_file({"__metadata__": {"k": 1}}), "strings to strings"),
        (struct.pack("<Q", 17) + b'{"a":1, "a":2}   ', "duplicate key"),
    ],
)
def test_corrupt_headers_name_the_problem(tmp_path, blob, problem) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    with pytest.raises(InvalidLoraFile, match=problem):
        inspect_file(path)


def test_truncated_real_file_is_refused(tmp_path, weights) -> None:
    data = Path(weights.loras["kohya"]).read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidLoraFile, match="truncated"):
        inspect_file(path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_fuzz_random_bytes_never_crash(blob: bytes) -> None:
    try:
        parse_header(blob, file_size=len(blob))
    except InvalidLoraFile:
        pass


_tensor = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F16", "F32", "BF16", "I8", "X"]),
    "shape": st.lists(st.integers(-2, 2**40), max_size=4),
    "data_offsets": st.lists(st.integers(-5, 2**62), min_size=0, max_size=3),
})


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _tensor, max_size=6), st.integers(0, 4096))
def test_fuzz_structured_headers_never_crash_or_lie(tensors: dict, data_len: int) -> None:
    blob = _file(tensors, b"\0" * data_len)
    try:
        header = parse_header(blob, file_size=len(blob))
    except InvalidLoraFile:
        return
    spans = sorted((t.start, t.end) for t in header.tensors.values())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert header.data_start + header.data_size <= len(blob)


def test_validation_rules() -> None:
    assert check_extension("a.safetensors") == ".safetensors"
    with pytest.raises(LoraValidationError, match="pickle"):
        check_extension("a.ckpt")
    assert check_extension("a.pt", allow_pickle=True) == ".pt"
    limits = SizeLimits(warn_bytes=100, max_bytes=1000)
    assert limits.check(50) is None and "large" in limits.check(500)
    with pytest.raises(LoraValidationError, match="over the limit"):
        limits.check(5000)
    for bad in ("../x.safetensors", "/etc/passwd", "a/b", ".hidden", "x\x00y", ""):
        with pytest.raises(LoraValidationError):
            safe_name(bad)


def test_names_resolve_and_say_what_exists() -> None:
    files = ["char42.safetensors", "brand/abc.safetensors", "old.ckpt"]
    assert resolve_name("char42", files) == "char42.safetensors"
    assert resolve_name("brand/abc.safetensors", files) == "brand/abc.safetensors"
    with pytest.raises(LoraNotFound, match="did you mean: char42.safetensors") as err:
        resolve_name("char42.pt", files)
    assert err.value.candidates == ["char42.safetensors"]
    with pytest.raises(LoraNotFound, match="pickle formats are refused"):
        resolve_name("old", files)
    assert resolve_name("old", files, allow_pickle=True) == "old.ckpt"
    with pytest.raises(LoraValidationError):
        resolve_name("../secrets.safetensors", files)
