"""darkfield_nb.epistemic: dropout placements, deep ensemble, feature density, OOD score.

References: scikit-learn (roc_auc_score, LedoitWolf; skipped where it is not installed: it is
not yet in pyproject's dev extra), scipy (mahalanobis, norm), closed forms.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import write_toy_pairs
from scipy import stats
from scipy.spatial.distance import mahalanobis
from torch import nn

from darkfield_nb.epistemic import (
    DistanceSigma,
    FeatureDensity,
    GaussianDensity,
    LungContrast,
    MaxZScore,
    MultiLevelDensity,
    OODDetector,
    OODThreshold,
    Placement,
    apply_placement,
    distance_to_sigma,
    encoder_features,
    ensemble_predict,
    has_encoder_dropout,
    image_auroc,
    image_score,
    ledoit_wolf,
    mc_strategy,
    patch_features,
    rank_vs_median,
    reinit_last_stage,
    set_rate,
    train_last_stage_ensemble,
)
from darkfield_nb.models import DiscriminatorConfig, GeneratorConfig, ProgressiveGenerator
from darkfield_nb.train import StageSchedule, TrainConfig, make_datasets
from darkfield_nb.uncertainty import mc_dropout_predict


def _model(n_stages: int = 1, seed: int = 0, dropout: float = 0.0) -> ProgressiveGenerator:
    """Tiny generator; not residual, so a later stage's mean head is not zero at init."""
    torch.manual_seed(seed)
    cfg = GeneratorConfig(n_stages=n_stages, base_width=4, depth=2, dropout=dropout, residual=False)
    return ProgressiveGenerator(cfg).eval()


# ----------------------------------------------------------------------------- score
def test_threshold_flags_five_percent_of_held_out_in_distribution() -> None:
    rng = np.random.default_rng(0)
    n_val, n_held = 4000, 20000
    rates = []
    for _ in range(5):
        thr = OODThreshold.calibrate(rng.normal(size=n_val), level=0.05)
        assert thr.threshold == pytest.approx(stats.norm.ppf(0.95), abs=0.08)
        rates.append(thr.flag(rng.normal(size=n_held)).mean())
    # sampling sd of the flagged fraction: threshold estimate (n_val) and held-out count (n_held)
    sd = np.sqrt(0.05 * 0.95 * (1 / n_val + 1 / n_held))
    for r in rates:
        assert abs(r - 0.05) < 4 * sd
    assert abs(np.mean(rates) - 0.05) < 4 * sd / np.sqrt(len(rates))
    # a shifted (out-of-distribution) population is flagged far more often
    thr = OODThreshold.calibrate(rng.normal(size=n_val))
    assert thr.flag(rng.normal(loc=3.0, size=n_held)).mean() > 0.85


def test_threshold_is_the_95th_percentile_and_round_trips() -> None:
    v = np.arange(1, 101, dtype=float)  # 1 .. 100
    thr = OODThreshold.calibrate(v)
    assert thr.threshold == pytest.approx(np.percentile(v, 95))  # 95.05 (linear)
    assert thr.flag([95.0, 95.1]).tolist() == [False, True]
    assert OODThreshold.from_dict(thr.to_dict()) == thr
    with pytest.raises(ValueError, match="finite"):
        OODThreshold.calibrate([1.0, np.nan, 2.0])


def test_image_auroc_matches_sklearn_with_ties() -> None:
    roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score
    rng = np.random.default_rng(1)
    ood = np.round(rng.normal(0.7, 1.0, 37), 1)
    ind = np.round(rng.normal(0.0, 1.0, 53), 1)
    y = np.r_[np.ones(ood.size), np.zeros(ind.size)]
    ref = roc_auc_score(y, np.r_[ood, ind])
    assert image_auroc(ood, ind) == pytest.approx(ref, abs=1e-12)
    assert image_auroc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert image_auroc([1.0], [1.0]) == 0.5


def test_image_score_is_the_quantile_over_the_mask() -> None:
    u = np.arange(16, dtype=float).reshape(4, 4)
    mask = np.zeros((4, 4), bool)
    mask[:2] = True  # values 0 .. 7
    assert image_score(u, mask, q=0.5) == pytest.approx(3.5)
    assert image_score(torch.tensor(u)[None, None], q=1.0) == 15.0
    assert image_score(u, q=0.99) == pytest.approx(np.quantile(u, 0.99))
    with pytest.raises(ValueError, match="empty"):
        image_score(u, np.zeros((4, 4), bool))


