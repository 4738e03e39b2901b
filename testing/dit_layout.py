"""Tensor names and shapes of transformer diffusion models (Flux.1, Wan 2.1/2.2, Qwen-Image, Z-Image), generated procedurally.

Written as diffusion-model files (what ComfyUI's ``UNETLoader`` reads), with the names
ComfyUI's own detection (``comfy/model_detection.py``) recognises. Sizes are the smallest
detection allows: Flux keeps its width of 3072 (ComfyUI 0.3.x fixes 24 heads of 128) with
one double and one single block; Wan keeps the width of the variant (1536 for 1.3B, 5120 for
14B and each expert of Wan 2.2 A14B: the width a LoRA cannot cross) with one block, image-to-video
models taking 36 input channels (and Wan 2.1 I2V its CLIP-vision projection); Qwen-Image keeps its fixed width (3072, text 3584) with one block;
Z-Image (Lumina 2's NextDiT) keeps the width at which ComfyUI turns on its Z-Image settings
(3840) with one layer besides the two noise and two context refiner layers it always builds. Each LoRA-targetable linear layer carries the names the
trainers use for it (``diffusers``: diffusers/PEFT module name, with the slice of a fused
layer it covers).
"""

from __future__ import annotations

from dataclasses import dataclass

from .layer import Layer, Shape


@dataclass(frozen=True)
class DiffusersPart:
    """A diffusers module that covers rows ``[offset, offset + size)`` of a fused model weight."""

    name: str
    offset: int = 0
    size: int | None = None  # None: the whole output width


@dataclass(frozen=True)
class DitLayer(Layer):
    """A layer of a transformer model, and its diffusers names (empty: not targeted)."""

    diffusers: tuple[DiffusersPart, ...] = ()


@dataclass(frozen=True)
class DitSpec:
    """Which transformer model to generate."""

    family: str  # "flux", "wan", "qwen_image" or "lumina2" (Z-Image)
    width: int
    blocks: int = 1
    single_blocks: int = 1  # Flux: single blocks; Z-Image: refiner layers of each kind
    text_width: int = 4096  # T5-XXL / UMT5-XXL hidden size: the conditioning the model reads
    pooled_width: int = 768  # Flux: CLIP-L pooled output
    ffn_width: int = 8960  # Wan (the 1.3B model's) and Z-Image
    in_channels: int = 16  # Wan: 36 for image-to-video (latent + mask + start-image latent)
    clip_vision: bool = False  # Wan 2.1 I2V: CLIP-vision projection and image cross-attention


FLUX = DitSpec("flux", 3072)
WAN21_T2V = DitSpec("wan", 1536)
WAN21_I2V = DitSpec("wan", 1536, in_channels=36, clip_vision=True)  # Wan2.1-Fun-1.3B-InP's shape
WAN22_EXPERT = DitSpec("wan", 5120, ffn_width=13824)  # each of Wan 2.2 A14B T2V's high- and low-noise experts
WAN22_I2V_EXPERT = DitSpec("wan", 5120, ffn_width=13824, in_channels=36)  # Wan 2.2 A14B I2V's (no CLIP vision)
QWEN_IMAGE = DitSpec("qwen_image", 3072, single_blocks=0, text_width=3584)  # text: Qwen2.5-VL 7B's width
Z_IMAGE = DitSpec("lumina2", 3840, single_blocks=2, text_width=2560, ffn_width=10240)  # text: Qwen3-4B's width


