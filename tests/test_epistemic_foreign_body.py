"""darkfield_nb.epistemic.foreign_body: the synthetic foreign-body corruption against closed
forms and independent references (distance to a polyline against scipy's distance to densely
sampled points, the tube's cross-section integral against the half-disc area, the ellipse's
area against pi a b, the Bezier curve against its Bernstein form), the label rule by hand, a
clean draw, seeded determinism, and a tiny training run through ``train_fpi`` whose checkpoint
loads back (``weights_only``) as a foreign-body net."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from darkfield_nb.epistemic.foreign_body import (
    ForeignBodyConfig,
    band_profile,
    bezier,
    distance_to_polyline,
    foreign_body_batch,
    foreign_body_corrupt,
    render_curve,
    render_ellipse,
    tube_profile,
)
from darkfield_nb.epistemic.fpi import FPINet, fpi_map, load_fpi, train_fpi

pytestmark = pytest.mark.usefixtures("one_thread")


def test_distance_to_polyline_matches_dense_sampling():
    pts = np.array([[3.2, 4.1], [20.5, 30.0], [25.0, 8.3]])
    d = distance_to_polyline(pts, (32, 40))
    dense = np.concatenate(
        [
            a + np.linspace(0, 1, 4001)[:, None] * (b - a)
            for a, b in zip(pts[:-1], pts[1:], strict=True)
        ]
    )
    rr, cc = np.mgrid[0:32, 0:40]
    ref, _ = cKDTree(dense).query(np.stack([rr.ravel(), cc.ravel()], 1))
    # dense points every <= 0.01 px: the sampled distance exceeds the true one by < 0.005 px
    np.testing.assert_allclose(d.ravel(), ref, atol=5e-3)
    assert d[3, 4] == pytest.approx(math.hypot(0.2, 0.1))


def test_tube_cross_section_integrates_to_the_half_disc():
    # a horizontal tube along row 20: s = chord / diameter = sqrt(1 - (d / r)^2), whose
    # integral across the tube is pi r / 2 (half-disc area over r). Sampled at pixel centres
    # the sum misses part of the rim (a square-root edge), less as r grows.
    errors = []
    for r in (1.5, 3.0, 6.0, 12.0):
        d = distance_to_polyline(np.array([[20.0, -5.0], [20.0, 60.0]]), (41, 50))
        col = tube_profile(d, r)[:, 25]
        errors.append(abs(col.sum() / (math.pi * r / 2) - 1))
    assert max(errors) < 0.08
    assert errors[-1] < errors[1] < 0.08 and errors[-1] < 0.02
    # thin tube: one pixel at the mean height pi r / 2
    d = np.array([0.0, 0.4, 0.6])
    np.testing.assert_allclose(tube_profile(d, 0.3), [math.pi * 0.15, math.pi * 0.15, 0.0])


def test_band_profile_by_hand():
    d = np.array([0.0, 1.0, 1.6, 2.0, 2.4])
    np.testing.assert_allclose(band_profile(d, 1.5), [1.0, 1.0, 0.4, 0.0, 0.0])
    np.testing.assert_allclose(band_profile(np.array([0.0, 0.6]), 0.25), [0.5, 0.15])


def test_bezier_matches_bernstein_form():
    ctrl = np.array([[0.0, 0.0], [1.0, 3.0], [4.0, -1.0], [5.0, 2.0]])
    p = bezier(ctrl, 11)
    t = np.linspace(0, 1, 11)[:, None]
    bern = (
        (1 - t) ** 3 * ctrl[0]
        + 3 * (1 - t) ** 2 * t * ctrl[1]
        + 3 * (1 - t) * t**2 * ctrl[2]
        + t**3 * ctrl[3]
    )
    np.testing.assert_allclose(p, bern, atol=1e-12)


def test_ellipse_flat_fill_area_is_pi_a_b():
    cfg = ForeignBodyConfig(axes=(6.0, 12.0))
    hits = 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        # replay the draw to know the axes and the kind
        probe = np.random.default_rng(seed)
        cy, cx = probe.uniform([0, 0], [96, 96])
        a, b = np.exp(probe.uniform(*np.log(cfg.axes), size=2))
        probe.uniform(0, math.pi)
        kind = probe.integers(0, 3)
        s = render_ellipse((96, 96), rng, cfg)
        inside = 12 < cy < 84 and 12 < cx < 84
        if kind == 0 and inside:
            hits += 1
            assert s.sum() == pytest.approx(math.pi * a * b, rel=0.08)
        assert 0.0 <= s.min() and s.max() <= 1.0
    assert hits >= 3


def test_corruption_adds_the_layer_and_labels_by_threshold():
    x = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    cfg = ForeignBodyConfig(p_clean=0.0, blur=(0.0, 0.0), label_threshold=0.05)
    out, y = foreign_body_corrupt(x, np.random.default_rng(5), cfg)
    layer = out.astype(np.float64) - x
    assert (layer >= -1e-6).all() and layer.max() > 0
    np.testing.assert_allclose(y, np.minimum(1.0, np.clip(layer, 0, None) / 0.05), atol=1e-4)
    # clean draws leave the image unchanged with an all-zero label
    out, y = foreign_body_corrupt(x, np.random.default_rng(5), ForeignBodyConfig(p_clean=1.0))
    np.testing.assert_array_equal(out, x)
    assert not y.any()


def test_corruption_is_deterministic_and_curves_stay_in_range():
    x = np.zeros((48, 48), np.float32)
    a = foreign_body_corrupt(x, np.random.default_rng(7))
    b = foreign_body_corrupt(x, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    s = render_curve((48, 48), np.random.default_rng(1), ForeignBodyConfig())
    assert s.shape == (48, 48) and 0.0 <= s.min() and s.max() <= 1.0


def test_batch_crops_and_flips():
    imgs = torch.rand(4, 1, 40, 50)
    xb, yb = foreign_body_batch(
        imgs, np.array([0, 2]), np.random.default_rng(0), ForeignBodyConfig(crop=32)
    )
    assert xb.shape == yb.shape == (2, 1, 32, 32)
    assert float(yb.min()) >= 0 and float(yb.max()) <= 1


def test_config_errors():
    with pytest.raises(ValueError, match="contrast"):
        ForeignBodyConfig(contrast=(0.0, 1.0))
    with pytest.raises(ValueError, match="radius"):
        ForeignBodyConfig(radius=(2.0, 1.0))
    with pytest.raises(ValueError, match="p_clean"):
        ForeignBodyConfig(p_clean=1.5)


def test_tiny_training_through_train_fpi_and_load(tmp_path):
    imgs = torch.rand(6, 1, 32, 32) * 0.2
    cfg = ForeignBodyConfig(channels=(4, 8), epochs=2, steps_per_epoch=3, batch_size=4, seed=1)
    net, hist = train_fpi(
        imgs, cfg, holdout=imgs[:2], checkpoint=tmp_path / "fb.pt", device="cpu", log=lambda s: None
    )
    assert len(hist["train"]) == 2 and len(hist["holdout"]) == 2
    ck = torch.load(tmp_path / "fb.pt", weights_only=True)
    assert ck["method"] == "foreign_body"
    loaded = load_fpi(tmp_path / "fb.pt")
    assert isinstance(loaded, FPINet)
    torch.testing.assert_close(fpi_map(loaded, imgs), fpi_map(net, imgs))
    ck["method"] = "nonsense"
    torch.save(ck, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt.*nonsense"):
        load_fpi(tmp_path / "bad.pt")