def test_rank_vs_median() -> None:
    r = rank_vs_median(6.0, [1.0, 2.0, 3.0, 4.0])
    assert r["above_median"] and r["percentile"] == 1.0
    assert r["over_median"] == pytest.approx(6.0 / 2.5)


# ----------------------------------------------------------------------------- density
def _smooth(b: int) -> torch.Tensor:
    """Random smooth images: 4 x 4 noise upsampled bilinearly to 16 x 16."""
    coarse = torch.rand(b, 1, 4, 4)
    return torch.nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear")


def test_ledoit_wolf_matches_sklearn() -> None:
    LedoitWolf = pytest.importorskip("sklearn.covariance").LedoitWolf  # noqa: N806
    rng = np.random.default_rng(2)
    for n, p in ((40, 10), (15, 30)):
        x = rng.normal(size=(n, p)) @ rng.normal(size=(p, p)) + 3.0
        mean, cov, s = ledoit_wolf(x)
        ref = LedoitWolf().fit(x)
        np.testing.assert_allclose(mean, ref.location_, atol=1e-12)
        np.testing.assert_allclose(cov, ref.covariance_, rtol=1e-9, atol=1e-12)
        assert s == pytest.approx(ref.shrinkage_, rel=1e-9)


def test_mahalanobis_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    train = rng.normal(size=(30, 4)) * [1.0, 2.0, 0.5, 3.0]
    dens = GaussianDensity.fit(train)
    q = rng.normal(size=(5, 4)) * 2
    _, cov, _ = ledoit_wolf(train)
    vi = np.linalg.inv(cov)
    ref = [mahalanobis(row, train.mean(0), vi) for row in q]
    np.testing.assert_allclose(dens.distance(q), ref, rtol=1e-10)
    with pytest.raises(ValueError, match="4 features"):
        dens.distance(q[:, :3])


def test_feature_density_maps_and_separates_unseen_inputs() -> None:
    model = _model()
    torch.manual_seed(0)
    train = [_smooth(2) for _ in range(8)]
    dens = FeatureDensity(model).fit(train)
    x = torch.rand(1, 1, 13, 17)  # odd size: padded inside, cropped back
    m = dens.pixel_map(x)
    assert m.shape == (1, 1, 13, 17) and torch.isfinite(m).all()
    # per image: pooled bottleneck features against a direct fit
    f = [encoder_features(model, t).mean(dim=(-2, -1)).double().numpy() for t in train]
    ref = GaussianDensity.fit(np.concatenate(f))
    probe = torch.rand(3, 1, 16, 16)
    pooled = encoder_features(model, probe).mean(dim=(-2, -1)).double().numpy()
    np.testing.assert_allclose(dens.image_distance(probe), ref.distance(pooled), rtol=1e-5)
    # an input unlike the (smooth) training images, a pixel checkerboard, lies farther from
    # their features (instance norm makes a mere rescaling invisible, so the change is in form)
    far = (torch.arange(16)[:, None] + torch.arange(16)[None]).remainder(2).float()[None, None]
    near = _smooth(1)
    fine = FeatureDensity(model, level=0).fit(train)  # full-resolution features
    assert fine.pixel_map(far).mean() > 1.2 * fine.pixel_map(near).mean()
    assert fine.image_distance(far)[0] > 1.2 * fine.image_distance(near)[0]


def test_multi_level_density_is_the_mean_of_normalized_levels() -> None:
    model = _model()
    torch.manual_seed(4)
    train = [_smooth(2) for _ in range(6)]
    multi = MultiLevelDensity(model, levels=(0, -1)).fit(train)
    singles = [FeatureDensity(model, level=lv).fit(train) for lv in (0, -1)]
    x = _smooth(2)
    # med_l: median distance of the fitted (not upsampled) training pixel vectors
    vecs = [
        np.concatenate(
            [
                encoder_features(model, t, lv).permute(0, 2, 3, 1).reshape(-1, f).double().numpy()
                for t in train
            ]
        )
        for lv, f in ((0, 4), (-1, 16))
    ]
    meds = [float(np.median(s.pixel.distance(v))) for s, v in zip(singles, vecs, strict=True)]
    ref = sum(s.pixel_map(x) / m for s, m in zip(singles, meds, strict=True)) / 2
    np.testing.assert_allclose(multi.pixel_map(x).numpy(), ref.numpy(), rtol=1e-5)
    pooled_meds = [np.median(np.concatenate([s.image_distance(t) for t in train])) for s in singles]
    ref_img = sum(s.image_distance(x) / m for s, m in zip(singles, pooled_meds, strict=True)) / 2
    np.testing.assert_allclose(multi.image_distance(x), ref_img, rtol=1e-6)


