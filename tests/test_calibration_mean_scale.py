"""The mean's factor c of the stored recalibration (``calibration.mean_scale``, entry version 3):
fitted as the ratio of the mean per-image lung D of the truth and of the prediction, applied by
predict / synthesize to the dark-field before the sigma factors (which then read the scaled
mean), absent (c = 1) in older entries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import toy_generator, toy_recalibration

from darkfield_nb.calibration.mean_scale import MIN_LUNG_PIXELS, fit_mean_scale, lung_d_bias
from darkfield_nb.calibration.store import (
    apply_recalibration,
    check_entry,
    mean_factor,
    strict_json,
)
from darkfield_nb.inference.hookups import apply_recalibration_maps, recalibration_message
from darkfield_nb.synthesis import synthesize


def _field_scaling(t: float = 0.1, f_in: float = 0.8, f_out: float = 0.5) -> dict:
    return {
        "kind": "sigma_scaling",
        "factor": 0.6,
        "per_region": {},
        "method": "coverage",
        "p": 0.9,
        "per_field": {"predicted_lung": f_in, "outside": f_out},
        "lung_threshold": t,
    }


def _entry(c: float | None) -> dict:
    recal = toy_recalibration(_field_scaling(), 40, version=3 if c is not None else 2)
    if c is not None:
        recal["mean_scale"] = {"factor": c, "lung_D_bias_before": 1 / c - 1, "skipped": None}
    return recal


def test_fit_mean_scale_hand_computed():
    """Two images with 100 lung pixels each: truth lung means 0.2 and 0.1, predictions 0.25 and
    0.10, so c = 0.15 / 0.175; a third image with too few lung pixels is left out, and pixels
    outside the lung do not count."""
    y = np.zeros((3, 20, 20))
    mu = np.full((3, 20, 20), 5.0)  # outside the lung: ignored
    lung = np.zeros((3, 20, 20), bool)
    lung[:2, :10, :10] = True
    y[0][lung[0]], mu[0][lung[0]] = 0.2, 0.25
    y[1][lung[1]], mu[1][lung[1]] = 0.1, 0.10
    lung[2, :3, :10] = True  # 30 pixels
    assert lung[2].sum() < MIN_LUNG_PIXELS
    y[2][lung[2]], mu[2][lung[2]] = 9.0, 0.01
    assert fit_mean_scale(y, mu, lung) == pytest.approx(0.15 / 0.175, rel=1e-12)


def test_fit_mean_scale_makes_the_mean_lung_d_right():
    """On random images with random lung masks, c mu has the truth's mean per-image lung D
    (computed independently with NumPy masked arrays)."""
    rng = np.random.default_rng(3)
    y = rng.gamma(4.0, 0.05, (6, 32, 32))
    mu = 1.07 * y + rng.normal(0, 0.02, y.shape)
    lung = rng.random((6, 32, 32)) < rng.uniform(0.2, 0.6, (6, 1, 1))
    c = fit_mean_scale(y, mu, lung)
    per_image = lambda a: np.ma.masked_array(a, ~lung).mean(axis=(1, 2)).filled()  # noqa: E731
    assert per_image(c * mu).mean() == pytest.approx(per_image(y).mean(), rel=1e-10)
    assert c == pytest.approx(1 / 1.07, rel=0.02)
    want = per_image(mu).mean() / per_image(y).mean() - 1
    assert lung_d_bias(y, mu, lung) == pytest.approx(want, rel=1e-10)
    assert lung_d_bias(y, c * mu, lung) == pytest.approx(0.0, abs=1e-12)


def test_fit_mean_scale_errors():
    y = np.full((2, 16, 16), 0.2)
    lung = np.ones((2, 16, 16), bool)
    with pytest.raises(ValueError, match="one"):
        fit_mean_scale(y, y[:1], lung)
    with pytest.raises(ValueError, match="lung pixels"):
        fit_mean_scale(y, y, np.zeros_like(lung))
    with pytest.raises(ValueError, match="positive"):
        fit_mean_scale(y, -y, lung)


def test_mean_factor_of_entries():
    assert mean_factor(_entry(0.95)) == 0.95
    assert mean_factor(_entry(None)) == 1.0  # a version-2 entry
    bad = _entry(0.95)
    bad["mean_scale"]["factor"] = -1.0
    with pytest.raises(ValueError, match="mean_scale"):
        mean_factor(bad)
    with pytest.raises(ValueError, match="x.pt: recalibration entry: mean_scale factor"):
        check_entry(bad, "x.pt")  # what loading a checkpoint with such an entry says
    newer = {**_entry(0.95), "version": 5}
    with pytest.raises(ValueError, match="newer"):
        check_entry(newer, "x.pt")


def test_apply_scales_the_mean_before_the_sigma_factors():
    """Hand-computed pixels with t = 0.1, f_in 0.8, f_out 0.5 and c = 0.9: a mean of 0.105
    becomes 0.0945, below t, so it takes f_out (it took f_in without c); 0.2 -> 0.18 keeps f_in."""
    mean = np.array([[0.105, 0.2]], dtype=np.float32)
    sig = np.array([[0.04, 0.05]], dtype=np.float32)
    maps = {"darkfield": mean, "aleatoric": sig, "epistemic": sig / 2, "total": sig * 1.2}
    got, scale = apply_recalibration_maps(maps, _entry(0.9))
    np.testing.assert_allclose(got["darkfield"], [[0.0945, 0.18]], rtol=1e-6)
    np.testing.assert_array_equal(scale, [[0.5, 0.8]])
    np.testing.assert_allclose(got["aleatoric"], [[0.02, 0.04]], rtol=1e-6)
    assert got["darkfield"].dtype == np.float32
    old, old_scale = apply_recalibration_maps(maps, _entry(None))
    np.testing.assert_array_equal(old["darkfield"], mean)  # an older entry: mean unchanged
    np.testing.assert_array_equal(old_scale, [[0.8, 0.8]])
    full = apply_recalibration(_entry(0.9), mean, sig, np.full_like(sig, 2.0), sig)
    np.testing.assert_allclose(full["mean"], [[0.0945, 0.18]], rtol=1e-6)
    np.testing.assert_allclose((full["lo"] + full["hi"]) / 2, [[0.0945, 0.18]], rtol=1e-6)
    assert "dark-field x 0.9" in recalibration_message(_entry(0.9), "m.pt")
    assert "dark-field x" not in recalibration_message(_entry(None), "m.pt")


def test_synthesize_writes_c_times_the_mean():
    """synthesize with an entry whose c = 0.8 writes 0.8 x the dark-field it writes with the
    same entry at c = 1 (same seed, same passes)."""
    torch.manual_seed(0)
    model = toy_generator()
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    kw = dict(samples=2, seed=1, resample=False)
    one = synthesize(model, image, recalibration=_entry(1.0), **kw)
    scaled = synthesize(model, image, recalibration=_entry(0.8), **kw)
    np.testing.assert_allclose(scaled.darkfield, 0.8 * one.darkfield, rtol=1e-5, atol=1e-7)


def test_fit_recalibration_fits_c_then_the_sigmas_on_c_mu(tmp_path):
    """A toy model with a positive mean (head bias +0.4): the stored c is the ratio of the mean
    per-image lung D of the val targets and of the same MC predictions (computed here from
    collect_predictions and the LUNG bit), and the stored coverage after the mean's factor is
    the coverage of c mu; ``mean_scale=False`` stores c = 1 and says why."""
    from helpers import write_toy_chest_set

    from darkfield_nb import calibration as cal
    from darkfield_nb.data import PairedDataset
    from darkfield_nb.labels import LUNG

    data = write_toy_chest_set(tmp_path / "d", ["train", "val", "val", "val"], seed=2)
    model = toy_generator()
    with torch.no_grad():
        model.stages[-1].head_mu.bias.fill_(0.4)
    kw = dict(samples=2, stage=1, device="cpu", progress=False, min_pixels=50)
    recal = cal.fit_recalibration(model, data, **kw)
    preds = cal.collect_predictions(
        model, PairedDataset(data, split="val", pad_multiple=1), samples=2, seed=0, stage=1,
        progress=False,
    )  # fmt: skip
    lung = (preds.mask & LUNG) > 0
    per_image = lambda a: np.array([np.float64(a[i][lung[i]]).mean() for i in range(len(a))])  # noqa: E731
    want = per_image(preds.y).mean() / per_image(preds.mu).mean()
    ms = recal["mean_scale"]
    assert ms["factor"] == pytest.approx(want, rel=1e-9) and ms["skipped"] is None
    assert ms["lung_D_bias_before"] == pytest.approx(1 / want - 1, rel=1e-9)
    a_t = preds.alpha_total
    cov = cal.coverage(preds.y, want * preds.mu, 0.9, alpha=a_t, beta=preds.beta)
    assert recal["fit_coverage"]["mean_scale"] == pytest.approx(cov, abs=1e-9)
    raw = cal.coverage(preds.y, preds.mu, 0.9, alpha=a_t, beta=preds.beta)
    assert recal["fit_coverage"]["before"] == pytest.approx(raw, abs=1e-9)
    off = cal.fit_recalibration(model, data, mean_scale=False, **kw)
    assert off["mean_scale"]["factor"] == 1.0 and "not asked" in off["mean_scale"]["skipped"]


def test_calibration_report_scores_after_on_c_mu():
    """``evaluate --json``'s report: ``before`` on the network's mean, ``after.mean_scale`` and
    the sigma fits on c mu (each checked against calibration_summary on the same arrays)."""
    from darkfield_nb import calibration as cal
    from darkfield_nb.labels import LUNG

    rng = np.random.default_rng(7)
    n, h, w = 3, 24, 24
    y = rng.gamma(4.0, 0.05, (n, h, w)).astype(np.float32)
    mu = (1.1 * y + rng.normal(0, 0.03, y.shape)).astype(np.float32)
    tot = np.full(y.shape, 0.04, np.float32)
    mask = np.zeros(y.shape, np.uint16)
    mask[:, 4:20, 3:21] = LUNG
    x = rng.random(y.shape).astype(np.float32)
    preds = cal.Predictions(
        mu=mu, aleatoric=tot, epistemic=0 * tot, total=tot, beta=np.full_like(y, 1.5),
        ids=np.arange(n), y=y, x=x, mask=mask, alpha=tot,
    )  # fmt: skip
    recal = _entry(1 / 1.1)
    rep = cal.calibration_report(preds, recal)
    regions, a_t = preds.regions(), preds.alpha_total
    ref = lambda m, a: json.loads(  # noqa: E731
        json.dumps(strict_json(cal.calibration_summary(y, m, a, preds.beta, regions)))
    )
    assert rep["before"] == ref(mu, a_t)
    c = 1 / 1.1
    assert rep["after"]["mean_scale"] == ref(c * mu, a_t)
    assert rep["after"]["sigma_scaling"] == ref(c * mu, 0.6 * a_t)
    assert rep["after"]["mean_scale"] != rep["before"]
