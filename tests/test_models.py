"""Tests for darkfield_nb.models.

References: shapes and ranges from the head formulas, a hand-checked PatchGAN output size
(pix2pix: 70x70 receptive field, 256 -> 30x30 logits), bitwise equality of frozen weights and
buffers before/after an optimizer step, and scipy.stats.gennorm.std for the attention sigma.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from scipy import stats
from torch import nn

from darkfield_nb.ggd import ggd_std
from darkfield_nb.inference.mc import mc_predict_batch
from darkfield_nb.losses import adversarial_loss, ggd_nll
from darkfield_nb.models import (
    DiscriminatorConfig,
    GeneratorConfig,
    PatchDiscriminator,
    ProgressiveGenerator,
    build_discriminator,
    build_generator,
    count_parameters,
)
from darkfield_nb.models.unet import TrainOnlyDropout
from darkfield_nb.uncertainty import mc_dropout_predict

SMALL = dict(base_width=4, depth=2)


def test_default_generator_three_stages_dropout_last():
    """No-argument construction: 3 stages, dropout only in the last stage, never on outputs."""
    g = ProgressiveGenerator()
    assert len(g.stages) == 3
    drops = [[m for m in s.modules() if isinstance(m, nn.Dropout2d)] for s in g.stages]
    assert [len(d) > 0 for d in drops] == [False, False, True]
    assert all(d.p == pytest.approx(0.1) for d in drops[2])
    assert g.first_dropout_stage() == 2
    # dropout layers sit in front of up-convolutions (multi-channel maps), never on a head
    stage = g.stages[2]
    for drop, up in zip(stage.drop, stage.upconv, strict=True):
        assert isinstance(drop, nn.Dropout2d) and up.in_channels > 1
    assert count_parameters(g) > 1_000_000


@pytest.mark.parametrize("norm", ["instance", "batch", "group", "none"])
@pytest.mark.parametrize("conditioning", ["concat", "attention"])
def test_forward_odd_sizes_and_head_ranges(norm, conditioning):
    """Any H, W (odd, not a multiple of the stride) gives outputs of that size; alpha >= floor,
    beta in [beta_min, beta_max] (the head formulas)."""
    cfg = GeneratorConfig(norm=norm, conditioning=conditioning, dropout_stages="all", **SMALL)
    g = build_generator(cfg).eval()
    x = torch.randn(2, 1, 37, 53)
    outs = g(x)
    assert len(outs) == 3
    for o in outs:
        for t in o:
            assert t.shape == (2, 1, 37, 53)
            assert torch.isfinite(t).all()
        assert (o.alpha >= cfg.alpha_floor).all()
        assert (o.beta >= cfg.beta_min).all() and (o.beta <= cfg.beta_max).all()
    assert len(g(x, n_stages=2)) == 2
    # tiny image smaller than the padding: replicate fallback
    assert g(torch.randn(1, 1, 3, 5))[0].mu.shape == (1, 1, 3, 5)


def test_stage_outputs_do_not_depend_on_later_stages_and_padding_is_centred():
    """Stage 0 output equals a direct UNetStage call on the reflect-padded input, cropped."""
    g = build_generator(GeneratorConfig(**SMALL)).eval()
    x = torch.randn(1, 1, 10, 13)
    out = g(x, n_stages=1)[0]
    xp = torch.nn.functional.pad(x, (1, 2, 1, 1), mode="reflect")  # to 12 x 16
    ref = g.stages[0](xp)
    torch.testing.assert_close(out.mu, ref.mu[..., 1:11, 1:14])


def test_config_round_trip_and_validation():
    """asdict -> GeneratorConfig(**d) reproduces the config and the same architecture."""
    cfg = GeneratorConfig(n_stages=2, dropout_stages=[0], conditioning="attention", **SMALL)
    d = dataclasses.asdict(cfg)
    assert GeneratorConfig(**d) == cfg == GeneratorConfig.from_dict(cfg.to_dict())
    g1, g2 = build_generator(cfg), build_generator(d)
    assert [p.shape for p in g1.parameters()] == [p.shape for p in g2.parameters()]
    dcfg = DiscriminatorConfig(width=8, n_layers=2, norm="instance")
    assert DiscriminatorConfig(**dataclasses.asdict(dcfg)) == dcfg
    with pytest.raises(ValueError, match="norm"):
        GeneratorConfig(norm="layer")
    with pytest.raises(ValueError, match="dropout_stages"):
        GeneratorConfig(dropout_stages=[5])
    with pytest.raises(ValueError, match="unknown field"):
        GeneratorConfig.from_dict({"widht": 3})
    assert GeneratorConfig(dropout=0.0).resolved_dropout_stages() == ()
    assert GeneratorConfig(dropout_stages="all").resolved_dropout_stages() == (0, 1, 2)


def test_attention_map_uses_ggd_sigma():
    """sigma = alpha sqrt(Gamma(3/b)/Gamma(1/b)) equals scipy gennorm.std; the map has mean 1."""
    alpha = torch.tensor([0.1, 0.3, 2.0], dtype=torch.float64)
    beta = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64)
    ref = stats.gennorm(beta.numpy(), scale=alpha.numpy()).std()
    torch.testing.assert_close(ggd_std(alpha, beta).numpy(), ref, rtol=1e-10, atol=0)
    # seeded: for about 1 in 7 random initializations a pixel's sigma exceeds attention_max
    # times the mean, the clamp cuts it and the mean falls below 1
    torch.manual_seed(0)
    g = build_generator(GeneratorConfig(conditioning="attention", **SMALL))
    out = g(torch.randn(2, 1, 16, 16), n_stages=1)[0]
    s = g.attention_map(out)
    torch.testing.assert_close(s.mean(dim=(-2, -1)), torch.ones(2, 1), rtol=1e-4, atol=1e-4)


def test_patch_discriminator_is_conditional_patchgan():
    """pix2pix 70x70 PatchGAN: 256x256 input -> 30x30 logits (hand-computed), and the output
    changes when only the conditioning input changes."""
    d = PatchDiscriminator()
    x, y = torch.randn(1, 1, 256, 256), torch.randn(1, 1, 256, 256)
    with torch.no_grad():
        out = d(x, y)
        assert out.shape == (1, 1, 30, 30)
        assert not torch.equal(out, d(torch.randn_like(x), y))
    for norm in ("instance", "batch", "none"):
        small = build_discriminator(dict(width=8, n_layers=2, norm=norm))
        assert small(x[..., :64, :64], y[..., :64, :64]).shape[1] == 1
    with pytest.raises(ValueError, match="share"):
        d(x, y[..., :128])


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    state = {f"p:{k}": v.detach().clone() for k, v in module.named_parameters()}
    state.update({f"b:{k}": v.detach().clone() for k, v in module.named_buffers()})
    return state


@pytest.mark.parametrize("conditioning", ["concat", "attention"])
def test_frozen_stage_is_bitwise_unchanged_after_gan_step(conditioning):
    """Reference: a snapshot of stage 0. One generator+discriminator step on stage 1 with
    BatchNorm (whose running stats drift if the stage were in train mode) and an optimizer over
    *all* generator parameters leaves every parameter and buffer of stage 0 bitwise equal,
    with no gradient populated; stage 1 does change."""
    torch.manual_seed(0)
    cfg = GeneratorConfig(
        n_stages=2, norm="batch", dropout_stages="all", conditioning=conditioning, **SMALL
    )
    g = build_generator(cfg)
    d = build_discriminator(DiscriminatorConfig(width=8, n_layers=2, norm="batch"))
    params = g.trainable_stage(1)
    assert g.frozen_stages == (0,)
    g.train()  # must not un-freeze stage 0
    assert not g.stages[0].training and g.stages[1].training
    assert all(not m.training for m in g.stages[0].modules())
    before0, before1 = _snapshot(g.stages[0]), _snapshot(g.stages[1])
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-2)  # includes frozen ones on purpose
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-2)
    x, y = torch.randn(4, 1, 20, 20), torch.rand(4, 1, 20, 20)

    outs = g(x, n_stages=2)
    assert not outs[0].mu.requires_grad  # no autograd graph through the frozen stage
    fake = outs[1]
    loss_d = adversarial_loss(d(x, y), True) + adversarial_loss(d(x, fake.mu.detach()), False)
    opt_d.zero_grad()
    loss_d.backward()
    opt_d.step()
    loss_g = ggd_nll(y, fake.mu, fake.alpha, fake.beta) + (fake.mu - y).abs().mean()
    loss_g = loss_g + 0.01 * adversarial_loss(d(x, fake.mu), True)
    opt_g.zero_grad()
    loss_g.backward()
    opt_g.step()

    assert all(p.grad is None for p in g.stages[0].parameters())
    after0 = _snapshot(g.stages[0])
    for k, v in before0.items():
        assert torch.equal(v, after0[k]), f"stage 0 {k} moved"
    after1 = _snapshot(g.stages[1])
    assert not torch.equal(before1["b:down.0.1.running_mean"], after1["b:down.0.1.running_mean"])
    assert any(not torch.equal(before1[k], after1[k]) for k in before1 if k.startswith("p:"))
    assert {id(p) for p in params} == {id(p) for p in g.parameters() if p.requires_grad}

    g.unfreeze()
    g.train()
    assert g.frozen_stages == () and g.stages[0].training
    assert all(p.requires_grad for p in g.parameters())


def test_freeze_stages_prefix():
    g = build_generator(GeneratorConfig(**SMALL))
    g.freeze_stages(2)
    assert g.frozen_stages == (0, 1)
    g.train()
    assert [s.training for s in g.stages] == [False, False, True]
    with pytest.raises(ValueError, match="trainable_stage"):
        g.trainable_stage(3)


def test_residual_stage_starts_exactly_at_the_previous_mean():
    """config.residual: mu_k = mu_{k-1} + delta_k with delta's head zero at initialization, so
    an untrained stage k reproduces stage k-1's mean exactly (and cannot start worse)."""
    torch.manual_seed(0)
    g = ProgressiveGenerator(GeneratorConfig(n_stages=3, base_width=4, depth=2, dropout=0.0))
    x = torch.randn(1, 1, 20, 28)
    with torch.no_grad():
        outs = g.eval()(x)
    assert torch.equal(outs[1].mu, outs[0].mu) and torch.equal(outs[2].mu, outs[0].mu)
    assert not torch.equal(outs[1].alpha, outs[0].alpha)  # only the mean is residual
    torch.nn.init.normal_(g.stages[2].head_mu.weight, std=0.1)
    with torch.no_grad():
        delta = g.stages[2](torch.cat([x, outs[1].mu, outs[1].alpha, outs[1].beta], 1)).mu
        after = g(x)[2].mu
    torch.testing.assert_close(after, outs[1].mu + delta)
    plain = ProgressiveGenerator(GeneratorConfig(n_stages=2, base_width=4, depth=2, residual=False))
    with torch.no_grad():
        o = plain.eval()(x)
    assert not torch.equal(o[1].mu, o[0].mu)