def test_distance_to_sigma_closed_form() -> None:
    d = np.array([0.0, 2.0, 3.0, 5.0])
    np.testing.assert_allclose(distance_to_sigma(d, 2.0, 0.1), [0.0, 0.0, 0.05, 0.15])
    t = distance_to_sigma(torch.tensor(d), 2.0, 0.1)
    np.testing.assert_allclose(t.numpy(), [0.0, 0.0, 0.05, 0.15])


# ----------------------------------------------------------------------------- placement
def test_model_without_dropout_gives_zero_epistemic_map() -> None:
    x = torch.rand(2, 1, 16, 16)
    for model in (_model(), apply_placement(_model(), Placement("decoder", 0.0))):
        res = mc_dropout_predict(model, x, samples=5, seed=0)
        assert torch.count_nonzero(res.epistemic) == 0
        assert torch.equal(res.total, res.aleatoric)
    # a placed model switched off at inference: zero as well
    placed = apply_placement(_model(), Placement("encoder_decoder", 0.3))
    set_rate(placed, 0.0)
    res = mc_dropout_predict(placed, x, samples=5, seed=0, strategy=mc_strategy(placed))
    assert torch.count_nonzero(res.epistemic) == 0


@pytest.mark.parametrize("where", ["last", "decoder", "bottleneck", "encoder_decoder"])
def test_placements_put_dropout_where_named(where: str) -> None:
    model = _model(n_stages=2)
    keys = set(model.state_dict())
    apply_placement(model, Placement(where, 0.3, "element"))
    assert set(model.state_dict()) == keys  # dropout has no parameters: checkpoints load
    last = model.stages[-1]
    slots = [j for j, m in enumerate(last.drop) if isinstance(m, nn.Dropout)]
    assert slots == {"last": [1], "bottleneck": [0]}.get(where, [0, 1])
    assert not any(isinstance(m, nn.Dropout) for m in model.stages[0].modules())
    assert has_encoder_dropout(model) == (where == "encoder_decoder")
    assert model.config.dropout_placement == where and model.config.dropout_stages == [1]
    assert all(s.config is model.config for s in model.stages)
    # the placed model rebuilds from its config alone (what a checkpoint stores)
    rebuilt = ProgressiveGenerator(GeneratorConfig.from_dict(model.config.to_dict()))
    assert [type(m) for s in rebuilt.stages for m in s.modules()] == [
        type(m) for s in model.stages for m in s.modules()
    ]
    assert mc_strategy(model) == "batched"
    x = torch.rand(1, 1, 16, 16)
    res = mc_dropout_predict(model, x, samples=6, seed=0, strategy=mc_strategy(model))
    assert (res.epistemic > 0).float().mean() > 0.5
    again = mc_dropout_predict(model, x, samples=6, seed=0, strategy=mc_strategy(model))
    assert torch.equal(res.epistemic, again.epistemic)


def test_encoder_dropout_samples_the_encoder_each_pass() -> None:
    model = apply_placement(_model(), Placement("encoder_decoder", 0.5))
    set_rate(model, 0.5, where="bottleneck")  # decoder-only part off except the bottleneck
    assert [m.p for m in model.stages[0].enc_drop] == [0.0, 0.0]
    set_rate(model, 0.5)
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        model.train()
        a = encoder_features(model, x)  # eval inside: deterministic
        b = encoder_features(model, x)
    assert torch.equal(a, b)
    res = mc_dropout_predict(model, x, samples=4, seed=1, strategy="repeat", keep_samples=True)
    assert not torch.equal(res.samples[0], res.samples[1])
    # the shared prefix stops at the stage input: "batched" draws the same masks as "repeat"
    bat = mc_dropout_predict(model, x, samples=4, seed=1, strategy="batched", keep_samples=True)
    torch.testing.assert_close(bat.samples, res.samples)


def test_set_rate_restricts_to_a_placement() -> None:
    model = apply_placement(_model(), Placement("decoder", 0.3))
    set_rate(model, 0.1, where="last")
    assert [m.p for m in model.stages[0].drop] == [0.0, 0.1]
    set_rate(model, 0.5)
    assert [m.p for m in model.stages[0].drop] == [0.5, 0.5]
    with pytest.raises(ValueError, match="where"):
        set_rate(model, 0.1, where="everywhere")
    apply_placement(model, Placement("bottleneck", 0.2))  # a second placement replaces the first
    assert [type(m) for m in model.stages[0].drop] == [nn.Dropout2d, nn.Identity]