def _flux_layers(spec: DitSpec) -> list[DitLayer]:
    h, mlp = spec.width, spec.width * 4
    out: list[DitLayer] = [
        DitLayer("img_in", (h, 64), diffusers=(DiffusersPart("x_embedder"),)),
        DitLayer("txt_in", (h, spec.text_width), diffusers=(DiffusersPart("context_embedder"),)),
        DitLayer("time_in.in_layer", (h, 256)), DitLayer("time_in.out_layer", (h, h)),
        DitLayer("vector_in.in_layer", (h, spec.pooled_width)), DitLayer("vector_in.out_layer", (h, h)),
    ]
    for i in range(spec.blocks):
        p, d = f"double_blocks.{i}", f"transformer_blocks.{i}"
        for side, attn, ff, norm in (("img", "attn.to_", "ff", "norm1"), ("txt", "attn.add_", "ff_context", "norm1_context")):
            qkv = (("q", "k", "v") if side == "img" else ("q_proj", "k_proj", "v_proj"))
            out += [
                DitLayer(f"{p}.{side}_mod.lin", (6 * h, h), diffusers=(DiffusersPart(f"{d}.{norm}.linear"),)),
                DitLayer(f"{p}.{side}_attn.qkv", (3 * h, h), diffusers=tuple(
                    DiffusersPart(f"{d}.{attn}{x}", j * h, h) for j, x in enumerate(qkv))),
                DitLayer(f"{p}.{side}_attn.norm.query_norm", (128,), norm=True, scale_key="scale"),
                DitLayer(f"{p}.{side}_attn.norm.key_norm", (128,), norm=True, scale_key="scale"),
                DitLayer(f"{p}.{side}_attn.proj", (h, h), diffusers=(
                    DiffusersPart(f"{d}.attn.to_out.0" if side == "img" else f"{d}.attn.to_add_out"),)),
                DitLayer(f"{p}.{side}_mlp.0", (mlp, h), diffusers=(DiffusersPart(f"{d}.{ff}.net.0.proj"),)),
                DitLayer(f"{p}.{side}_mlp.2", (h, mlp), diffusers=(DiffusersPart(f"{d}.{ff}.net.2"),)),
            ]
    for i in range(spec.single_blocks):
        p, d = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        out += [
            DitLayer(f"{p}.linear1", (3 * h + mlp, h), diffusers=(
                DiffusersPart(f"{d}.attn.to_q", 0, h), DiffusersPart(f"{d}.attn.to_k", h, h),
                DiffusersPart(f"{d}.attn.to_v", 2 * h, h), DiffusersPart(f"{d}.proj_mlp", 3 * h, mlp))),
            DitLayer(f"{p}.linear2", (h, h + mlp), diffusers=(DiffusersPart(f"{d}.proj_out"),)),
            DitLayer(f"{p}.norm.query_norm", (128,), norm=True, scale_key="scale"),
            DitLayer(f"{p}.norm.key_norm", (128,), norm=True, scale_key="scale"),
            DitLayer(f"{p}.modulation.lin", (3 * h, h), diffusers=(DiffusersPart(f"{d}.norm.linear"),)),
        ]
    out += [DitLayer("final_layer.linear", (64, h)), DitLayer("final_layer.adaLN_modulation.1", (2 * h, h))]
    return out


def _wan_layers(spec: DitSpec) -> list[DitLayer]:
    d, ffn = spec.width, spec.ffn_width
    out: list[DitLayer] = [
        DitLayer("patch_embedding", (d, spec.in_channels, 1, 2, 2)),
        DitLayer("text_embedding.0", (d, spec.text_width)), DitLayer("text_embedding.2", (d, d)),
        DitLayer("time_embedding.0", (d, 256)), DitLayer("time_embedding.2", (d, d)),
        DitLayer("time_projection.1", (6 * d, d)),
    ]
    for i in range(spec.blocks):
        p, dp = f"blocks.{i}", f"blocks.{i}"
        for attn, dattn in (("self_attn", "attn1"), ("cross_attn", "attn2")):
            for proj, dproj in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0")):
                out.append(DitLayer(f"{p}.{attn}.{proj}", (d, d), diffusers=(DiffusersPart(f"{dp}.{dattn}.{dproj}"),)))
            out += [DitLayer(f"{p}.{attn}.norm_q", (d,), bias=False, norm=True),
                    DitLayer(f"{p}.{attn}.norm_k", (d,), bias=False, norm=True)]
        if spec.clip_vision:
            out += [DitLayer(f"{p}.cross_attn.k_img", (d, d), diffusers=(DiffusersPart(f"{dp}.attn2.add_k_proj"),)),
                    DitLayer(f"{p}.cross_attn.v_img", (d, d), diffusers=(DiffusersPart(f"{dp}.attn2.add_v_proj"),)),
                    DitLayer(f"{p}.cross_attn.norm_k_img", (d,), bias=False, norm=True)]
        out += [
            DitLayer(f"{p}.norm3", (d,), norm=True),
            DitLayer(f"{p}.ffn.0", (ffn, d), diffusers=(DiffusersPart(f"{dp}.ffn.net.0.proj"),)),
            DitLayer(f"{p}.ffn.2", (d, ffn), diffusers=(DiffusersPart(f"{dp}.ffn.net.2"),)),
            DitLayer(f"{p}.modulation", (1, 6, d), raw=True),
        ]
    out += [DitLayer("head.head", (64, d)), DitLayer("head.modulation", (1, 2, d), raw=True)]
    if spec.clip_vision:  # CLIP ViT-H features (1280 wide) into the model's width
        out += [DitLayer("img_emb.proj.0", (1280,), norm=True),
                DitLayer("img_emb.proj.1", (1280, 1280), diffusers=(DiffusersPart("condition_embedder.image_embedder.ff.net.0.proj"),)),
                DitLayer("img_emb.proj.3", (d, 1280), diffusers=(DiffusersPart("condition_embedder.image_embedder.ff.net.2"),)),
                DitLayer("img_emb.proj.4", (d,), norm=True)]
    return out