@pytest.mark.parametrize(
    "placement", ["decoder", "last", "bottleneck", "encoder_decoder", "head", "head_reg"]
)
def test_dropout_placement_option_puts_dropout_where_it_says(placement):
    """GeneratorConfig.dropout_placement: decoder slot j acts before up-convolution j (0 the
    bottleneck), encoder slot i on encoder block i's output; state-dict keys never change."""
    cfg = GeneratorConfig(dropout=0.25, dropout_placement=placement, **SMALL)
    g = ProgressiveGenerator(cfg)
    ref = ProgressiveGenerator(GeneratorConfig(dropout=0.0, **SMALL))
    assert list(g.state_dict()) == list(ref.state_dict())
    depth = cfg.depth
    want = {"last": {depth - 1}, "bottleneck": {0}, "head": set(), "head_reg": set()}.get(
        placement, set(range(depth))
    )
    stage = g.stages[-1]
    got = {j for j, m in enumerate(stage.drop) if isinstance(m, nn.Dropout2d)}
    assert got == want and all(stage.drop[j].p == 0.25 for j in got)
    enc = [isinstance(m, nn.Dropout2d) for m in stage.enc_drop]
    assert enc == [placement == "encoder_decoder"] * depth
    assert stage.has_encoder_dropout == (placement == "encoder_decoder")
    assert isinstance(stage.head_drop, nn.Dropout2d) == (placement in ("head", "head_reg"))
    # head_reg: train-time dropout at every decoder level, not a torch dropout (never sampled)
    reg = [j for j, m in enumerate(stage.drop) if isinstance(m, TrainOnlyDropout)]
    assert reg == (list(range(depth)) if placement == "head_reg" else [])
    assert stage.has_dropout
    assert not any(isinstance(m, nn.Dropout2d) for s in g.stages[:-1] for m in s.modules())
    # the bottleneck slot drops the deepest features: its input has the bottleneck's width
    assert stage.upconv[0].in_channels == cfg.base_width * 2**depth
    assert GeneratorConfig.from_dict(cfg.to_dict()) == cfg


