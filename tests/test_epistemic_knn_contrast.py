"""The detector's opt-in kNN lung contrast (``OODDetector(contrast_density="knn")``).

References: the lung-restricted contrast against the full kNN map (``KNNDensity.distance`` over
every pixel of hand-built 3 x 3 patch vectors, cropped, then NumPy quantiles inside a
scipy-eroded lung field); an old (Gaussian) state against the pre-option score rebuilt from
its parts (``MultiLevelDensity.evaluate``, ``LungContrast``, ``MaxZScore``); float16 memory
against float32 with the closed-form bound ``|d16 - d32| <= max_j ||m_j - fp16(m_j)||``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import write_toy_pairs
from scipy import ndimage

from darkfield_nb.epistemic import (
    KNNDensity,
    LungContrast,
    MultiLevelDensity,
    OODDetector,
    encoder_features,
)
from darkfield_nb.models import GeneratorConfig, ProgressiveGenerator

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 30  # not a multiple of the toy model's stride 4: padded to 32, pads (1, 1, 1, 1)
LOCAL = LungContrast(mu_threshold=0.0, erosion=1, min_pixels=16)  # the toy "lung": mu > 0


def _model(seed: int = 0) -> ProgressiveGenerator:
    torch.manual_seed(seed)
    cfg = GeneratorConfig(n_stages=1, base_width=4, depth=2, dropout=0.0, residual=False)
    return ProgressiveGenerator(cfg).eval()


def _smooth(b: int, size: int = SIZE) -> torch.Tensor:
    coarse = torch.rand(b, 1, 5, 5)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")


def _knn_detector(seed: int = 3, **kw) -> tuple[OODDetector, list, list]:
    model = _model()
    torch.manual_seed(seed)
    train, val = [_smooth(3) for _ in range(4)], [_smooth(1) for _ in range(12)]
    kw = {"contrast_knn": KNNDensity(size=150, dim=8, k=1, seed=0)} | kw
    det = OODDetector(model, levels=(0, 1), local=LOCAL, contrast_density="knn", **kw)
    return det.fit(train, val), train, val


def _patch_rows(model, x: torch.Tensor) -> np.ndarray:
    """(B, Hp, Wp, 9 C) hand-built 3 x 3 replicate-padded neighbourhoods of level 0."""
    f = encoder_features(model, x, 0).double().numpy()
    h, w = f.shape[-2:]
    fp = np.pad(f, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    g = np.stack([fp[:, :, i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=2)
    return g.reshape(f.shape[0], -1, h, w).transpose(0, 2, 3, 1)


def test_lung_restricted_knn_contrast_equals_the_full_map() -> None:
    det, _, _ = _knn_detector()
    knn = det.contrast_knn
    torch.manual_seed(4)
    x = _smooth(4)
    pred = det.predict(x)
    rows = _patch_rows(det.model, x)  # (4, 32, 32, 36): the padded grid
    b, hp, wp, p = rows.shape
    full = knn.distance(rows.reshape(-1, p).astype(np.float32)).double().numpy()
    full = (full / knn.reference).reshape(b, hp, wp)[:, 1:-1, 1:-1]  # cropped to 30 x 30
    mu = pred.mean[:, 0].double().numpy()
    want = np.ones(b)
    n_lung = []
    for i in range(b):
        region = ndimage.binary_erosion(mu[i] > 0.0, iterations=1)
        n_lung.append(int(region.sum()))
        if region.sum() >= 16:
            lo, hi = np.quantile(full[i][region], [0.5, 0.99])
            want[i] = hi / lo
    assert min(n_lung) >= 16 and max(n_lung) < SIZE * SIZE  # a real, partial lung field
    feats = [encoder_features(det.model, x, lv) for lv in det.density.levels]
    got = det.knn_contrast(feats, pred.mean, x)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert (got > 1).all()
    # the score is the max z of the shipped pooled distance and this contrast
    pooled = det.density.evaluate(x)[1]
    np.testing.assert_allclose(
        pred.score, det.image_score({"pooled": pooled, "lung_contrast": want}), atol=1e-5
    )  # z-scores: a 1e-6 relative contrast error over a spread of log contrasts
    assert det.image_score.names == ["pooled", "lung_contrast"]
    # the pixel maps stay Gaussian: the same as a Gaussian detector on the same training data
    torch.manual_seed(3)
    train, val = [_smooth(3) for _ in range(4)], [_smooth(1) for _ in range(12)]
    gauss = OODDetector(det.model, levels=(0, 1), local=LOCAL).fit(train, val)
    g_pred = gauss.predict(x)
    np.testing.assert_array_equal(pred.distance.numpy(), g_pred.distance.numpy())
    np.testing.assert_array_equal(pred.epistemic.numpy(), g_pred.epistemic.numpy())
    assert not np.allclose(pred.score, g_pred.score)  # the contrast did change


def test_no_lung_field_gives_contrast_one() -> None:
    det, _, _ = _knn_detector()
    x = _smooth(2)
    feats = [encoder_features(det.model, x, lv) for lv in det.density.levels]
    mu = torch.full((2, 1, SIZE, SIZE), -1.0)  # nowhere above the threshold
    np.testing.assert_array_equal(det.knn_contrast(feats, mu, x), [1.0, 1.0])


def test_knn_is_fitted_on_the_gaussian_sample_and_rounded_to_float16() -> None:
    det, train, _ = _knn_detector()
    ref = MultiLevelDensity(det.model, levels=(0, 1), pixel_levels=(0,), patch=3)
    ref.fit(train, keep_vectors=True)
    vec = ref.pixel_vectors[0]  # the vectors the pixel Gaussian of level 0 is fitted on
    np.testing.assert_array_equal(
        ref.parts[0].pixel.precision, det.density.parts[0].pixel.precision
    )
    assert det.density.pixel_vectors == {}  # dropped after the fit
    knn = det.contrast_knn
    assert knn.memory.shape == (150, 36) and knn.memory.dtype == np.float32
    want = vec[knn.index].astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(knn.memory, want)


def test_state_round_trip_scores_identically() -> None:
    det, _, _ = _knn_detector()
    state = det.state()
    mem = state["contrast"]["knn"]["memory"]
    assert state["contrast"]["dtype"] == "float16" and mem.dtype == torch.float16
    again = OODDetector.from_state(det.model, state)
    assert again.contrast_density == "knn" and again.contrast_knn.k == 1
    torch.manual_seed(5)
    x = _smooth(3)
    a, b = det.predict(x), again.predict(x)
    np.testing.assert_array_equal(a.score, b.score)
    np.testing.assert_array_equal(a.flag, b.flag)
    np.testing.assert_array_equal(a.distance.numpy(), b.distance.numpy())
    assert again.threshold == det.threshold


def test_old_state_scores_exactly_as_the_pre_option_code() -> None:
    """An entry without the new key is Gaussian: its score is the pre-option score, rebuilt
    from its parts as the detector computed it before the option existed."""
    det, _, _ = _knn_detector()
    state = det.state()
    state.pop("contrast")
    old = OODDetector.from_state(det.model, state)
    assert old.contrast_density == "gaussian" and old.contrast_knn is None
    torch.manual_seed(6)
    x = _smooth(3)
    u, pooled, out = old.density.evaluate(x)
    want = old.image_score({"pooled": pooled, "lung_contrast": old.local(u, out.mu)})
    np.testing.assert_array_equal(old.predict(x).score, want)
    np.testing.assert_array_equal(old.score(x), want)
    # a detector fitted with the default has no "contrast" key at all
    torch.manual_seed(3)
    train, val = [_smooth(3) for _ in range(4)], [_smooth(1) for _ in range(12)]
    gauss = OODDetector(det.model, levels=(0, 1), local=LOCAL).fit(train, val)
    assert "contrast" not in gauss.state()
    u, pooled, out = gauss.density.evaluate(x)
    want = gauss.image_score({"pooled": pooled, "lung_contrast": gauss.local(u, out.mu)})
    np.testing.assert_array_equal(gauss.predict(x).score, want)


def test_float16_memory_distances_within_the_rounding_bound() -> None:
    """|d16(x) - d32(x)| <= max_j ||m_j - fp16(m_j)||_2 (triangle inequality; the nearest
    member may change), itself <= 2**-11 max_j ||m_j||; plus float32 slack."""
    rng = np.random.default_rng(0)
    train = (rng.standard_normal((2000, 144)) * 2.0 + 3.0).astype(np.float32)
    query = (rng.standard_normal((500, 144)) * 2.5 + 3.0).astype(np.float32)
    d32 = KNNDensity(size=500, dim=64, seed=0).fit(train)
    d16 = KNNDensity.from_dict(d32.to_dict())
    d16.memory = d32.memory.astype(np.float16).astype(np.float32)
    a, b = d32.distance(query).double().numpy(), d16.distance(query).double().numpy()
    bound = np.linalg.norm(d32.memory - d16.memory, axis=1).max()
    assert bound <= 2.0**-11 * np.linalg.norm(d32.memory, axis=1).max()
    assert np.abs(a - b).max() <= bound + 1e-5 * a.max()
    assert np.abs(a - b).max() / np.median(a) < 1e-3  # the tolerance stated in the report


def test_coarser_contrast_level_uses_the_upsampled_full_map() -> None:
    det, _, _ = _knn_detector(pixel_levels=(1,))
    assert det.contrast_level == 1
    torch.manual_seed(7)
    x = _smooth(2)
    pred = det.predict(x)
    f = encoder_features(det.model, x, 1)
    from darkfield_nb.epistemic import patch_features

    g = patch_features(f, 3)
    b, c, h, w = g.shape
    v = det.contrast_knn.distance(g.permute(0, 2, 3, 1).reshape(-1, c)) / det.contrast_knn.reference
    up = torch.nn.functional.interpolate(v.reshape(b, 1, h, w), size=(32, 32), mode="bilinear")
    want = LOCAL(up[..., 1:-1, 1:-1], pred.mean)
    feats = [encoder_features(det.model, x, lv) for lv in det.density.levels]
    np.testing.assert_allclose(det.knn_contrast(feats, pred.mean, x), want, rtol=1e-6)


def test_bad_options_are_errors() -> None:
    with pytest.raises(ValueError, match="contrast_density 'mahalanobis'"):
        OODDetector(_model(), contrast_density="mahalanobis")
    with pytest.raises(ValueError, match="contrast_dtype 'int8'"):
        OODDetector(_model(), contrast_density="knn", contrast_dtype="int8")


def _pairs(root, n: int = 10, size: int = 32, n_val: int = 6):
    """:func:`helpers.write_toy_pairs` with this file's defaults."""
    return write_toy_pairs(root, n, size=size, n_val=n_val)


