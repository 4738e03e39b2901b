"""Tensor names and shapes of the VAEs the generated models decode with.

- ``kl_vae_layers``: the KL-f8 autoencoder of SD1.x/SDXL checkpoints (4 latent channels, quant
  convs) and of Flux.1 and Z-Image (``ae.safetensors``: 16 channels, no quant convs). ComfyUI
  fixes its width, so it keeps the real size (84 M parameters).
- ``wan21_vae_layers``: the Wan 2.1 video VAE (causal 3-D convs, RMS norms, 16 channels, 4x
  temporal and 8x spatial compression), which Wan 2.1, Wan 2.2 A14B and Qwen-Image decode with.
  ComfyUI reads its base width from ``decoder.head.0.gamma``, so a narrow one is the real
  architecture at a fraction of the cost.
"""

from __future__ import annotations

from .layer import Layer, Shape


def _conv(name: str, shape: Shape) -> Layer:
    return Layer(name, shape)


def _norm(name: str, channels: int) -> Layer:
    return Layer(name, (channels,), norm=True)


def _kl_resnet(p: str, cin: int, cout: int) -> list[Layer]:
    out = [_norm(f"{p}.norm1", cin), _conv(f"{p}.conv1", (cout, cin, 3, 3)),
           _norm(f"{p}.norm2", cout), _conv(f"{p}.conv2", (cout, cout, 3, 3))]
    return out + ([_conv(f"{p}.nin_shortcut", (cout, cin, 1, 1))] if cin != cout else [])


def _kl_mid(p: str, ch: int) -> list[Layer]:
    attn = [_conv(f"{p}.attn_1.{n}", (ch, ch, 1, 1)) for n in ("q", "k", "v", "proj_out")]
    return _kl_resnet(f"{p}.block_1", ch, ch) + [_norm(f"{p}.attn_1.norm", ch)] + attn + _kl_resnet(f"{p}.block_2", ch, ch)


def kl_vae_layers(z: int = 4, quant_convs: bool = True) -> list[Layer]:
    """The KL-f8 autoencoder: SD's (``z`` 4, with quant convs) or Flux's (``z`` 16, without)."""
    ch, mult = 128, (1, 2, 4, 4)
    out = [_conv("encoder.conv_in", (ch, 3, 3, 3))]
    cin = ch
    for i, m in enumerate(mult):
        for j in range(2):
            out += _kl_resnet(f"encoder.down.{i}.block.{j}", cin, ch * m)
            cin = ch * m
        if i != len(mult) - 1:
            out.append(_conv(f"encoder.down.{i}.downsample.conv", (cin, cin, 3, 3)))
    out += _kl_mid("encoder.mid", cin) + [_norm("encoder.norm_out", cin), _conv("encoder.conv_out", (2 * z, cin, 3, 3))]
    if quant_convs:
        out += [_conv("quant_conv", (2 * z, 2 * z, 1, 1)), _conv("post_quant_conv", (z, z, 1, 1))]
    cin = ch * mult[-1]
    out += [_conv("decoder.conv_in", (cin, z, 3, 3))] + _kl_mid("decoder.mid", cin)
    for i in reversed(range(len(mult))):
        for j in range(3):
            out += _kl_resnet(f"decoder.up.{i}.block.{j}", cin, ch * mult[i])
            cin = ch * mult[i]
        if i != 0:
            out.append(_conv(f"decoder.up.{i}.upsample.conv", (cin, cin, 3, 3)))
    return out + [_norm("decoder.norm_out", cin), _conv("decoder.conv_out", (3, cin, 3, 3))]


def _rms(name: str, channels: int, dims: int = 3) -> Layer:
    """Wan's RMS norm: a ``gamma`` of shape (C, 1, …) and no bias."""
    return Layer(name, (channels,) + (1,) * dims, bias=False, norm=True, scale_key="gamma")


def _wan_residual(p: str, cin: int, cout: int) -> list[Layer]:
    out = [_rms(f"{p}.residual.0", cin), _conv(f"{p}.residual.2", (cout, cin, 3, 3, 3)),
           _rms(f"{p}.residual.3", cout), _conv(f"{p}.residual.6", (cout, cout, 3, 3, 3))]
    return out + ([_conv(f"{p}.shortcut", (cout, cin, 1, 1, 1))] if cin != cout else [])


def _wan_middle(p: str, ch: int) -> list[Layer]:
    attn = [_rms(f"{p}.middle.1.norm", ch, 2), _conv(f"{p}.middle.1.to_qkv", (3 * ch, ch, 1, 1)),
            _conv(f"{p}.middle.1.proj", (ch, ch, 1, 1))]
    return _wan_residual(f"{p}.middle.0", ch, ch) + attn + _wan_residual(f"{p}.middle.2", ch, ch)


def wan21_vae_layers(dim: int = 16, z: int = 16) -> list[Layer]:
    """The Wan 2.1 VAE of base width ``dim`` (the released one: 96), as ComfyUI's ``WanVAE`` names it."""
    dims = [dim * m for m in (1, 1, 2, 4, 4)]
    temporal = (False, True, True)  # which down levels also halve time (the up path mirrors it)
    out = [_conv("encoder.conv1", (dim, 3, 3, 3, 3))]
    n = 0
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(2):
            out += _wan_residual(f"encoder.downsamples.{n}", cin, cout)
            cin, n = cout, n + 1
        if i != 3:
            out.append(_conv(f"encoder.downsamples.{n}.resample.1", (cout, cout, 3, 3)))
            if temporal[i]:
                out.append(_conv(f"encoder.downsamples.{n}.time_conv", (cout, cout, 3, 1, 1)))
            n += 1
    out += _wan_middle("encoder", dims[-1]) + [_rms("encoder.head.0", dims[-1]),
                                               _conv("encoder.head.2", (2 * z, dims[-1], 3, 3, 3))]
    out += [_conv("conv1", (2 * z, 2 * z, 1, 1, 1)), _conv("conv2", (z, z, 1, 1, 1))]
    up = dims[::-1]  # [4d, 4d, 4d, 2d, d] as the decoder walks them
    up = [up[0]] + up[:-1]
    out += [_conv("decoder.conv1", (up[0], z, 3, 3, 3))] + _wan_middle("decoder", up[0])
    n = 0
    for i, (cin, cout) in enumerate(zip(up[:-1], up[1:])):
        if i in (1, 2, 3):
            cin //= 2  # the resample before this level halved the channels
        for _ in range(3):
            out += _wan_residual(f"decoder.upsamples.{n}", cin, cout)
            cin, n = cout, n + 1
        if i != 3:
            out.append(_conv(f"decoder.upsamples.{n}.resample.1", (cout // 2, cout, 3, 3)))
            if temporal[::-1][i]:
                out.append(_conv(f"decoder.upsamples.{n}.time_conv", (cout * 2, cout, 3, 1, 1)))
            n += 1
    return out + [_rms("decoder.head.0", up[-1]), _conv("decoder.head.2", (3, up[-1], 3, 3, 3))]