def test_encoder_dropout_batched_mc_matches_repeat_and_samples_encoder():
    """With encoder dropout the shared prefix stops at the stage input: "batched" gives the same
    numbers as "repeat" (whole network per pass) for one seed; the encoder output varies."""
    cfg = GeneratorConfig(dropout=0.3, dropout_placement="encoder_decoder", **SMALL)
    torch.manual_seed(0)
    g = ProgressiveGenerator(cfg).eval()
    x = torch.randn(1, 1, 32, 32)
    a = mc_dropout_predict(g, x, samples=6, seed=3, strategy="batched", keep_samples=True)
    b = mc_dropout_predict(g, x, samples=6, seed=3, strategy="repeat", keep_samples=True)
    torch.testing.assert_close(a.samples, b.samples)
    prefix = g.mc_prefix(x)
    assert prefix.feats == [] and prefix.inp is not None
    stage = g.stages[-1]
    for m in stage.enc_drop:
        m.train()
    with torch.no_grad():
        f1, f2 = stage.encode(prefix.inp), stage.encode(prefix.inp)
    assert not torch.equal(f1[0], f2[0])


@pytest.mark.parametrize(
    "kind,placement", [("channel", "head"), ("element", "head"), ("channel", "head_reg")]
)
def test_head_dropout_mc_variance_matches_its_closed_form(kind, placement):
    """Placement "head": mu_t = b + sum_c W_c m_c h_c with keep masks m_c ~ Bernoulli(1-p)/(1-p),
    so Var_t[mu_t] = p/(1-p) sum_c W_c^2 h_c^2 (unet docstring), h the deterministic last decoder
    features. The MC epistemic variance of 4000 passes must match it within sampling error,
    pixel by pixel, and the MC mean must match b + sum_c W_c h_c."""
    p = 0.3
    cfg = GeneratorConfig(dropout=p, dropout_placement=placement, dropout_kind=kind, **SMALL)
    torch.manual_seed(0)
    g = ProgressiveGenerator(cfg).eval()
    stage = g.stages[-1]
    nn.init.normal_(stage.head_mu.weight, std=0.3)
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        prefix = g.mc_prefix(x)
        h = prefix.feats[-1]
        for j, (upconv, block) in enumerate(zip(stage.upconv, stage.up, strict=True)):
            h = block(torch.cat([upconv(h), prefix.feats[-2 - j]], dim=1))
    w = stage.head_mu.weight[:, :, 0, 0].reshape(-1, 1, 1)  # (C, 1, 1)
    var_closed = (p / (1 - p) * (w**2 * h[0] ** 2).sum(0)).double()
    mean_closed = (stage.head_mu.bias + (w * h[0]).sum(0)).double()
    if cfg.residual:
        mean_closed = mean_closed + prefix.prev_mu[0, 0].double()
    n = 4000
    r = mc_dropout_predict(g, x, samples=n, seed=1, keep_samples=True)
    mus = r.samples.double()[:, 0, 0]  # (T, H, W)
    var_mc = mus.var(0, unbiased=True)
    # sampling sd of a variance estimate: sqrt((m4 - s^4) / n)
    m4 = ((mus - mus.mean(0)) ** 4).mean(0)
    sd = ((m4 - var_mc**2).clamp_min(0) / n).sqrt()
    assert var_closed.min() > 0
    assert ((var_mc - var_closed).abs() <= 5 * sd + 1e-12).all()
    assert ((mus.mean(0) - mean_closed).abs() <= 5 * (var_closed / n).sqrt() + 1e-6).all()
    # the scale and shape heads see the features undropped: the same in every pass
    stage.head_drop.train()
    with torch.no_grad():
        two = g.mc_suffix(prefix, 2, -1)
    stage.head_drop.eval()
    assert not torch.equal(two.mu[0], two.mu[1])
    assert torch.equal(two.alpha[0], two.alpha[1]) and torch.equal(two.beta[0], two.beta[1])
    # the batched pipeline's path (channel dropout: masks folded into the head weights)
    maps = mc_predict_batch(g, x, samples=n, seed=2)
    var_pipe = maps["epistemic"][0, 0].double() ** 2
    assert ((var_pipe - var_closed).abs() <= 5 * sd + 1e-12).all()
    err = (maps["darkfield"][0, 0] - mean_closed).abs()
    assert (err <= 5 * (var_closed / n).sqrt() + 1e-6).all()


def test_invalid_dropout_placement_is_refused():
    with pytest.raises(ValueError, match="dropout_placement"):
        GeneratorConfig(dropout_placement="everywhere")