def _qwen_layers(spec: DitSpec) -> list[DitLayer]:
    """Qwen-Image: ComfyUI's module names are diffusers' own (``transformer_blocks.0.attn.to_q``)."""
    h, mlp = spec.width, spec.width * 4

    def linear(name: str, shape: Shape) -> DitLayer:
        return DitLayer(name, shape, diffusers=(DiffusersPart(name),))

    out: list[DitLayer] = [
        linear("time_text_embed.timestep_embedder.linear_1", (h, 256)),
        linear("time_text_embed.timestep_embedder.linear_2", (h, h)),
        DitLayer("txt_norm", (spec.text_width,), bias=False, norm=True),
        linear("img_in", (h, 64)), linear("txt_in", (h, spec.text_width)),
    ]
    for i in range(spec.blocks):
        p = f"transformer_blocks.{i}"
        for side in ("img", "txt"):
            out += [linear(f"{p}.{side}_mod.1", (6 * h, h)), linear(f"{p}.{side}_mlp.net.0.proj", (mlp, h)),
                    linear(f"{p}.{side}_mlp.net.2", (h, mlp))]
        for proj in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out"):
            out.append(linear(f"{p}.attn.{proj}", (h, h)))
        out += [DitLayer(f"{p}.attn.{norm}", (128,), bias=False, norm=True)
                for norm in ("norm_q", "norm_k", "norm_added_q", "norm_added_k")]
    out += [linear("norm_out.linear", (2 * h, h)), linear("proj_out", (64, h))]
    return out


def _z_image_layers(spec: DitSpec) -> list[DitLayer]:
    """Z-Image: NextDiT with 30 heads of 128, a fused ``qkv``, SwiGLU feed-forward, 256-wide modulation."""
    d, ffn = spec.width, spec.ffn_width
    out: list[DitLayer] = [
        DitLayer("x_embedder", (d, 64)),
        DitLayer("t_embedder.mlp.0", (1024, 256)), DitLayer("t_embedder.mlp.2", (256, 1024)),
        DitLayer("cap_embedder.0", (spec.text_width,), bias=False, norm=True), DitLayer("cap_embedder.1", (d, spec.text_width)),
        DitLayer("x_pad_token", (1, d), raw=True), DitLayer("cap_pad_token", (1, d), raw=True),
    ]
    stacks = [("noise_refiner", spec.single_blocks, True), ("context_refiner", spec.single_blocks, False), ("layers", spec.blocks, True)]
    for stack, count, modulated in stacks:
        for i in range(count):
            p = f"{stack}.{i}"
            out += [
                DitLayer(f"{p}.attention.qkv", (3 * d, d), bias=False, diffusers=(
                    DiffusersPart(f"{p}.attention.to_q", 0, d), DiffusersPart(f"{p}.attention.to_k", d, d),
                    DiffusersPart(f"{p}.attention.to_v", 2 * d, d))),
                DitLayer(f"{p}.attention.out", (d, d), bias=False, diffusers=(DiffusersPart(f"{p}.attention.to_out.0"),)),
                DitLayer(f"{p}.attention.q_norm", (128,), bias=False, norm=True),
                DitLayer(f"{p}.attention.k_norm", (128,), bias=False, norm=True),
                DitLayer(f"{p}.feed_forward.w1", (ffn, d), bias=False, diffusers=(DiffusersPart(f"{p}.feed_forward.w1"),)),
                DitLayer(f"{p}.feed_forward.w2", (d, ffn), bias=False, diffusers=(DiffusersPart(f"{p}.feed_forward.w2"),)),
                DitLayer(f"{p}.feed_forward.w3", (ffn, d), bias=False, diffusers=(DiffusersPart(f"{p}.feed_forward.w3"),)),
            ] + [DitLayer(f"{p}.{norm}", (d,), bias=False, norm=True)
                 for norm in ("attention_norm1", "ffn_norm1", "attention_norm2", "ffn_norm2")]
            if modulated:
                out.append(DitLayer(f"{p}.adaLN_modulation.0", (4 * d, 256), diffusers=(DiffusersPart(f"{p}.adaLN_modulation.0"),)))
    out += [DitLayer("norm_final", (d,), bias=False, norm=True), DitLayer("final_layer.linear", (64, d)),
            DitLayer("final_layer.adaLN_modulation.1", (d, 256))]
    return out


def dit_layers(spec: DitSpec) -> list[DitLayer]:
    """Every layer of the model ``spec`` describes, in file order."""
    return {"flux": _flux_layers, "wan": _wan_layers, "qwen_image": _qwen_layers, "lumina2": _z_image_layers}[spec.family](spec)