# ----------------------------------------------------------------------------- ensemble
def test_ensemble_moments_against_members() -> None:
    members = [_model(seed=s) for s in range(3)]
    x = torch.rand(2, 1, 16, 16)
    res = ensemble_predict(members, x)
    with torch.no_grad():
        outs = [m(x)[-1] for m in members]
    mu = torch.stack([o.mu for o in outs]).double()
    np.testing.assert_allclose(res.mean.numpy(), mu.mean(0).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        res.epistemic.numpy(), mu.std(0, unbiased=False).numpy(), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        res.total.numpy() ** 2,
        res.aleatoric.numpy() ** 2 + res.epistemic.numpy() ** 2,
        rtol=1e-4,
    )
    same = ensemble_predict([members[0], members[0]], x)
    assert torch.count_nonzero(same.epistemic) == 0


def test_reinit_last_stage_keeps_the_others() -> None:
    model = _model(n_stages=2)
    member = reinit_last_stage(model, seed=5)
    for a, b in zip(model.stages[0].parameters(), member.stages[0].parameters(), strict=True):
        assert torch.equal(a, b)
    changed = [
        not torch.equal(a, b)
        for a, b in zip(model.stages[1].parameters(), member.stages[1].parameters(), strict=True)
    ]
    assert any(changed)


# ----------------------------------------------------------------------------- detector
def test_detector_calibrates_maps_and_round_trips() -> None:
    model = _model()
    torch.manual_seed(6)
    train = [_smooth(4) for _ in range(5)]
    val = [_smooth(1) for _ in range(40)]
    det = OODDetector(model, levels=(0, 1, 2)).fit(train, val)
    # the threshold: the 95th percentile of the validation images' leave-one-out scores
    assert det.threshold.threshold == pytest.approx(np.quantile(det.val_scores, 0.95))
    assert det.threshold.flag(det.val_scores).sum() == 2  # 5 % of 40 lie above the 95th pct
    # each validation image's stored score: its z-scores against the other 39 images
    d, pooled, out = det.density.evaluate(torch.cat(val))
    lt = np.log(np.stack([pooled, det.local(d, out.mu)], 1))
    i = 7
    rest = np.delete(lt, i, 0)
    if det.image_score.names == ["pooled"]:  # a tiny model predicts no lung: contrast all 1
        rest, lt = rest[:, :1], lt[:, :1]
    want = np.max((lt[i] - rest.mean(0)) / rest.std(0, ddof=1))
    assert det.val_scores[i] == pytest.approx(want, rel=1e-5)  # batched vs single passes
    x = _smooth(2)
    pred = det.predict(x)
    assert pred.epistemic.shape == x.shape and (pred.epistemic >= 0).all()
    np.testing.assert_allclose(
        pred.total.numpy() ** 2,
        pred.aleatoric.numpy() ** 2 + pred.epistemic.numpy() ** 2,
        rtol=1e-5,
    )
    # the conversion's references, recomputed from the validation maps: u_ref the 75th
    # percentile of u, sigma_ref the median aleatoric sigma; the default hinge
    # sigma_epi = 3 s_ref max(u / u_ref - 1, 0)
    preds = [det.predict(v) for v in val]
    u_val = np.concatenate([p.distance.double().numpy().ravel() for p in preds])
    a_val = np.concatenate([p.aleatoric.double().numpy().ravel() for p in preds])
    u_ref, s_ref = np.quantile(u_val, 0.75), np.median(a_val)
    assert det.conversion.u_ref == pytest.approx(u_ref, rel=1e-5)
    assert det.conversion.sigma_ref == pytest.approx(s_ref, rel=1e-5)
    ref = 3 * s_ref * np.maximum(pred.distance.double().numpy() / u_ref - 1, 0)
    np.testing.assert_allclose(pred.epistemic.numpy(), ref, rtol=1e-4, atol=1e-12)
    again = OODDetector.from_state(model, det.state()).predict(x)
    np.testing.assert_allclose(again.distance.numpy(), pred.distance.numpy())
    np.testing.assert_allclose(again.epistemic.numpy(), pred.epistemic.numpy())
    np.testing.assert_allclose(again.score, pred.score)
    np.testing.assert_array_equal(again.flag, pred.flag)


