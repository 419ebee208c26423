"""The foreign-body term of the OOD detector: MapSigma's hinge in closed form and its calibration
against NumPy's quantile and median, the per-image top-k statistic against a sort, the detector's
epistemic sigma sqrt(sigma_u^2 + sigma_m^2) and its three-statistic leave-one-out validation
scores recomputed by hand, the state round trip (float16 weights) and the stored entry
(version 5, weights_only) against the in-memory detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import write_toy_pairs
from skimage.morphology import convex_hull_image

from darkfield_nb.epistemic import OODDetector
from darkfield_nb.epistemic.conversion import MapSigma
from darkfield_nb.epistemic.foreign_body import ForeignBodyConfig
from darkfield_nb.epistemic.foreign_body_term import ForeignBodyTerm, convex_hull_mask
from darkfield_nb.epistemic.fpi import FPINet, body_from_input, fpi_map
from darkfield_nb.models import GeneratorConfig, ProgressiveGenerator

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed: int = 0) -> ProgressiveGenerator:
    torch.manual_seed(seed)
    cfg = GeneratorConfig(n_stages=1, base_width=4, depth=2, dropout=0.0, residual=False)
    return ProgressiveGenerator(cfg).eval()


def _net(seed: int = 1) -> FPINet:
    """A small untrained segmenter whose weights are exactly float16 (so storing them loses
    nothing) and whose BatchNorm statistics are not the defaults."""
    torch.manual_seed(seed)
    net = FPINet(ForeignBodyConfig(channels=(4, 8)))
    with torch.no_grad():
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                w = v + 0.1 * torch.randn_like(v)
                if k.endswith("running_var"):
                    w = w.abs() + 0.5
                v.copy_(w.half().float())
    return net.eval()


def _smooth(b: int, size: int = 16) -> torch.Tensor:
    coarse = torch.rand(b, 1, 4, 4)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")


def test_map_sigma_hinge_closed_form_calibration_and_round_trip():
    c = MapSigma(m_ref=0.2, sigma_ref=0.05, quantile=0.99, gain=4.0)
    m = np.array([0.0, 0.2, 0.6, 1.0, 1.2])
    # 0.05 * 4 * clip((m - 0.2) / 0.8, 0, 1)
    np.testing.assert_allclose(c(m), [0.0, 0.0, 0.1, 0.2, 0.2])
    torch.testing.assert_close(c(torch.tensor(m)), torch.tensor(c(m)))
    rng = np.random.default_rng(0)
    mm, aa = rng.random(1000) ** 4, rng.random(1000) * 0.1
    cal = MapSigma.calibrate(mm, aa, quantile=0.9, gain=2.0)
    assert cal.m_ref == pytest.approx(np.quantile(mm, 0.9))
    assert cal.sigma_ref == pytest.approx(np.median(aa))
    assert MapSigma.from_dict(cal.to_dict()) == cal
    with pytest.raises(ValueError, match="m_ref"):
        MapSigma(1.0, 0.1)
    with pytest.raises(ValueError, match="quantile"):
        MapSigma.calibrate(mm, aa, quantile=1.0)
    with pytest.raises(ValueError, match="finite"):
        MapSigma.calibrate([np.nan], [0.1])


def test_statistic_is_the_top_k_mean_inside_the_body():
    term = ForeignBodyTerm(_net(), top_k=5)
    x = torch.zeros(2, 1, 12, 12)
    x[0, 0, 2:10, 3:9] = 0.5  # a body; image 1 has none (the whole image counts)
    m = torch.rand(2, 1, 12, 12)
    m[0, 0, 0, 0] = 5.0  # outside the body: ignored for image 0
    got = term.statistic(m, x)
    body = body_from_input(x[0, 0].numpy())
    v0 = np.sort(m[0, 0].double().numpy()[body])[::-1][:5].mean()
    v1 = np.sort(m[1, 0].double().numpy().ravel())[::-1][:5].mean()
    np.testing.assert_allclose(got, [v0, v1])
    with pytest.raises(ValueError, match="top_k"):
        ForeignBodyTerm(_net(), top_k=0)


def test_convex_hull_matches_scikit_image():
    rng = np.random.default_rng(0)
    for _ in range(5):
        m = np.zeros((48, 64), bool)
        m[rng.integers(3, 45, 9), rng.integers(3, 60, 9)] = True
        np.testing.assert_array_equal(
            convex_hull_mask(m), convex_hull_image(m, offset_coordinates=False)
        )
    line = np.zeros((8, 8), bool)
    line[2, 1:6] = True  # collinear: the mask itself
    np.testing.assert_array_equal(convex_hull_mask(line), line)


def test_statistic_reads_the_thorax_between_the_lungs():
    term = ForeignBodyTerm(_net(), top_k=3)
    x = torch.full((1, 1, 40, 40), 0.5)
    mu = torch.zeros(1, 1, 40, 40)
    mu[0, 0, 10:30, 5:15] = 0.3  # right lung
    mu[0, 0, 10:30, 25:35] = 0.3  # left lung
    m = torch.zeros(1, 1, 40, 40)
    m[0, 0, 20, 20] = 0.9  # between the lungs: inside the hull
    m[0, 0, 2, 2] = 1.0  # a corner: in the body, outside the thorax
    assert term.statistic(m, x, mu)[0] == pytest.approx(0.9 / 3)
    assert term.statistic(m, x)[0] == pytest.approx((1.0 + 0.9) / 3)  # no mu: the body
    body = ForeignBodyTerm(_net(), top_k=3, region="body")
    assert body.statistic(m, x, mu)[0] == pytest.approx((1.0 + 0.9) / 3)
    few = torch.zeros_like(mu)
    few[0, 0, 0, :10] = 0.3  # 10 field pixels < min_pixels: the body
    assert term.statistic(m, x, few)[0] == pytest.approx((1.0 + 0.9) / 3)
    with pytest.raises(ValueError, match="region"):
        ForeignBodyTerm(_net(), region="lung")


def test_detector_with_the_term_by_hand():
    model = _model()
    torch.manual_seed(6)
    train = [_smooth(4) for _ in range(5)]
    val = [_smooth(1) for _ in range(30)]
    net = _net()
    det = OODDetector(model, levels=(0, 1, 2), foreign_body=ForeignBodyTerm(net, top_k=10))
    det.fit(train, val)
    assert "foreign_body" in det.image_score.names
    # the conversion: m_ref the 99th percentile of the validation map values
    vx = torch.cat(val)
    m_val = fpi_map(net, vx).double().numpy()
    conv = det.foreign_body.conversion
    assert conv.m_ref == pytest.approx(np.quantile(m_val, 0.99), rel=1e-5)
    # the leave-one-out validation score of image i, from the three statistics by hand
    d, pooled, out = det.density.evaluate(vx)
    mu = out.mu.double().numpy()[:, 0]

    def area(xi, ui):  # the thorax (skimage's hull of the lung field), else the body
        field = ui > 0.15
        if field.sum() >= 64:
            return convex_hull_image(field, offset_coordinates=False)
        return body_from_input(xi)

    top = np.array(
        [
            np.sort(mi[area(xi, ui)])[::-1][:10].mean()
            for mi, xi, ui in zip(m_val[:, 0], vx.numpy()[:, 0], mu, strict=True)
        ]
    )
    stats = {"pooled": pooled, "lung_contrast": det.local(d, out.mu), "foreign_body": top}
    lt = np.log(np.stack([stats[k] for k in det.image_score.names], 1))
    i = 4
    rest = np.delete(lt, i, 0)
    want = np.max((lt[i] - rest.mean(0)) / rest.std(0, ddof=1))
    assert det.val_scores[i] == pytest.approx(want, rel=1e-5)
    # the epistemic sigma: sqrt(sigma_u(u)^2 + sigma_m(m)^2)
    x = _smooth(2)
    pred = det.predict(x)
    m = fpi_map(net, x).double().numpy()
    s_u = det.conversion(pred.distance.double().numpy())
    s_m = conv.sigma_ref * conv.gain * np.clip((m - conv.m_ref) / (1 - conv.m_ref), 0, 1)
    np.testing.assert_allclose(
        pred.epistemic.numpy(), np.sqrt(s_u**2 + s_m**2), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(pred.foreign_body.numpy(), m, rtol=1e-6)
    score, sigma = det.score_and_sigma(x)
    np.testing.assert_allclose(score, pred.score)
    torch.testing.assert_close(sigma.float(), pred.epistemic.float())
    # round trip: float16 weights that were float16 already
    again = OODDetector.from_state(model, det.state()).predict(x)
    np.testing.assert_allclose(again.epistemic.numpy(), pred.epistemic.numpy(), rtol=1e-6)
    np.testing.assert_allclose(again.score, pred.score, rtol=1e-9)


def test_attach_with_a_segmenter_checkpoint_writes_version_5(tmp_path):
    from darkfield_nb import checkpoint
    from darkfield_nb.epistemic.store import KEY, attach_ood_detector, detector_from_checkpoint

    data = write_toy_pairs(tmp_path / "data", 10, size=32, n_val=6)
    src = checkpoint.save(tmp_path / "m.pt", _model(), stage=0, epoch=1, stages_trained=1)
    net = _net()
    seg = tmp_path / "seg.pt"
    torch.save(
        {
            "method": "foreign_body",
            "config": vars(net.config) | {"channels": (4, 8)},
            "state_dict": net.state_dict(),
        },
        seg,
    )
    dst, entry = attach_ood_detector(
        src, data, tmp_path / "ood.pt", device="cpu", levels=(0, 1), foreign_body=seg
    )
    raw = torch.load(dst, map_location="cpu", weights_only=True)
    assert raw[KEY]["version"] == 5 and "largest of three" in raw[KEY]["score"]
    fb = raw[KEY]["detector"]["foreign_body"]
    assert (
        fb["state"]["down.0.0.weight"].dtype == torch.float16
        and fb["top_k"] == 50
        and fb["region"] == "thorax"
    )
    det = detector_from_checkpoint(checkpoint.load_checkpoint(dst))
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(det.foreign_body_map(x), fpi_map(net, x))
    # without the term the same data gives a version-3 entry
    _, plain = attach_ood_detector(src, data, tmp_path / "plain.pt", device="cpu", levels=(0, 1))
    assert plain["version"] == 3 and "foreign_body" not in plain["detector"]
