"""Decoder upsampling, convolution padding, legacy checkpoints and the Nyquist-power metric.

References: hand-computed DFT cases for the Nyquist power (a checkerboard puts all its AC power
at (H/2, W/2); a sum of a checkerboard and a low-frequency cosine splits its power by Parseval),
an independent forward of one U-Net stage written with ``torch.nn.functional`` only (F.pad,
F.conv2d, F.conv_transpose2d, F.interpolate, F.instance_norm), and the closed fact that
replicate/reflect padding, instance norm, max pooling and nearest upsampling all map a constant
map to a constant map.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from darkfield_nb import checkpoint
from darkfield_nb.ggd import ggd_std
from darkfield_nb.models import GeneratorConfig, ProgressiveGenerator
from darkfield_nb.models.config import LEGACY_DEFAULTS
from darkfield_nb.models.spectral import border_ratio, edge_profile, nyquist_power_ratio
from darkfield_nb.models.unet import ResizeConv2d
from darkfield_nb.paths import pretrained_checkpoint

TINY = dict(n_stages=1, base_width=4, depth=2, dropout=0.0)


# ------------------------------------------------------------------ Nyquist metric
def test_nyquist_ratio_of_pure_checkerboard_is_one_and_smooth_image_zero():
    y, x = np.mgrid[0:32, 0:48]
    board = (-1.0) ** (y + x)
    assert nyquist_power_ratio(board) == pytest.approx(1.0, abs=1e-12)
    assert nyquist_power_ratio(3.0 + 0.5 * board) == pytest.approx(1.0, abs=1e-12)  # DC removed
    assert nyquist_power_ratio((-1.0) ** y) == pytest.approx(1.0, abs=1e-12)  # row stripes
    smooth = np.cos(2 * np.pi * y / 32) + np.sin(2 * np.pi * 2 * x / 48)
    assert nyquist_power_ratio(smooth) < 1e-20
    gauss = np.exp(-((y - 16.0) ** 2 + (x - 24.0) ** 2) / (2 * 6.0**2))
    assert nyquist_power_ratio(gauss) < 1e-6
    assert nyquist_power_ratio(np.full((8, 8), 2.0)) == 0.0


def test_nyquist_ratio_hand_computed_mixture_and_batches():
    """I = a (-1)^(y+x) + b cos(2 pi y / H): by Parseval the checkerboard carries a^2 H W and the
    cosine b^2 H W / 2, so the ratio is a^2 / (a^2 + b^2 / 2)."""
    y, x = np.mgrid[0:16, 0:16]
    a, b = 0.3, 1.2
    img = a * (-1.0) ** (y + x) + b * np.cos(2 * np.pi * y / 16)
    expected = a**2 / (a**2 + b**2 / 2)
    assert nyquist_power_ratio(img) == pytest.approx(expected, rel=1e-12)
    stack = torch.from_numpy(np.stack([img, (-1.0) ** (y + x)]))[:, None]  # (2, 1, H, W)
    out = nyquist_power_ratio(stack)
    assert out.shape == (2, 1)
    np.testing.assert_allclose(out[:, 0], [expected, 1.0], rtol=1e-12)
    with pytest.raises(ValueError, match="even"):
        nyquist_power_ratio(np.zeros((15, 16)))


def test_nyquist_ratio_of_white_noise_is_the_share_of_the_nyquist_lines():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(400, 64, 64))
    expected = (64 + 64 - 1) / (64 * 64)
    assert nyquist_power_ratio(noise).mean() == pytest.approx(expected, rel=0.02)


def test_border_ratio_and_edge_profile_by_hand():
    m = np.ones((10, 10))
    m[-2:, :] = 3.0  # a bright bottom band, 2 rows
    # border frame of width 2: 100 - 36 = 64 pixels; 20 of them (bottom rows) are 3, the rest 1
    assert border_ratio(m, 2) == pytest.approx((20 * 3 + 44 * 1) / 64 / 1.0)
    prof = edge_profile(m, 2)
    assert prof["bottom"] == 3.0 and prof["top"] == 1.0 and prof["interior"] == 1.0
    assert prof["left"] == pytest.approx((8 * 1 + 2 * 3) / 10)
    assert border_ratio(np.ones((6, 6)), 1) == 1.0
    with pytest.raises(ValueError, match="does not fit"):
        border_ratio(np.ones((6, 6)), 3)


# ------------------------------------------------------------------ config and legacy
def test_new_defaults_and_legacy_dicts():
    cfg = GeneratorConfig()
    assert (cfg.upsample, cfg.padding_mode) == ("resize", "replicate")
    assert GeneratorConfig.from_dict(cfg.to_dict()) == cfg  # full dicts round-trip
    old = cfg.to_dict()
    del old["upsample"], old["padding_mode"]
    assert GeneratorConfig.from_dict(old) == cfg  # a user's partial dict: today's defaults
    legacy = GeneratorConfig.from_stored_dict(old)  # a checkpoint's dict: the legacy decoder
    assert (
        (legacy.upsample, legacy.padding_mode)
        == ("transpose", "zeros")
        == (
            LEGACY_DEFAULTS["upsample"],
            LEGACY_DEFAULTS["padding_mode"],
        )
    )
    with pytest.raises(ValueError, match="upsample"):
        GeneratorConfig(upsample="bilinear-ish")
    with pytest.raises(ValueError, match="padding_mode"):
        GeneratorConfig(padding_mode="circular")


def test_module_structure_follows_the_config():
    g = ProgressiveGenerator(GeneratorConfig(**TINY))
    assert all(isinstance(u, ResizeConv2d) for u in g.stages[0].upconv)
    convs = [m for m in g.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert convs and all(m.padding_mode == "replicate" for m in convs)
    legacy = ProgressiveGenerator(
        GeneratorConfig(**TINY, upsample="transpose", padding_mode="zeros")
    )
    assert all(isinstance(u, nn.ConvTranspose2d) for u in legacy.stages[0].upconv)


def _reference_stage(stage, x: torch.Tensor, cfg: GeneratorConfig) -> tuple[torch.Tensor, ...]:
    """One U-Net stage (instance norm, no dropout) from its state dict, functional ops only."""
    sd = stage.state_dict()
    mode = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate"}[cfg.padding_mode]

    def conv3(h, prefix):
        h = F.pad(h, (1, 1, 1, 1), mode=mode)
        return F.conv2d(h, sd[prefix + ".weight"], sd.get(prefix + ".bias"))

    def block(h, prefix):
        for i in (0, 3):
            h = conv3(h, f"{prefix}.{i}")
            h = F.instance_norm(h, weight=sd[f"{prefix}.{i + 1}.weight"],
                                bias=sd[f"{prefix}.{i + 1}.bias"], eps=1e-5)  # fmt: skip
            h = F.leaky_relu(h, 0.2)
        return h

    feats, h = [], x
    for i in range(cfg.depth + 1):
        h = block(F.max_pool2d(h, 2) if i else h, f"down.{i}")
        feats.append(h)
    for j in range(cfg.depth):
        p = f"upconv.{j}"
        if cfg.upsample == "transpose":
            h = F.conv_transpose2d(h, sd[p + ".weight"], sd[p + ".bias"], stride=2)
        else:
            h = conv3(F.interpolate(h, scale_factor=2, mode="nearest"), p + ".conv")
        h = block(torch.cat([h, feats[-2 - j]], 1), f"up.{j}")
    heads = [F.conv2d(h, sd[f"head_{n}.weight"], sd[f"head_{n}.bias"]) for n in ("mu", "alpha")]
    beta_raw = F.conv2d(h, sd["head_beta.weight"], sd["head_beta.bias"])
    alpha = F.softplus(heads[1]) + cfg.alpha_floor
    beta = cfg.beta_min + (cfg.beta_max - cfg.beta_min) * torch.sigmoid(beta_raw)
    return heads[0], alpha, beta


@pytest.mark.parametrize(
    "upsample,padding",
    [("transpose", "zeros"), ("resize", "replicate"), ("resize", "reflect"), ("resize", "zeros")],
)
def test_stage_matches_functional_reference(upsample, padding):
    torch.manual_seed(0)
    cfg = GeneratorConfig(**TINY, upsample=upsample, padding_mode=padding)
    g = ProgressiveGenerator(cfg).eval()
    with torch.no_grad():
        for p in g.parameters():  # move the norm affines away from 1 / 0
            p.add_(0.1 * torch.randn_like(p))
        x = torch.randn(2, 1, 24, 20)
        out = g(x)[0]
        ref = _reference_stage(g.stages[0], x, cfg)
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_legacy_checkpoint_without_new_keys_loads_as_transpose_zero_padding(tmp_path):
    """A checkpoint whose stored config lacks upsample/padding_mode (as every checkpoint
    written before them) rebuilds the old network and gives the same outputs bit for bit."""
    torch.manual_seed(1)
    cfg = GeneratorConfig(n_stages=2, base_width=4, depth=2, upsample="transpose",
                          padding_mode="zeros")  # fmt: skip
    model = ProgressiveGenerator(cfg).eval()
    path = checkpoint.save(tmp_path / "old.pt", model, stage=1, epoch=1, rng=False)
    raw = torch.load(path, weights_only=True)
    del raw["generator_config"]["upsample"], raw["generator_config"]["padding_mode"]
    torch.save(raw, path)
    loaded = checkpoint.load(path)
    assert loaded.config == cfg
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        for a, b in zip(model(x)[-1], loaded(x)[-1], strict=True):
            assert torch.equal(a, b)


@pytest.mark.skipif(not pretrained_checkpoint().exists(), reason="no shipped pretrained model")
def test_shipped_model_has_the_resize_decoder_and_loads_strictly():
    ckpt = checkpoint.load_checkpoint(pretrained_checkpoint())
    stored = ckpt["generator_config"]
    assert (stored["upsample"], stored["padding_mode"]) == ("resize", "replicate")
    model = checkpoint.load(pretrained_checkpoint())  # strict state-dict load
    assert (model.config.upsample, model.config.padding_mode) == ("resize", "replicate")
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())


# ------------------------------------------------------------------ constant input
def _maps(model: ProgressiveGenerator, value: float, size: int) -> dict[str, torch.Tensor]:
    x = torch.full((1, 1, size, size), value)
    with torch.no_grad():
        out = model.eval()(x)[-1]
    return {"mu": out.mu, "alpha": out.alpha, "beta": out.beta,
            "sigma": ggd_std(out.alpha, out.beta)}  # fmt: skip


# Replicate/reflect padding, instance norm, max pooling, nearest upsampling, 1x1 heads and the
# residual sum all map a constant map to a constant map, so the outputs are constant in exact
# arithmetic; every pixel runs the same float32 operations, so the only slack is round-off:
# 1e-5 relative (float32 has 6e-8; a dozen layers and a few hundred-term sums).
TOL = 1e-5


def _assert_flat(maps: dict[str, torch.Tensor]) -> None:
    for name, m in maps.items():
        m = m.double()
        rel_std = (m.std() / m.mean().abs().clamp_min(1e-6)).item()
        assert rel_std < TOL, f"{name}: std/|mean| = {rel_std:.2e} on a constant input"
        if name != "mu":  # mu can be ~0, where a ratio of means means nothing
            assert abs(border_ratio(m[0, 0], 4) - 1.0) < TOL, name
        else:
            assert (m - m.mean()).abs().max().item() < TOL * max(1.0, m.abs().max().item())


def _perturbed(g: ProgressiveGenerator) -> ProgressiveGenerator:
    """Add noise to every parameter: at initialization the norm affines are 1 and 0, so on a
    constant input every feature map is exactly 0 after the first norm, which hides all but
    the heads (and the residual stage's zero-initialized mean head)."""
    with torch.no_grad():
        for p in g.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return g


@pytest.mark.parametrize("padding", ["replicate", "reflect"])
def test_fresh_model_gives_flat_maps_on_constant_input(padding):
    torch.manual_seed(0)
    g = ProgressiveGenerator(GeneratorConfig(n_stages=2, base_width=4, depth=3, dropout=0.1,
                                             padding_mode=padding))  # fmt: skip
    _perturbed(g)
    for value, size in ((0.0, 64), (0.7, 48), (1.0, 40)):
        _assert_flat(_maps(g, value, size))


def test_briefly_trained_model_gives_flat_maps_on_constant_input():
    torch.manual_seed(0)
    g = ProgressiveGenerator(GeneratorConfig(n_stages=1, base_width=4, depth=3, dropout=0.1))
    opt = torch.optim.Adam(g.parameters(), lr=1e-2)
    g.train()
    y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    for _ in range(20):  # learn an image with a bright bottom edge: a positional cue to abuse
        inp = torch.rand(4, 1, 32, 32)
        target = inp + (y > 28).float()
        out = g(inp)[0]
        loss = (out.mu - target).abs().mean() + out.alpha.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    _assert_flat(_maps(g, 0.5, 64))


def test_zero_padding_and_transpose_upsampling_fail_the_flatness_test():
    """The check can fail: zero padding gives edge structure, transposed convolutions a grid."""
    torch.manual_seed(0)
    zeros = _perturbed(ProgressiveGenerator(GeneratorConfig(**TINY, padding_mode="zeros")))
    with pytest.raises(AssertionError):
        _assert_flat(_maps(zeros, 0.5, 32))
    torch.manual_seed(0)
    tr = _perturbed(ProgressiveGenerator(GeneratorConfig(**TINY, upsample="transpose")))
    maps = _maps(tr, 0.5, 32)
    with pytest.raises(AssertionError):
        _assert_flat(maps)
    # its deviation from flat is a grid: a large share of its power sits at the 2-px period
    # (about 0.5 here; a map that differed only at its border would have ~(H + W) / (H W))
    assert nyquist_power_ratio(maps["mu"][0, 0]) > 0.2
    assert math.isfinite(float(maps["sigma"].mean()))
