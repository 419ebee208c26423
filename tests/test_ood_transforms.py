"""bench/ood_transforms.py's pixel-map transforms and local statistics (session 18), which the
numbers in bench/RESULTS.md rest on: the top-hat against scipy.ndimage.white_tophat and a
hand case, the ridge filter against scikit-image's Hessian eigenvalues and a line profile, the
local statistics against NumPy by hand, the case tables' AUROC against scikit-learn."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from skimage.feature import hessian_matrix, hessian_matrix_eigvals
from sklearn.metrics import roc_auc_score

BENCH = Path(__file__).resolve().parents[1] / "bench" / "ood_transforms.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("ood_targets_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tophat_matches_scipy_and_a_hand_case(bench):
    rng = np.random.default_rng(0)
    u = rng.gamma(2.0, 1.0, size=(40, 50))
    for k in (5, 9):
        ref = ndimage.white_tophat(u, size=(k, k), mode="nearest")
        np.testing.assert_allclose(bench._tophat(u, k), ref, atol=1e-12)
    # a 1 px line of height 3 on a plateau of 1 and a 12 px wide block of height 2: a 5 x 5
    # top-hat keeps the line (3 - 1 = 2) and removes the block, which the square fits inside
    hand = np.ones((30, 30))
    hand[:, 5] = 3.0
    hand[8:20, 14:26] = 2.0
    th = bench._tophat(hand, 5)
    np.testing.assert_allclose(th[:, 5], 2.0)
    np.testing.assert_allclose(np.delete(th, 5, axis=1), 0.0, atol=1e-12)


def test_ridge_matches_scikit_image_hessian(bench):
    rng = np.random.default_rng(1)
    u = ndimage.gaussian_filter(rng.normal(size=(48, 48)), 2.0)
    for s in (1.0, 2.0):
        h = hessian_matrix(u, sigma=s, mode="nearest", order="rc", use_gaussian_derivatives=True)
        lmin = hessian_matrix_eigvals(h)[-1]  # eigenvalues in decreasing order
        want = s**2 * np.maximum(-lmin, 0.0)
        # scikit-image samples its own Gaussian-derivative kernels (scipy's differ in the
        # truncation), so the two agree to ~2 % of the map inside the image, not at the border
        inner = (slice(10, -10), slice(10, -10))
        got = bench._ridge(u, s)
        np.testing.assert_allclose(got[inner], want[inner], atol=0.02 * want.max())
        assert np.corrcoef(got[inner].ravel(), want[inner].ravel())[0, 1] > 0.999


def test_ridge_peaks_on_a_bright_line(bench):
    x = np.arange(64, dtype=float)
    u = np.tile(np.exp(-((x - 30.0) ** 2) / (2 * 1.5**2)), (40, 1))  # a vertical line
    r = bench._ridge(u, 1.5)[20]
    assert np.argmax(r) == 30
    assert r[30] > 0 and r[0] == pytest.approx(0.0, abs=1e-9)  # flat far away: no ridge


def test_local_statistics_by_hand(bench):
    a = np.arange(100, dtype=float).reshape(10, 10) + 1.0  # values 1 .. 100
    region = np.zeros((10, 10), bool)
    region[:8] = True  # values 1 .. 80
    v = a[region]
    q50 = np.quantile(v, 0.5)
    assert bench._local(a, region, "Q99/Q50") == pytest.approx(np.quantile(v, 0.99) / q50)
    assert bench._local(a, region, "Q99.9") == pytest.approx(np.quantile(v, 0.999))
    assert bench._local(a, region, "top10") == pytest.approx(np.mean(np.arange(71, 81)))
    assert bench._local(a, region, "top30/Q50") == pytest.approx(np.mean(np.arange(51, 81)) / q50)
    small = np.zeros((10, 10), bool)
    small[0, :5] = True  # fewer than 64 pixels: the neutral value
    assert bench._local(a, small, "Q99/Q50") == 1.0


def test_case_table_matches_scikit_learn(bench):
    rng = np.random.default_rng(2)
    items, maps = [], []
    for j, case in enumerate(("pacemaker", "pacemaker", "cables", "cables", "clips", "clips")):
        dev = np.zeros((20, 20), bool)
        dev[5:8, 5 + j : 9 + j] = True
        lung = np.zeros((20, 20), bool)
        lung[10:18, 2:18] = True
        body = ~dev
        maps.append(rng.normal(size=(20, 20)) + 1.5 * dev)
        items.append({"id": f"p{j}", "case": case, "dev": dev, "lung": lung, "body": body})
    half = {f"p{j}": "tune" if j % 2 == 0 else "report" for j in range(6)}
    t = bench.case_table(maps, items, half)
    for m, it in zip(maps, items, strict=True):
        for ref in ("lung", "body"):
            keep = it["dev"] | it[ref]
            want = roc_auc_score(it["dev"][keep], m[keep])
            assert t[half[it["id"]]][it["case"]][ref] == pytest.approx(want)


def test_largest_component_by_hand(bench):
    a = np.zeros((12, 12))
    a[1:4, 1:4] = 5.0  # 9 pixels
    a[6, 2:9] = 5.0  # 7 pixels in a row
    a[9, 9] = a[10, 10] = 5.0  # diagonal neighbours: two 4-connected components of 1
    region = np.ones((12, 12), bool)
    assert bench._largest_component(a, region, 1.0) == 10.0  # 1 + 9
    region[:5] = False  # drops the 3 x 3 block
    assert bench._largest_component(a, region, 1.0) == 8.0
    assert bench._largest_component(a, region, 5.0) == 1.0  # nothing strictly above