def test_attach_passes_the_option_through_and_stores_float16(tmp_path) -> None:
    from darkfield_nb import checkpoint
    from darkfield_nb.epistemic.store import (
        GAUSSIAN_VERSION,
        KEY,
        KNN_VERSION,
        attach_ood_detector,
        detector_from_checkpoint,
    )

    data = _pairs(tmp_path / "data")
    src = checkpoint.save(tmp_path / "m.pt", _model(), stage=0, epoch=1, stages_trained=1)
    kw = {"device": "cpu", "levels": (0, 1), "local": LOCAL}
    g_path, g_entry = attach_ood_detector(src, data, tmp_path / "g.pt", **kw)
    knn = KNNDensity(size=100, dim=8, seed=0)
    k_path, k_entry = attach_ood_detector(
        src, data, tmp_path / "k.pt", contrast_density="knn", contrast_knn=knn, **kw
    )
    assert g_entry["version"] == GAUSSIAN_VERSION == 3 and "contrast" not in g_entry["detector"]
    raw = torch.load(k_path, map_location="cpu", weights_only=True)[KEY]
    assert raw["version"] == KNN_VERSION == 4
    mem = raw["detector"]["contrast"]["knn"]["memory"]
    assert mem.dtype == torch.float16 and mem.shape == (100, 36)
    # the Gaussian part of both entries is the same fit
    for a, b in zip(raw["detector"]["parts"], g_entry["detector"]["parts"], strict=True):
        assert torch.equal(a["image"]["precision"], b["image"]["precision"])
    det = detector_from_checkpoint(checkpoint.load_checkpoint(k_path))
    g_det = detector_from_checkpoint(checkpoint.load_checkpoint(g_path))
    assert det.contrast_density == "knn" and g_det.contrast_density == "gaussian"
    x = _smooth(3, 32)
    feats = [encoder_features(det.model, x, lv) for lv in det.density.levels]
    out = det.predict(x)
    stats = {"pooled": det.density.evaluate(x)[1]}
    stats["lung_contrast"] = det.knn_contrast(feats, out.mean, x)
    np.testing.assert_array_equal(out.score, det.image_score(stats))
    # keeping the densities of a Gaussian entry cannot add a kNN contrast
    with pytest.raises(ValueError, match="no kNN contrast density"):
        attach_ood_detector(
            g_path, data, tmp_path / "x.pt", keep_densities=True, contrast_density="knn", **kw
        )
