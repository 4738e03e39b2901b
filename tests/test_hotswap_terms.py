"""Hot-swap's low-rank terms on plain torch modules: every LoRA on a Linear runs as one down
projection and one in-place up projection per output slice (``hotswap.LinearStack``), stacked
conv terms as one pair of convolutions (``hotswap.fuse_conv``), and they add exactly what the
LoRAs add one by one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from comfyui_lora_bridge.nodes import hotswap


def _term(rank: int, out: int, inp: int, scale: float, **kw) -> hotswap.Term:
    gen = torch.Generator().manual_seed(rank * 7 + out)
    return hotswap.Term(torch.randn(rank, inp, generator=gen), torch.randn(out, rank, generator=gen), scale, None, **kw)


def _one_by_one(terms: list[hotswap.Term], y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """What the LoRAs add, each on its own: ``scale·up(down(x))``, on its rows of a fused layer."""
    for t in terms:
        if t.conv is not None:
            delta = F.conv2d(F.conv2d(x, t.down, **t.conv), t.up)
        else:
            delta = F.linear(F.linear(x, t.down), t.up)
            if t.rows is not None:
                first, count, width = t.rows
                delta = F.pad(delta, (first, width - first - count))
        y = y + t.scale * delta
    return y


@pytest.mark.parametrize("sampling", [True, False], ids=["inference", "grad enabled"])
def test_stacked_linear_terms_add_what_they_add_one_by_one(sampling) -> None:
    terms = [_term(4, 24, 16, 0.75), _term(8, 24, 16, -1.5), _term(2, 24, 16, 0.25)]
    x, y = torch.randn(3, 5, 16), torch.randn(3, 5, 24)
    expected = _one_by_one(terms, y, x)
    with torch.inference_mode(sampling):
        got = hotswap.LinearStack(terms).add_to(y.clone() if sampling else y, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if not sampling:  # a tensor autograd may need is never written to
        assert not torch.equal(got, y)


def test_row_slices_of_a_fused_layer_land_on_their_rows() -> None:
    # Flux's fused qkv (width 30): LoRAs on q (rows 0-9, two of them), on v (rows 20-29) and on all of it
    terms = [_term(4, 10, 16, 1.0, rows=(0, 10, 30)), _term(2, 10, 16, 0.5, rows=(20, 10, 30)), _term(3, 30, 16, 2.0),
             _term(5, 10, 16, -1.0, rows=(0, 10, 30))]
    x, y = torch.randn(2, 16), torch.randn(2, 30)
    expected = _one_by_one(terms, y, x)
    with torch.inference_mode():
        torch.testing.assert_close(hotswap.LinearStack(terms).add_to(y, x), expected, rtol=1e-5, atol=1e-5)


def test_stacked_conv_terms_fuse() -> None:
    conv = {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 1}
    gen = torch.Generator().manual_seed(3)
    terms = [hotswap.Term(torch.randn(r, 6, 3, 3, generator=gen), torch.randn(8, r, 1, 1, generator=gen), s, conv)
             for r, s in ((4, 1.0), (2, 0.3))]
    x, y = torch.randn(1, 6, 9, 9), torch.randn(1, 8, 9, 9)
    torch.testing.assert_close(hotswap.fuse_conv(terms).add_to(y, x), _one_by_one(terms, y, x), rtol=1e-4, atol=1e-4)


def test_what_runs_per_module_is_made_once_from_the_stacked_sets() -> None:
    conv = {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1}
    one_conv = hotswap.Term(torch.randn(2, 4, 1, 1), torch.randn(4, 2, 1, 1), 1.0, conv)
    a, b = _term(4, 24, 16, 1.0), _term(2, 24, 16, 0.5)
    terms = hotswap.TermSet({1: [one_conv]}).merged(hotswap.TermSet({2: [a]})).merged(hotswap.TermSet({2: [b]}))
    assert list(terms.get(1)) == [one_conv]
    (stack,) = terms.get(2)
    assert isinstance(stack, hotswap.LinearStack) and stack.terms == [a, b]
    assert terms.get(2)[0] is stack  # made once, then reused at every step
    assert list(terms.get(3)) == []