def test_detector_pixel_map_is_the_patch_density_of_level_0() -> None:
    """The default pixel map: Mahalanobis distance of the 3 x 3 neighbourhoods of level-0
    features, against a direct fit (GaussianDensity on the hand-built patch vectors)."""
    model = _model()
    torch.manual_seed(8)
    train = [_smooth(2) for _ in range(4)]
    det = OODDetector(model, levels=(0, 1), max_pixels=10**6).fit(train, [_smooth(2)])
    assert det.density.pixel_levels == [0] and det.density.patch == 3
    vec = []
    for t in train:
        f = encoder_features(model, t, 0).double().numpy()  # (B, C, H, W)
        fp = np.pad(f, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
        h, w = f.shape[-2:]
        nb = [fp[:, :, i : i + h, j : j + w] for i in range(3) for j in range(3)]
        g = np.stack(nb, axis=2).reshape(f.shape[0], -1, h, w)  # channel-major, then i, j
        vec.append(g.transpose(0, 2, 3, 1).reshape(-1, g.shape[1]))
    vec = np.concatenate(vec)
    ref = GaussianDensity.fit(vec)
    med = np.median(ref.distance(vec))
    x = torch.rand(1, 1, 16, 16)
    f = encoder_features(model, x, 0).double().numpy()
    fp = np.pad(f, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    g = np.stack([fp[:, :, i : i + 16, j : j + 16] for i in range(3) for j in range(3)], axis=2)
    d = ref.distance(g.reshape(1, -1, 16, 16).transpose(0, 2, 3, 1).reshape(-1, g.shape[1] * 9))
    got = det.predict(x).distance[0, 0].double().numpy()
    np.testing.assert_allclose(got, d.reshape(16, 16) / med, rtol=1e-4)
    # the parts of non-pixel levels hold no pixel density, and the state round-trips
    assert det.density.parts[1].pixel is None
    again = OODDetector.from_state(model, det.state())
    np.testing.assert_allclose(again.predict(x).distance.numpy(), det.predict(x).distance.numpy())


def test_detector_state_without_new_keys_keeps_the_old_rule() -> None:
    """A state written before patches and the power conversion (version 1 entries): every
    level in the pixel map, no patch, sigma_epi = sigma_ref * max(u / d_ref - 1, 0)."""
    model = _model()
    torch.manual_seed(9)
    train, val = [_smooth(2) for _ in range(4)], [_smooth(1) for _ in range(6)]
    old = OODDetector(model, levels=(0, 1), pixel_levels=(0, 1), patch=1).fit(train, val)
    state = old.state()
    for k in ("pixel_levels", "patch", "conversion"):
        state.pop(k)
    det = OODDetector.from_state(model, state)
    x = _smooth(2)
    pred = det.predict(x)
    np.testing.assert_allclose(pred.distance.numpy(), old.predict(x).distance.numpy())
    ref = distance_to_sigma(pred.distance, det.d_ref, det.sigma_ref)
    np.testing.assert_allclose(pred.epistemic.numpy(), ref.numpy(), rtol=1e-6)


def test_patch_features_match_a_hand_built_neighbourhood() -> None:
    f = torch.arange(2 * 3 * 4, dtype=torch.float64).reshape(1, 2, 3, 4)
    g = patch_features(f, 3)
    assert g.shape == (1, 18, 3, 4)
    # channel 1, neighbour (i, j) = (0, 2) of position (0, 3): row -1 -> 0 (replicate),
    # column 4 -> 3 (replicate): f[0, 1, 0, 3]
    assert g[0, 1 * 9 + 0 * 3 + 2, 0, 3] == f[0, 1, 0, 3]
    # interior position (1, 1): the centre is the pixel itself, (2, 0) is (2, 0)
    assert g[0, 0 * 9 + 4, 1, 1] == f[0, 0, 1, 1] and g[0, 6, 1, 1] == f[0, 0, 2, 0]
    assert torch.equal(patch_features(f, 1), f)
    with pytest.raises(ValueError, match="odd"):
        patch_features(f, 2)


def test_distance_sigma_is_continuous_monotone_and_calibrated() -> None:
    conv = DistanceSigma(u_ref=2.0, sigma_ref=0.1, power=2.0)
    # closed form: at u_ref the typical aleatoric sigma, 4x that at 2 u_ref, 0 at u = 0
    np.testing.assert_allclose(conv(np.array([0.0, 1.0, 2.0, 4.0])), [0.0, 0.025, 0.1, 0.4])
    np.testing.assert_allclose(conv(torch.tensor([1.0, 4.0])).numpy(), [0.025, 0.4])
    u = np.linspace(0.0, 10.0, 10001)
    s = conv(u)
    assert np.all(np.diff(s) > 0)  # strictly increasing
    assert np.max(np.abs(np.diff(s))) < 0.01  # continuous: no jump on a fine grid
    assert np.count_nonzero(s[1:] == 0) == 0  # no dead zone
    rng = np.random.default_rng(0)
    uv, av = rng.gamma(2.0, 1.0, 5000), rng.uniform(0.05, 0.1, 5000)
    cal = DistanceSigma.calibrate(uv, av, quantile=0.9, power=3.0)
    assert cal.u_ref == np.quantile(uv, 0.9) and cal.sigma_ref == np.median(av)
    assert cal.power == 3.0 and DistanceSigma.from_dict(cal.to_dict()) == cal
    ale = np.full(3, 0.1)
    assert cal.inflation(np.zeros(3), ale) == 1.0
    want = np.mean(np.sqrt(0.01 + cal(np.array([1.0, 2.0, 3.0])) ** 2) / 0.1)
    assert cal.inflation(np.array([1.0, 2.0, 3.0]), ale) == pytest.approx(want)
    with pytest.raises(ValueError, match="u_ref > 0"):
        DistanceSigma(0.0, 0.1)


def test_distance_sigma_hinge_closed_form_and_old_dicts() -> None:
    conv = DistanceSigma(u_ref=2.0, sigma_ref=0.1, power=1.0, offset=1.0, gain=3.0)
    # zero up to u_ref, then 3 x 0.1 per u_ref: u = 3 -> 0.15, u = 4 -> 0.3
    np.testing.assert_allclose(conv(np.array([0.0, 2.0, 3.0, 4.0])), [0.0, 0.0, 0.15, 0.3])
    np.testing.assert_allclose(conv(torch.tensor([1.0, 4.0])).numpy(), [0.0, 0.3])
    # the first rule, distance_to_sigma(d_ref, sigma_ref), is the hinge with gain 1
    u = np.linspace(0.0, 9.0, 91)
    np.testing.assert_allclose(
        DistanceSigma(2.0, 0.1, 1.0, 0.95, 1.0, 1.0)(u), distance_to_sigma(u, 2.0, 0.1)
    )
    # a dict stored before offset / gain existed reads as the power law it was
    old = DistanceSigma.from_dict({"u_ref": 2.0, "sigma_ref": 0.1, "power": 2.0, "quantile": 0.9})
    assert old == DistanceSigma(2.0, 0.1, 2.0, 0.9, 0.0, 1.0)
    np.testing.assert_allclose(old(np.array([1.0, 4.0])), [0.025, 0.4])
    with pytest.raises(ValueError, match="gain > 0"):
        DistanceSigma(1.0, 0.1, gain=0.0)


# ----------------------------------------------------------------------------- combined score
def test_max_z_score_against_a_hand_computed_case() -> None:
    # logs of the validation statistics: pooled 0, 1, 2 (mean 1, sd 1); contrast 0, 0.5, 1
    # (mean 0.5, sd 0.5)
    val = {"pooled": np.exp([0.0, 1.0, 2.0]), "lung_contrast": np.exp([0.0, 0.5, 1.0])}
    score, loo = MaxZScore.calibrate(val)
    assert score.names == ["pooled", "lung_contrast"]
    np.testing.assert_allclose(score.mean, [1.0, 0.5])
    np.testing.assert_allclose(score.std, [1.0, 0.5])
    # pooled e^3 (z 2) and contrast e^2 (z 3): 3 (the local anomaly wins); e^1, e^0.5: 0
    new = {"pooled": np.exp([3.0, 1.0]), "lung_contrast": np.exp([2.0, 0.5])}
    np.testing.assert_allclose(score(new), [3.0, 0.0])
    # leave-one-out: image 0 against logs (1, 2) and (0.5, 1): z = -1.5 / sqrt(0.5) for
    # both; image 1 against (0, 2) and (0, 1): 0; image 2 by symmetry +1.5 / sqrt(0.5)
    np.testing.assert_allclose(loo, [-1.5 / np.sqrt(0.5), 0.0, 1.5 / np.sqrt(0.5)], atol=1e-12)
    # the score is the min-p combination with Gaussian tails: max z = isf(min_k sf(z_k))
    rng = np.random.default_rng(3)
    many = {k: np.exp(rng.normal(size=50)) for k in val}
    z = score.z(many)
    np.testing.assert_allclose(stats.norm.isf(stats.norm.sf(z).min(1)), score(many), rtol=1e-9)
    # round trip; a statistic that never varies is left out; too few images are refused
    assert MaxZScore.from_dict(score.to_dict()) == score
    flat, _ = MaxZScore.calibrate({"pooled": val["pooled"], "lung_contrast": np.ones(3)})
    assert flat.names == ["pooled"]
    with pytest.raises(ValueError, match=">= 3"):
        MaxZScore.calibrate({"pooled": np.ones(2) + [0, 1]})


def test_combined_threshold_flags_five_percent_of_held_out_in_distribution() -> None:
    """Leave-one-out validation scores: the 95th-percentile threshold flags 5 % of new
    in-distribution images up to the sampling error of n_val = 400 (sd ~ 0.011)."""
    rng = np.random.default_rng(1)
    cov = [[1.0, 0.4], [0.4, 1.0]]  # correlated log statistics, as pooled and contrast are

    def draw(n):
        g = rng.multivariate_normal([0.3, 1.1], cov, size=n)
        return {"pooled": np.exp(g[:, 0]), "lung_contrast": np.exp(0.2 * g[:, 1])}

    rates = []
    for _ in range(5):
        score, loo = MaxZScore.calibrate(draw(400))
        thr = OODThreshold.calibrate(loo, level=0.05)
        rates.append(thr.flag(score(draw(20000))).mean())
    assert all(abs(r - 0.05) < 0.035 for r in rates), rates
    assert abs(np.mean(rates) - 0.05) < 0.015, rates


def test_lung_contrast_is_the_quantile_ratio_inside_the_eroded_lung_field() -> None:
    mu = np.zeros((40, 40))
    mu[5:35, 5:35] = 0.2  # predicted lung: 30 x 30; eroded by 5 px: [10:30, 10:30]
    u = np.ones((40, 40))
    u[10:30, 10:30] = np.arange(1.0, 401.0).reshape(20, 20)
    u[6, 6] = u[0, 0] = 1e3  # in the lung rim and outside it: both ignored
    v = np.arange(1.0, 401.0)
    want = np.quantile(v, 0.99) / np.quantile(v, 0.5)
    lc = LungContrast()
    assert lc(u, mu)[0] == pytest.approx(want)
    # batched tensors; an image with no predicted lung gets 1 (its lowest value)
    ut = torch.from_numpy(np.stack([u, u]))[:, None]
    mt = torch.from_numpy(np.stack([mu, np.zeros_like(mu)]))[:, None]
    np.testing.assert_allclose(lc(ut, mt), [want, 1.0])
    assert LungContrast.from_dict(lc.to_dict()) == lc
    with pytest.raises(ValueError, match="differ in shape"):
        lc(u, mu[:10])


def test_state_without_image_score_scores_by_the_pooled_distance() -> None:
    """A version-2 entry (written before the combined score): the pooled distance, against its
    stored threshold, exactly as before."""
    model = _model()
    torch.manual_seed(10)
    train, val = [_smooth(2) for _ in range(4)], [_smooth(1) for _ in range(8)]
    det = OODDetector(model, levels=(0, 1)).fit(train, val)
    assert det.image_score is not None
    state = det.state()
    state.pop("image_score")
    state["threshold"]["threshold"] = 1.05  # as stored for the pooled score
    old = OODDetector.from_state(model, state)
    x = _smooth(3)
    pooled = det.density.evaluate(x)[1]
    pred = old.predict(x)
    np.testing.assert_allclose(pred.score, pooled, rtol=1e-12)
    np.testing.assert_array_equal(pred.flag, pooled > 1.05)
    np.testing.assert_allclose(old.score(x), pooled, rtol=1e-12)


def test_few_validation_images_fall_back_to_the_pooled_score() -> None:
    model = _model()
    torch.manual_seed(11)
    with pytest.warns(UserWarning, match="pooled distance alone"):
        det = OODDetector(model, levels=(0, 1)).fit(
            [_smooth(2) for _ in range(3)], [_smooth(1) for _ in range(3)]
        )
    assert det.image_score is None
    x = _smooth(2)
    np.testing.assert_allclose(det.predict(x).score, det.density.evaluate(x)[1])


def _pairs(root, n: int = 6, size: int = 32, n_val: int = 2):
    """:func:`helpers.write_toy_pairs` with this file's defaults."""
    return write_toy_pairs(root, n, size=size, n_val=n_val)


def test_train_last_stage_ensemble_trains_only_the_last_stage(tmp_path) -> None:
    torch.set_num_threads(1)
    model = _model(n_stages=2)
    cfg = TrainConfig(
        model=model.config,
        discriminator=DiscriminatorConfig(width=4, n_layers=1),
        stages=[StageSchedule(epochs=1, batch_size=2, lr=1e-3, warmup_epochs=1)],
        crop_size=32,
        cache_data=True,
    )
    train, val = make_datasets(_pairs(tmp_path / "data"), cfg)
    members = train_last_stage_ensemble(model, [1, 2], train, val, cfg, tmp_path / "ens", "cpu")
    assert (tmp_path / "ens" / "member1" / "stage1.pt").exists()
    for m in members:
        for a, b in zip(model.stages[0].parameters(), m.stages[0].parameters(), strict=True):
            assert torch.equal(a, b)
    w = [m.stages[1].head_mu.weight for m in members]
    assert not torch.equal(w[0], w[1])
    res = ensemble_predict(members, torch.rand(1, 1, 32, 32))
    assert (res.epistemic > 0).float().mean() > 0.5


# ----------------------------------------------------------------------------- store
def test_fit_and_attach_detector_round_trips_with_weights_only(tmp_path) -> None:
    from darkfield_nb import checkpoint
    from darkfield_nb.data import PairedDataset
    from darkfield_nb.epistemic.store import (
        KEY,
        attach_ood_detector,
        batches,
        detector_from_checkpoint,
    )

    torch.set_num_threads(1)
    data = _pairs(tmp_path / "data", n=10)
    model = _model()
    src = checkpoint.save(tmp_path / "m.pt", model, stage=0, epoch=1, stages_trained=1)
    dst, _ = attach_ood_detector(src, data, tmp_path / "ood.pt", device="cpu", levels=(0, 1))
    # the file loads with weights_only=True; arrays are float64 tensors
    raw = torch.load(dst, map_location="cpu", weights_only=True)
    assert raw[KEY]["fitted_on"]["n_train"] == 8 and raw[KEY]["fitted_on"]["n_val"] == 2
    prec = raw[KEY]["detector"]["parts"][0]["pixel"]["precision"]
    # level 0: 4 channels x a 3 x 3 patch; level 1 is a score level only (no pixel density)
    assert isinstance(prec, torch.Tensor) and prec.dtype == torch.float64 and prec.shape == (36, 36)
    assert raw[KEY]["detector"]["parts"][1]["pixel"] is None and raw[KEY]["version"] == 3
    # reference: the detector fitted in memory on the same splits
    ds = {s: PairedDataset(data, split=s, pad_multiple=1, check=False) for s in ("train", "val")}
    ref = OODDetector(model, (0, 1)).fit(list(batches(ds["train"])), batches(ds["val"]))
    det = detector_from_checkpoint(checkpoint.load_checkpoint(dst))
    x = torch.rand(3, 1, 32, 32)
    got, want = det.predict(x), ref.predict(x)
    np.testing.assert_allclose(got.score, want.score, rtol=1e-12)
    np.testing.assert_allclose(got.distance.numpy(), want.distance.numpy(), rtol=1e-6)
    assert det.threshold == ref.threshold and det.threshold.n_calibration == 2
    assert det.threshold.threshold == pytest.approx(np.quantile(ref.val_scores, 0.95))
    with pytest.raises(FileExistsError, match="already exists"):
        attach_ood_detector(src, data, dst, device="cpu", levels=(0, 1))
    assert detector_from_checkpoint(checkpoint.load_checkpoint(src)) is None


def test_attach_can_keep_the_densities_and_refit_the_validation_step(tmp_path) -> None:
    from darkfield_nb import checkpoint
    from darkfield_nb.epistemic.store import KEY, _same, attach_ood_detector

    torch.set_num_threads(1)
    data = _pairs(tmp_path / "data", n=14, n_val=6)
    src = checkpoint.save(tmp_path / "m.pt", _model(), stage=0, epoch=1, stages_trained=1)
    with pytest.raises(ValueError, match="carries no 'ood' detector"):
        attach_ood_detector(src, data, tmp_path / "x.pt", device="cpu", keep_densities=True)
    full, e_full = attach_ood_detector(src, data, tmp_path / "a.pt", device="cpu", levels=(0, 1))
    assert e_full["detector"]["image_score"]["names"][0] == "pooled"
    # an older entry (another conversion, no combined score) on the same densities, refitted
    old = dict(e_full, detector=dict(e_full["detector"], image_score=None))
    old["detector"]["conversion"] = dict(old["detector"]["conversion"], offset=0.0, gain=1.0)
    from darkfield_nb.epistemic.store import write_ood_checkpoint

    write_ood_checkpoint(src, tmp_path / "old.pt", old)
    kept, e_kept = attach_ood_detector(
        tmp_path / "old.pt", data, tmp_path / "b.pt", device="cpu", keep_densities=True
    )
    a = torch.load(full, weights_only=True)[KEY]
    b = torch.load(kept, weights_only=True)[KEY]
    # the same densities and the same validation step as a full refit with the defaults
    assert _same(a["detector"], b["detector"])
    assert b["fitted_on"]["densities_from"]["n_train"] == 8 and b["fitted_on"]["n_val"] == 6
