"""Small LoRAs with other base models' key names and shapes (SDXL, Flux, Wan, …).

They exercise family detection and the wrong-base-model safety checks without the real
models: each holds a few modules with the exact names and widths that real trainers write.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from comfyui_lora_bridge.testing.weights import write_safetensors

# family -> layout -> {module name: (out_features, in_features)}
KEYSETS: dict[str, dict[str, dict[str, tuple[int, int]]]] = {
    "sd2": {
        "kohya": {
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (320, 1024),
            "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q": (1280, 1280),
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (1024, 1024),
        },
    },
    "sdxl": {
        "kohya": {
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k": (640, 2048),
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": (640, 640),
            "lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_q": (1280, 1280),
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
            "lora_te2_text_model_encoder_layers_0_self_attn_q_proj": (1280, 1280),
        },
        "peft": {
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": (640, 2048),
            "unet.up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (1280, 1280),
            "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj": (1280, 1280),
        },
    },
    "sd3": {
        "peft": {
            "transformer.transformer_blocks.0.attn.to_q": (1536, 1536),
            "transformer.transformer_blocks.0.attn.add_q_proj": (1536, 1536),
            "transformer.transformer_blocks.23.ff.net.0.proj": (6144, 1536),
        },
        "kohya": {
            "lora_unet_joint_blocks_0_x_block_attn_qkv": (4608, 1536),
            "lora_unet_joint_blocks_0_context_block_attn_qkv": (4608, 1536),
        },
    },
    "flux": {
        "kohya": {
            "lora_unet_double_blocks_0_img_attn_qkv": (9216, 3072),
            "lora_unet_double_blocks_0_img_mlp_0": (12288, 3072),
            "lora_unet_single_blocks_37_linear1": (21504, 3072),
        },
        "peft": {
            "transformer.transformer_blocks.0.attn.to_q": (3072, 3072),
            "transformer.single_transformer_blocks.0.attn.to_q": (3072, 3072),
            "transformer.single_transformer_blocks.37.proj_mlp": (12288, 3072),
        },
    },
    "qwen_image": {
        "peft": {
            "transformer.transformer_blocks.0.img_mlp.net.0.proj": (12288, 3072),
            "transformer.transformer_blocks.0.attn.add_q_proj": (3072, 3072),
            "transformer.transformer_blocks.59.txt_mlp.net.2": (3072, 12288),
        },
    },
    "wan": {
        "peft": {
            "diffusion_model.blocks.0.self_attn.q": (5120, 5120),
            "diffusion_model.blocks.0.cross_attn.k": (5120, 4096),
            "diffusion_model.blocks.39.ffn.0": (13824, 5120),
        },
        "kohya": {
            "lora_unet_blocks_0_self_attn_q": (1536, 1536),
            "lora_unet_blocks_29_ffn_2": (1536, 8960),
        },
    },
    "hunyuan_video": {
        "peft": {
            "diffusion_model.double_blocks.0.img_attn_qkv": (9216, 3072),
            "diffusion_model.double_blocks.19.img_mlp.fc1": (12288, 3072),
            "diffusion_model.single_blocks.39.linear1": (21504, 3072),
        },
    },
    "lumina2": {
        "peft": {
            "diffusion_model.layers.0.attention.qkv": (11520, 3840),
            "diffusion_model.layers.0.feed_forward.w1": (10240, 3840),
            "diffusion_model.noise_refiner.0.attention.out": (3840, 3840),
        },
    },
}


def foreign_lora_tensors(family: str, layout: str = "kohya", rank: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Tensors of a small ``family`` LoRA in ``layout`` (``kohya`` or ``peft``)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for module, (out_dim, in_dim) in KEYSETS[family][layout].items():
        down, up = (".lora_A.weight", ".lora_B.weight") if layout == "peft" else (".lora_down.weight", ".lora_up.weight")
        out[module + down] = (rng.standard_normal((rank, in_dim)) * 0.1).astype(np.float16)
        out[module + up] = (rng.standard_normal((out_dim, rank)) * 0.1).astype(np.float16)
        if layout == "kohya":
            out[module + ".alpha"] = np.array(float(rank), dtype=np.float32)
    return out


def write_foreign_lora(path: Path, family: str, layout: str = "kohya", rank: int = 2) -> Path:
    """Write a small ``family`` LoRA (no metadata: the keys alone must tell)."""
    return write_safetensors(Path(path), foreign_lora_tensors(family, layout, rank), None)
