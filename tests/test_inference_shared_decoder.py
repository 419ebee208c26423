"""The shared-skip decoder of Monte Carlo dropout against the model's own ``mc_suffix`` (the
whole decoder on stacked copies), on every placement, norm, padding, upsampling, conditioning and
memory layout; the layout-preserving instance norm against torch's InstanceNorm2d."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from darkfield_nb.inference.fast_norm import layout_preserving_norms
from darkfield_nb.inference.mc import fixed_masks
from darkfield_nb.inference.shared_decoder import shared_decoder
from darkfield_nb.models import GeneratorConfig, ProgressiveGenerator

# every placement with every norm; padding, upsampling and conditioning cycle through theirs
CASES = [
    (placement, norm, ("zeros", "reflect")[i % 2], ("transpose", "resize")[i // 2 % 2], cond)
    for i, (placement, norm) in enumerate(
        itertools.product(["decoder", "last", "bottleneck", "head"], ["instance", "batch", "none"])
    )
    for cond in (["concat", "attention"] if i % 3 == 0 else [("concat", "attention")[i % 2]])
]


def _model(**kw) -> ProgressiveGenerator:
    torch.manual_seed(0)
    m = ProgressiveGenerator(GeneratorConfig(n_stages=2, base_width=4, depth=2, dropout=0.3, **kw))
    for stage in m.stages:  # trained-like: non-zero residual heads, non-trivial norm affines
        nn.init.normal_(stage.head_mu.weight, std=0.1)
        for mod in stage.modules():
            if isinstance(mod, (nn.InstanceNorm2d, nn.BatchNorm2d)) and mod.affine:
                nn.init.normal_(mod.weight, 1.0, 0.2)
                nn.init.normal_(mod.bias, 0.0, 0.2)
    return m.eval()


@pytest.mark.parametrize("placement,norm,padding,upsample,conditioning", CASES)
def test_equals_the_whole_decoder_on_stacked_copies(
    placement, norm, padding, upsample, conditioning
):
    m = _model(
        dropout_placement=placement,
        norm=norm,
        padding_mode=padding,
        upsample=upsample,
        conditioning=conditioning,
        residual=norm != "batch",  # both residual and plain stages
    )
    x = torch.rand(3, 1, 36, 41)  # odd width: padded and cropped
    for channels_last in (False, True):
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            prefix = m.mc_prefix(x, -1)
            with fixed_masks(m, [0, 1, 2, 3], 3, seed=7):
                ref = m.mc_suffix(prefix, 4, -1)
            decoder = shared_decoder(m, prefix, -1)
            assert decoder is not None
            with fixed_masks(m, [0, 1, 2, 3], 3, seed=7):
                got = decoder(4)
            with fixed_masks(m, [4, 5], 3, seed=7):  # other passes: other maps
                other = decoder(2)
        for a, b in zip(ref, got, strict=True):
            assert a.shape == b.shape == (12, 1, 36, 41)
            torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-5)
        assert not torch.allclose(other.mu, got.mu[:6])


@pytest.mark.parametrize("placement,kind", [("head", "element"), ("head_reg", "channel")])
def test_head_dropout_equals_the_whole_decoder_on_stacked_copies(placement, kind):
    """Placement "head" with element dropout (masks per pixel: not folded into the weights), and
    "head_reg" (its train-time decoder dropout is off in the passes, as in mc_suffix)."""
    m = _model(dropout_placement=placement, dropout_kind=kind)
    x = torch.rand(2, 1, 32, 36)
    with torch.no_grad():
        prefix = m.mc_prefix(x, -1)
        with fixed_masks(m, [0, 1, 2, 3, 4, 5], 2, seed=3):
            ref = m.mc_suffix(prefix, 6, -1)
        with fixed_masks(m, [0, 1, 2, 3, 4, 5], 2, seed=3):
            got = shared_decoder(m, prefix, -1)(6)
    for a, b in zip(ref, got, strict=True):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-5)
    # 4 channels at p = 0.3: two passes can share a mask, six passes all alike cannot (p < 1e-4)
    assert any(not torch.allclose(got.mu[:2], got.mu[2 * t : 2 * t + 2]) for t in range(1, 6))


def test_not_used_where_it_does_not_apply():
    enc = _model(dropout_placement="encoder_decoder")  # the encoder drops: no shared skips
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert shared_decoder(enc, enc.mc_prefix(x, -1), -1) is None
        m = ProgressiveGenerator(
            GeneratorConfig(n_stages=2, base_width=4, depth=2, dropout=0.3, dropout_stages=[0])
        ).eval()
        prefix = m.mc_prefix(x, -1)  # dropout in stage 0, stage 1 asked for
        assert prefix.stage == 0
        assert shared_decoder(m, prefix, -1) is None
        assert shared_decoder(m, prefix, 0) is not None


@pytest.mark.parametrize("channels_last", [False, True])
def test_layout_preserving_instance_norm_equals_torch(channels_last):
    torch.manual_seed(1)
    block = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.InstanceNorm2d(6, affine=True))
    nn.init.normal_(block[1].weight, 1.0, 0.3)
    nn.init.normal_(block[1].bias, 0.0, 0.3)
    x = torch.randn(4, 3, 17, 23) * 3 + 1
    if channels_last:
        block = block.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = block(x)
        with layout_preserving_norms(block):
            assert "forward" in block[1].__dict__
            got = block(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):  # falls back to torch's
                low = block(x)
        assert "forward" not in block[1].__dict__  # put back
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(low.float(), ref, atol=0.1, rtol=0.05)
    # per-image, per-channel statistics: each output plane has mean beta and std |gamma|
    torch.testing.assert_close(got.mean((2, 3)), block[1].bias.expand(4, 6), atol=1e-5, rtol=0)
