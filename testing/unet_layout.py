"""Tensor names and shapes of UNet checkpoints (SD1.x and SDXL, LDM/SGM layout), generated procedurally.

ComfyUI detects the model family from these names and shapes, so a random-weight file with
this layout loads as ``SD15`` or as an SDXL-family model. The UNet size is configurable: the
tiny SD1.x preset keeps ``model_channels`` 320 and ``context_dim`` 768 (what detection needs)
with one level and one res block; the full preset is SD1.5's real UNet (about 860 M
parameters). SDXL's own depth (10 transformer blocks per deep level, 2.6 B parameters) is too
large to generate here, so the SDXL preset takes the smallest depth ComfyUI detects as an SDXL
model (Segmind Vega's ``[0, 0, 1, 1, 2, 2]``: the SDXL model class, both text encoders), with
the real CLIP-L and CLIP-G (open_clip layout, as SDXL checkpoints store it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from .layer import Layer, Shape
from .vae_layout import kl_vae_layers

CLIP_VOCAB = 49408
CLIP_POSITIONS = 77


@dataclass(frozen=True)
class UNetSpec:
    """Shape parameters of an SD1.x / SDXL UNet."""

    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1,)
    num_res_blocks: int = 1
    transformer_depth: tuple[int, ...] = (1,)  # transformer blocks per attention, per level (0: none)
    middle_depth: int = 1
    context_dim: int = 768
    linear_proj: bool = False  # SDXL's proj_in/proj_out are linear layers, SD1.x's 1x1 convs
    adm_in_channels: int = 0  # SDXL's size/crop conditioning (``label_emb``)

    @property
    def sdxl(self) -> bool:
        return self.context_dim == 2048


TINY_UNET = UNetSpec()
FULL_UNET = UNetSpec(channel_mult=(1, 2, 4, 4), num_res_blocks=2, transformer_depth=(1, 1, 1, 0))
SDXL_UNET = UNetSpec(channel_mult=(1, 2, 4), num_res_blocks=2, transformer_depth=(0, 1, 2), context_dim=2048,
                     linear_proj=True, adm_in_channels=2816)


@dataclass(frozen=True)
class UNetLayer(Layer):
    """A UNet / CLIP layer (LDM name), and where LoRAs address it."""

    diffusers_name: str | None = None  # diffusers name of LoRA-targetable layers
    conv_block: bool = False  # a res block / resampler layer: LoCon targets it, plain LoRAs do not


@dataclass
class _Builder:
    layers: list[UNetLayer] = field(default_factory=list)

    def add(self, name: str, shape: Shape, bias: bool = True, diffusers_name: str | None = None,
            conv_block: bool = False) -> None:
        self.layers.append(UNetLayer(name, shape, bias=bias, diffusers_name=diffusers_name, conv_block=conv_block))

    def norm(self, name: str, channels: int) -> None:
        self.layers.append(UNetLayer(name, (channels,), norm=True))

    def raw(self, name: str, shape: Shape) -> None:
        self.layers.append(UNetLayer(name, shape, bias=False, raw=True))


def _resblock(b: _Builder, p: str, cin: int, cout: int, emb: int, dp: str) -> None:
    """A ResBlock; ``dp`` is its diffusers name (…resnets.N)."""
    b.norm(f"{p}.in_layers.0", cin)
    b.add(f"{p}.in_layers.2", (cout, cin, 3, 3), diffusers_name=f"{dp}.conv1", conv_block=True)
    b.add(f"{p}.emb_layers.1", (cout, emb), diffusers_name=f"{dp}.time_emb_proj", conv_block=True)
    b.norm(f"{p}.out_layers.0", cout)
    b.add(f"{p}.out_layers.3", (cout, cout, 3, 3), diffusers_name=f"{dp}.conv2", conv_block=True)
    if cin != cout:
        b.add(f"{p}.skip_connection", (cout, cin, 1, 1), diffusers_name=f"{dp}.conv_shortcut", conv_block=True)


def _transformer(b: _Builder, spec: UNetSpec, p: str, ch: int, depth: int, dp: str) -> None:
    """A SpatialTransformer of ``depth`` blocks; ``dp`` is its diffusers name (…attentions.N)."""
    proj = (ch, ch) if spec.linear_proj else (ch, ch, 1, 1)
    b.norm(f"{p}.norm", ch)
    b.add(f"{p}.proj_in", proj, diffusers_name=f"{dp}.proj_in")
    for k in range(depth):
        t, dt = f"{p}.transformer_blocks.{k}", f"{dp}.transformer_blocks.{k}"
        for attn, kv_dim in (("attn1", ch), ("attn2", spec.context_dim)):
            b.add(f"{t}.{attn}.to_q", (ch, ch), bias=False, diffusers_name=f"{dt}.{attn}.to_q")
            b.add(f"{t}.{attn}.to_k", (ch, kv_dim), bias=False, diffusers_name=f"{dt}.{attn}.to_k")
            b.add(f"{t}.{attn}.to_v", (ch, kv_dim), bias=False, diffusers_name=f"{dt}.{attn}.to_v")
            b.add(f"{t}.{attn}.to_out.0", (ch, ch), diffusers_name=f"{dt}.{attn}.to_out.0")
        b.add(f"{t}.ff.net.0.proj", (ch * 8, ch), diffusers_name=f"{dt}.ff.net.0.proj")
        b.add(f"{t}.ff.net.2", (ch, ch * 4), diffusers_name=f"{dt}.ff.net.2")
        for n in ("norm1", "norm2", "norm3"):
            b.norm(f"{t}.{n}", ch)
    b.add(f"{p}.proj_out", proj, diffusers_name=f"{dp}.proj_out")


def unet_layers(spec: UNetSpec) -> list[UNetLayer]:
    """Layers of the UNet under ``model.diffusion_model.`` (names without that prefix)."""
    b = _Builder()
    mc, n = spec.model_channels, spec.num_res_blocks
    emb = mc * 4
    b.add("time_embed.0", (emb, mc))
    b.add("time_embed.2", (emb, emb))
    if spec.adm_in_channels:
        b.add("label_emb.0.0", (emb, spec.adm_in_channels))
        b.add("label_emb.0.2", (emb, emb))
    b.add("input_blocks.0.0", (mc, 4, 3, 3))
    ch, chans, idx = mc, [mc], 1
    last = len(spec.channel_mult) - 1
    for level, mult in enumerate(spec.channel_mult):
        depth = spec.transformer_depth[level]
        for j in range(n):
            _resblock(b, f"input_blocks.{idx}.0", ch, mult * mc, emb, f"down_blocks.{level}.resnets.{j}")
            ch = mult * mc
            if depth:
                _transformer(b, spec, f"input_blocks.{idx}.1", ch, depth, f"down_blocks.{level}.attentions.{j}")
            chans.append(ch)
            idx += 1
        if level != last:
            b.add(f"input_blocks.{idx}.0.op", (ch, ch, 3, 3), diffusers_name=f"down_blocks.{level}.downsamplers.0.conv",
                  conv_block=True)
            chans.append(ch)
            idx += 1
    _resblock(b, "middle_block.0", ch, ch, emb, "mid_block.resnets.0")
    _transformer(b, spec, "middle_block.1", ch, spec.middle_depth, "mid_block.attentions.0")
    _resblock(b, "middle_block.2", ch, ch, emb, "mid_block.resnets.1")
    idx = 0
    for up, (level, mult) in enumerate(reversed(list(enumerate(spec.channel_mult)))):
        depth = spec.transformer_depth[level]
        for j in range(n + 1):
            _resblock(b, f"output_blocks.{idx}.0", ch + chans.pop(), mc * mult, emb, f"up_blocks.{up}.resnets.{j}")
            ch = mc * mult
            sub = 1
            if depth:
                _transformer(b, spec, f"output_blocks.{idx}.1", ch, depth, f"up_blocks.{up}.attentions.{j}")
                sub = 2
            if level and j == n:
                b.add(f"output_blocks.{idx}.{sub}.conv", (ch, ch, 3, 3), diffusers_name=f"up_blocks.{up}.upsamplers.0.conv",
                      conv_block=True)
            idx += 1
    b.norm("out.0", ch)
    b.add("out.2", (4, ch, 3, 3))
    return b.layers


@dataclass(frozen=True)
class ClipSpec:
    """A CLIP tower: text encoders CLIP-L (SD1.x, SDXL's first) or OpenCLIP bigG (SDXL's second), or
    a vision encoder."""

    width: int = 768
    layers: int = 12


CLIP_L = ClipSpec()
CLIP_G = ClipSpec(1280, 32)
CLIP_VISION_H = ClipSpec(1280, 32)  # the vision tower of CLIP ViT-H/14


def _clip_encoder(b: _Builder, clip: ClipSpec, prefix: str = "", lora_prefix: str | None = None) -> None:
    """The transformer layers of a CLIP tower (transformers layout) under ``prefix``; LoRAs name them
    ``{lora_prefix}{name}`` (none for a tower no LoRA targets)."""
    w = clip.width
    for i in range(clip.layers):
        p = f"encoder.layers.{i}"

        def add(name: str, shape: Shape, p: str = p) -> None:
            b.add(f"{prefix}{p}.{name}", shape, diffusers_name=lora_prefix and f"{lora_prefix}{p}.{name}")

        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            add(f"self_attn.{proj}", (w, w))
        b.norm(f"{prefix}{p}.layer_norm1", w)
        b.norm(f"{prefix}{p}.layer_norm2", w)
        add("mlp.fc1", (w * 4, w))
        add("mlp.fc2", (w, w * 4))


def clip_layers(clip: ClipSpec = CLIP_L) -> list[UNetLayer]:
    """Text encoder layers in the transformers layout (under ``…transformer.text_model.``); their
    names are also the ones LoRAs use for both encoders."""
    b = _Builder()
    w = clip.width
    b.add("embeddings.token_embedding", (CLIP_VOCAB, w), bias=False)
    b.add("embeddings.position_embedding", (CLIP_POSITIONS, w), bias=False)
    _clip_encoder(b, clip, lora_prefix="text_model.")
    b.norm("final_layer_norm", w)
    return b.layers


def clip_vision_layers() -> list[UNetLayer]:
    """CLIP ViT-H/14's vision tower (``clip_vision_h``, which Wan 2.1 I2V conditions on) in the
    transformers layout ComfyUI's ``CLIPVisionLoader`` detects by its 32 layers (632 M parameters)."""
    b = _Builder()
    w = CLIP_VISION_H.width
    b.raw("vision_model.embeddings.class_embedding", (w,))
    b.add("vision_model.embeddings.patch_embedding", (w, 3, 14, 14), bias=False)
    b.add("vision_model.embeddings.position_embedding", ((224 // 14) ** 2 + 1, w), bias=False)
    b.norm("vision_model.pre_layrnorm", w)
    _clip_encoder(b, CLIP_VISION_H, "vision_model.")
    b.norm("vision_model.post_layernorm", w)
    b.add("visual_projection", (1024, w), bias=False)
    return b.layers


def open_clip_layers(clip: ClipSpec = CLIP_G) -> list[UNetLayer]:
    """A text encoder in the open_clip layout SDXL checkpoints store CLIP-G in (``…model.``)."""
    b = _Builder()
    w = clip.width
    b.add("token_embedding", (CLIP_VOCAB, w), bias=False)
    b.raw("positional_embedding", (CLIP_POSITIONS, w))
    for i in range(clip.layers):
        p = f"transformer.resblocks.{i}"
        b.norm(f"{p}.ln_1", w)
        b.raw(f"{p}.attn.in_proj_weight", (3 * w, w))
        b.raw(f"{p}.attn.in_proj_bias", (3 * w,))
        b.add(f"{p}.attn.out_proj", (w, w))
        b.norm(f"{p}.ln_2", w)
        b.add(f"{p}.mlp.c_fc", (4 * w, w))
        b.add(f"{p}.mlp.c_proj", (w, 4 * w))
    b.norm("ln_final", w)
    b.raw("text_projection", (w, w))
    return b.layers


UNET_PREFIX = "model.diffusion_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."
VAE_PREFIX = "first_stage_model."


def checkpoint_layers(spec: UNetSpec) -> Iterator[tuple[str, Layer]]:
    """Every layer of a full SD1.x or SDXL checkpoint with its key prefix."""
    parts: tuple[tuple[str, list[UNetLayer] | list[Layer]], ...]
    if spec.sdxl:
        parts = ((UNET_PREFIX, unet_layers(spec)), (SDXL_CLIP_L_PREFIX, clip_layers(CLIP_L)),
                 (SDXL_CLIP_G_PREFIX, open_clip_layers(CLIP_G)), (VAE_PREFIX, kl_vae_layers()))
    else:
        parts = ((UNET_PREFIX, unet_layers(spec)), (CLIP_PREFIX, clip_layers(CLIP_L)), (VAE_PREFIX, kl_vae_layers()))
    for prefix, layers in parts:
        for layer in layers:
            yield prefix, layer
