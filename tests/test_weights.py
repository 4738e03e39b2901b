"""Generated weights: deterministic, in the layouts real LoRA tools write, with kohya metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from comfyui_lora_bridge.testing.unet_layout import (
    FULL_UNET,
    TINY_UNET,
    checkpoint_layers,
)
from comfyui_lora_bridge.testing.weights import (
    LoraSpec,
    lora_tensors,
    write_lora,
)
from safetensors import safe_open


def _params(spec) -> int:
    total = 0
    for _, layer in checkpoint_layers(spec):
        total += int(np.prod(layer.shape)) + (layer.shape[0] if layer.bias else 0)
    return total


def test_checkpoint_sizes_match_sd15() -> None:
    # tiny: SD1.5's CLIP-L and VAE with a small UNet; full: SD1.5's ~1.07 B parameters.
    assert 200e6 < _params(TINY_UNET) < 260e6
    assert 1.0e9 < _params(FULL_UNET) < 1.1e9


def test_lora_files_are_deterministic(tmp_path: Path) -> None:
    a = write_lora(tmp_path / "a.safetensors", LoraSpec(seed=3))
    b = write_lora(tmp_path / "b.safetensors", LoraSpec(seed=3))
    c = write_lora(tmp_path / "c.safetensors", LoraSpec(seed=4))
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_kohya_layout_and_metadata(tmp_path: Path) -> None:
    path = write_lora(tmp_path / "k.safetensors", LoraSpec(layout="kohya", rank=4, alpha=2.0, trigger="sks"))
    with safe_open(str(path), "np") as f:
        keys = set(f.keys())
        meta = f.metadata()
        down = f.get_tensor("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight")
        alpha = f.get_tensor("lora_te_text_model_encoder_layers_11_mlp_fc2.alpha")
    assert down.shape == (4, 768)  # cross-attention keys read CLIP's 768-wide context
    assert float(alpha) == 2.0
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.") for k in keys)
    assert meta["ss_base_model_version"] == "sd_v1"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "2.0")
    tags = json.loads(meta["ss_tag_frequency"])
    assert max(next(iter(tags.values())).items(), key=lambda kv: kv[1])[0] == "sks"


def test_peft_and_loha_layouts() -> None:
    peft = lora_tensors(LoraSpec(layout="peft"))
    assert "unet.mid_block.attentions.0.proj_in.lora_A.weight" in peft
    assert "text_encoder.text_model.encoder.layers.0.self_attn.k_proj.lora_B.weight" in peft
    assert not any(k.endswith(".alpha") for k in peft)
    loha = lora_tensors(LoraSpec(layout="loha", rank=2))
    assert loha["lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_ff_net_2.hada_w2_b"].shape == (2, 1280)
