"""The threshold explorer's callbacks and readout, checked against direct NumPy / SciPy
computations (scipy.stats.gennorm for the interval, brute force for sparsification)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import gennorm, norm

pytest.importorskip("ipywidgets")

from darkfield_nb.labels import CABLE, LUNG, PACEMAKER  # noqa: E402
from darkfield_nb.uncertainty import MCDropoutResult  # noqa: E402
from darkfield_nb.widgets import (  # noqa: E402
    interval_factor,
    parse_readout,
    sparsification,
    threshold_at_percentile,
    threshold_explorer,
    threshold_stats,
)

RTOL = 2e-5  # the readout prints 6 significant digits


def _result(b=2, h=20, w=24, seed=0, recalibrated=False):
    rng = np.random.default_rng(seed)

    def t(a):
        return torch.from_numpy(a.astype(np.float32))

    mean = rng.uniform(0.0, 0.4, (b, 1, h, w))
    ale = rng.uniform(0.01, 0.05, (b, 1, h, w))
    epi = rng.uniform(0.001, 0.02, (b, 1, h, w))
    beta = rng.uniform(0.8, 2.5, (b, 1, h, w))
    total = np.sqrt(ale**2 + epi**2)
    res = MCDropoutResult(
        mean=t(mean),
        aleatoric=t(ale),
        epistemic=t(epi),
        total=t(total),
        alpha=t(ale),
        beta=t(beta),
        n_samples=4,
    )
    if recalibrated:
        res.recalibrated = t(1.3 * total)
    target = mean + rng.standard_normal(mean.shape) * total * 1.2
    mask = np.full((b, 1, h, w), LUNG, dtype=np.int32)
    mask[:, :, 2:6, 3:9] |= PACEMAKER
    mask[:, :, 10, :] |= CABLE
    return res, t(target), torch.from_numpy(mask)


def _reference(sigma, t, mean, target, beta, device, level=0.9):
    """Every readout figure straight from its definition, with gennorm for the interval."""
    flag = sigma > t
    keep = ~flag
    err = np.abs(target - mean)
    scale = sigma / gennorm.std(beta)  # GGD of shape beta with standard deviation sigma
    half = gennorm.ppf(0.5 + level / 2, beta) * scale
    return {
        "threshold": t,
        "percentile": 100 * keep.mean(),
        "flagged": flag.mean(),
        "error_share": err[flag].sum() / err.sum(),
        "mae_kept": err[keep].mean(),
        "coverage_kept": (err[keep] <= half[keep]).mean(),
        "device_caught": flag[device].sum() / device.sum(),
    }


def _check(readout_text, ref):
    got = parse_readout(readout_text.removeprefix("<code>").removesuffix("</code>"))
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=RTOL, abs=1e-9), key
    return got


@pytest.mark.parametrize("level", [0.5, 0.9, 0.99])
def test_interval_factor_matches_gennorm(level):
    beta = np.array([0.5, 1.0, 1.7, 2.0, 4.0])
    expected = gennorm.ppf(0.5 + level / 2, beta) / gennorm.std(beta)
    np.testing.assert_allclose(interval_factor(level, beta), expected, rtol=1e-6)
    assert interval_factor(level) == pytest.approx(norm.ppf(0.5 + level / 2))


def test_sparsification_matches_brute_force():
    rng = np.random.default_rng(1)
    s, e = rng.random(200), rng.random(200)
    f, model, oracle = sparsification(s, e, fractions=[0.0, 0.1, 0.5, 0.9])
    for frac, m, o in zip(f, model, oracle, strict=True):
        k = 200 - int(frac * 200)
        assert m == pytest.approx(e[np.argsort(s)[:k]].mean())
        assert o == pytest.approx(np.sort(e)[:k].mean())
    assert np.all(oracle <= model + 1e-12)  # the oracle is a lower bound


def test_slider_updates_mask_and_every_readout_number():
    res, target, mask = _result()
    ex = threshold_explorer(res, target=target, masks=mask)
    assert ex.kind.value == "total" and "recalibrated" not in ex.kind.options
    im_before = ex.im_flag
    for case in (0, 1):
        ex.case.value = case
        for kind in ("aleatoric", "epistemic", "total"):
            ex.kind.value = kind
            sigma = getattr(res, kind)[case, 0].numpy().astype(np.float64)
            for t in np.quantile(sigma, [0.2, 0.75, 0.95]):
                ex.slider.value = float(t)
                t_used = float(ex.slider.value)  # the slider rounds to its step
                np.testing.assert_array_equal(ex.mask, sigma > t_used)
                m = mask[case, 0].numpy()
                ref = _reference(
                    sigma,
                    t_used,
                    res.mean[case, 0].numpy().astype(np.float64),
                    target[case, 0].numpy().astype(np.float64),
                    res.beta[case, 0].numpy().astype(np.float64),
                    (m & (PACEMAKER | CABLE)) > 0,
                )
                got = _check(ex.readout.value, ref)
                assert got["kind"] == kind
                # the overlay is updated in place: same artist, alpha = flag * opacity
                assert ex.im_flag is im_before
                np.testing.assert_allclose(
                    ex.im_flag.get_array()[..., 3], (sigma > t_used) * ex.opacity.value
                )
                assert ex.vline.get_xdata()[0] == pytest.approx(ref["flagged"])


def test_percentile_mode_and_opacity():
    res, target, mask = _result(b=1)
    ex = threshold_explorer(res, target=target, masks=mask)
    ex.mode.value = "percentile"
    ex.slider.value = 80.0
    sigma = res.total[0, 0].numpy().astype(np.float64)
    t = np.percentile(sigma, 80.0)
    np.testing.assert_array_equal(ex.mask, sigma > t)
    got = parse_readout(ex.readout.value[6:-7])
    assert got["threshold"] == pytest.approx(t, rel=RTOL)
    assert got["flagged"] == pytest.approx(0.2, abs=1 / sigma.size)
    ex.opacity.value = 0.25
    assert ex.im_flag.get_array()[..., 3].max() == pytest.approx(0.25)
    ex.mode.value = "sigma"  # back to D units: the same flag (slider at the same percentile)
    assert ex.slider.description == "sigma >"
    assert parse_readout(ex.readout.value[6:-7])["flagged"] == pytest.approx(0.2, abs=0.01)


def test_recalibrated_kind_offered_when_present():
    res, target, mask = _result(b=1, recalibrated=True)
    ex = threshold_explorer(res, target=target, masks=mask)
    assert "recalibrated" in ex.kind.options
    ex.kind.value = "recalibrated"
    ex.slider.value = 0.03
    sigma = 1.3 * res.total[0, 0].numpy().astype(np.float64)
    np.testing.assert_array_equal(ex.mask, sigma.astype(np.float32) > float(ex.slider.value))


def test_without_target_and_masks_the_error_figures_are_absent():
    res, _, _ = _result(b=1)
    ex = threshold_explorer(res)
    ex.slider.value = 0.02
    got = parse_readout(ex.readout.value[6:-7])
    for key in ("error_share", "mae_kept", "coverage_kept", "device_caught"):
        assert got[key] is None
    sigma = res.total[0, 0].numpy()
    assert got["flagged"] == pytest.approx((sigma > ex.slider.value).mean(), rel=RTOL)


def test_cases_of_different_sizes_with_and_without_target():
    small, tgt, msk = _result(b=2, h=16, w=16)
    big, _, _ = _result(b=1, h=40, w=32, seed=3)
    ex = threshold_explorer(
        [small, big], target=[tgt, None], masks=[msk, None], names=["a", "b", "real"]
    )
    assert [o[0] for o in ex.case.options] == ["a", "b", "real"]
    ex.case.value = 2
    assert ex.mask.shape == (40, 32) and ex.im_mean.get_array().shape == (40, 32)
    assert parse_readout(ex.readout.value[6:-7])["mae_kept"] is None
    ex.case.value = 0
    assert parse_readout(ex.readout.value[6:-7])["mae_kept"] is not None


def test_threshold_stats_hand_case():
    sigma = np.array([[0.1, 0.2], [0.3, 0.4]])
    mean = np.zeros((2, 2))
    target = np.array([[0.1, -0.5], [0.2, 1.0]])
    s = threshold_stats(sigma, 0.25, mean=mean, target=target, device=sigma > 0.35)
    # flagged: 0.3, 0.4 -> errors 0.2 + 1.0 of 1.8 in all; kept errors 0.1, 0.5
    assert s.flagged == 0.5 and s.percentile == 50.0
    assert s.error_share == pytest.approx(1.2 / 1.8)
    assert s.mae_kept == pytest.approx(0.3)
    # Gaussian 90 % half-widths 1.645 * 0.1 = 0.16 (0.1 inside), 1.645 * 0.2 = 0.33 (0.5 out)
    assert s.coverage_kept == pytest.approx(0.5)
    assert s.device_caught == 1.0


def test_bad_shapes_are_reported():
    with pytest.raises(ValueError, match="differs from sigma"):
        threshold_stats(np.ones((3, 3)), 0.5, mean=np.ones((3, 3)), target=np.ones((2, 3)))
    with pytest.raises(ValueError, match="percentile=120"):
        threshold_at_percentile(np.ones((3, 3)), 120)
    with pytest.raises(ValueError, match="3 names for 2 cases"):
        threshold_explorer(_result(b=2)[0], names=["a", "b", "c"])


def test_summary_equals_the_readout_in_percentile_mode():
    res, target, mask = _result(b=2)
    ex = threshold_explorer(res, target=target, masks=mask, names=["a", "b"])
    table = ex.summary(percentile=85.0, kind="epistemic")
    assert ex.kind.value == "total" and ex.mode.value == "sigma"  # no control moved
    ex.kind.value, ex.mode.value = "epistemic", "percentile"
    for index, name in enumerate(["a", "b"]):
        ex.case.value = index
        ex.slider.value = 85.0
        shown = parse_readout(ex.readout.value[6:-7])
        for key, value in table[name].items():
            if isinstance(value, float):
                assert shown[key] == pytest.approx(value, rel=RTOL), key
