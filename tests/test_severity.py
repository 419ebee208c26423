"""The disease-severity study (darkfield_nb.severity) on a tiny random model at a tiny size.

References: the simulator itself (the true D of a sweep is the simulated pair's), scipy's
gennorm for the central interval, scipy.stats.spearmanr / linregress for the summary, and
hand-made rows for pooling and the verdict's branches.
"""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch
from scipy import stats

from darkfield_nb import labels
from darkfield_nb import severity as sv
from darkfield_nb.models import GeneratorConfig, ProgressiveGenerator
from darkfield_nb.physics import make_patient, simulate
from darkfield_nb.viz import plot_severity_sweep

matplotlib.use("Agg")

SIZE, SEED = 64, 9001  # patient 9001: a regional emphysema with lesions in both lungs


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ProgressiveGenerator(GeneratorConfig(n_stages=2, base_width=4, depth=2, dropout=0.2))


@pytest.fixture(scope="module")
def sweep(model):
    kept: list = []
    rows = sv.severity_sweep(
        model, patient_seeds=[SEED], severities=[0.0, 1.0], size=SIZE, samples=2,
        device="cpu", progress=False, keep=kept,
    )  # fmt: skip
    return rows, kept


def test_true_D_falls_with_severity_and_is_the_simulated_pair(sweep):
    rows, kept = sweep
    assert [r["severity"] for r in rows] == [0.0, 1.0]
    assert rows[1]["true_lung_D"] < rows[0]["true_lung_D"]
    assert rows[1]["true_lung_D_clean"] < rows[0]["true_lung_D_clean"]
    # the sweep's target is the simulator's pair, and severity 0 is the healthy pair
    healthy = simulate(make_patient(SEED, 0, "healthy"), SIZE)
    np.testing.assert_array_equal(kept[0].y, healthy.darkfield)
    np1 = simulate(make_patient(SEED, 0, "emphysema", severity=1.0), SIZE)
    np.testing.assert_array_equal(kept[1].y, np1.darkfield)
    np.testing.assert_array_equal(kept[1].mask, np1.mask)
    # severity 0 has no lesion: lesion figures are NaN, lung figures are not
    assert rows[0]["lesion_pixels"] == 0 and math.isnan(rows[0]["coverage_lesion"])
    assert math.isnan(rows[0]["true_ratio"]) and np.isfinite(rows[0]["coverage_lung"])
    assert rows[1]["lesion_pixels"] > 20 and rows[1]["true_ratio"] < 1.0


def test_coverage_and_width_match_scipy_gennorm(sweep):
    rows, kept = sweep
    for row, c in zip(rows, kept, strict=True):
        beta = c.beta.astype(float)
        alpha_t = c.total / stats.gennorm(beta).std()  # GGD scale with std = total sigma
        lo, hi = stats.gennorm.interval(0.9, beta, loc=c.mu, scale=alpha_t)
        covered = (c.y >= lo) & (c.y <= hi)
        lung = (c.mask & labels.LUNG) > 0
        lesion = (c.mask & labels.EMPHYSEMA) > 0
        assert row["coverage_lung"] == pytest.approx(covered[lung].mean(), abs=2 / lung.sum())
        assert row["width_lung"] == pytest.approx((hi - lo)[lung].mean(), rel=1e-4)
        assert row["pred_lung_D_lo"] == pytest.approx(lo[lung].mean(), rel=1e-4, abs=1e-6)
        assert row["pred_lung_D"] == pytest.approx(c.mu[lung].mean(), rel=1e-5)
        assert row["true_lung_D"] == pytest.approx(c.y[lung].mean(), rel=1e-5)
        if lesion.any():
            n = lesion.sum()
            assert row["coverage_lesion"] == pytest.approx(covered[lesion].mean(), abs=2 / n)
            rest = lung & ~lesion
            assert row["true_ratio"] == pytest.approx(c.y[lesion].mean() / c.y[rest].mean())
            assert row["epistemic_lesion"] == pytest.approx(c.epistemic[lesion].mean())


def test_sweep_is_repeatable(model, sweep):
    rows, _ = sweep
    again = sv.case_row(sv.predict_case(model, SEED, 1.0, size=SIZE, samples=2, device="cpu"))
    assert again == rows[1]


def _row(pid, sev, t, p, tr, pr, n_les, cov_les, n_lung=100, cov_lung=0.9):
    return {
        "patient_seed": pid, "severity": sev, "true_lung_D": t, "pred_lung_D": p,
        "true_ratio": tr, "pred_ratio": pr, "lesion_pixels": n_les, "coverage_lesion": cov_les,
        "lung_pixels": n_lung, "coverage_lung": cov_lung, "width_lesion": 0.3,
        "width_rest": 0.2, "epistemic_lesion": 0.01, "epistemic_rest": 0.01,
    }  # fmt: skip


def test_summary_against_scipy_and_hand_pooling():
    rng = np.random.default_rng(3)
    rows = []
    for pid in (1, 2, 3):
        base = rng.uniform(0.2, 0.35)
        rows.append(_row(pid, 0.0, base, base + 0.01, math.nan, math.nan, 0, math.nan))
        for sev in (0.5, 1.0):
            t = base * (1 - 0.3 * sev)
            tr, pr = rng.uniform(0.4, 1.0), rng.uniform(0.8, 1.4)
            n_les, n_lung = int(rng.integers(10, 500)), int(rng.integers(500, 900))
            p = rng.uniform(0.2, 0.3)
            cov_les, cov_lung = rng.uniform(0.3, 1.0), rng.uniform(0.5, 1.0)
            rows.append(_row(pid, sev, t, p, tr, pr, n_les, cov_les, n_lung, cov_lung))
    rows[4]["pred_ratio"] = math.nan  # a diffuse case: left out of the ratio Spearman
    s = sv.emphysema_summary(rows)
    ok = [r for r in rows if np.isfinite(r["true_ratio"]) and np.isfinite(r["pred_ratio"])]
    ref = stats.spearmanr([r["pred_ratio"] for r in ok], [r["true_ratio"] for r in ok])
    assert s["n_ratio"] == len(ok) == 5
    assert s["spearman_ratio"] == pytest.approx(ref.statistic)
    assert s["spearman_ratio_p"] == pytest.approx(ref.pvalue)
    t = np.array([r["true_lung_D"] for r in rows])
    p = np.array([r["pred_lung_D"] for r in rows])
    lr = stats.linregress(t, p)
    assert s["slope_lung_D"] == pytest.approx(lr.slope)
    assert s["intercept_lung_D"] == pytest.approx(lr.intercept)
    pid = np.array([r["patient_seed"] for r in rows])
    tw = t - np.array([t[pid == q].mean() for q in pid])
    pw = p - np.array([p[pid == q].mean() for q in pid])
    assert s["slope_lung_D_within"] == pytest.approx(stats.linregress(tw, pw).slope)
    les = [r for r in rows if r["lesion_pixels"] > 0]
    covered = sum(r["lesion_pixels"] * r["coverage_lesion"] for r in les)
    assert s["coverage_lesion"] == pytest.approx(covered / sum(r["lesion_pixels"] for r in les))
    assert s["n_lesion_cases"] == 6 and s["n_cases"] == 9
    assert s["spearman_lung_D"] == pytest.approx(stats.spearmanr(p, t).statistic)
    assert list(s["by_severity"]) == ["0", "0.5", "1"]
    assert math.isnan(s["by_severity"]["0"]["coverage_lesion"])
    at1 = [r for r in rows if r["severity"] == 1.0]
    cov1 = sum(r["lesion_pixels"] * r["coverage_lesion"] for r in at1)
    cov1 /= sum(r["lesion_pixels"] for r in at1)
    assert s["by_severity"]["1"]["coverage_lesion"] == pytest.approx(cov1)
    assert s["by_severity"]["1"]["true_lung_D"] == pytest.approx(
        np.mean([r["true_lung_D"] for r in at1])
    )


def test_verdict_follows_the_numbers():
    base = {
        "slope_lung_D": 0.9, "slope_lung_D_within": 0.9, "spearman_lung_D": 0.9,
        "bias_lung_D": 0.02, "spearman_ratio": 0.8, "n_ratio": 8, "coverage_lesion": 0.9,
        "coverage_lung": 0.9, "width_lesion": 0.3, "width_rest": 0.2,
    }  # fmt: skip
    assert sv.severity_verdict(base).startswith("The model sees the disease in the attenuation")
    assert "too narrow" in sv.severity_verdict({**base, "coverage_lesion": 0.6})
    blind = {**base, "slope_lung_D_within": -0.1}
    assert "wide enough to say so" in sv.severity_verdict(blind)
    text = sv.severity_verdict({**blind, "coverage_lesion": 0.46})
    assert "misses emphysema silently" in text and "covers 46 %" in text
    assert "-0.10 per unit" in text and "ratio: 0.80 over 8 cases" in text
    levels = {"by_severity": {"0.5": {"coverage_lesion": 0.95, "width_lesion": 0.2},
                              "1": {"coverage_lesion": 0.5, "width_lesion": 0.21}}}  # fmt: skip
    text = sv.severity_verdict({**blind, **levels})
    assert "from 95 % to 50 %" in text and "from 0.200 to 0.210" in text
    # a summary read back from strict JSON has None where a level had no lesion (severity 0)
    stored = {"0": {"coverage_lesion": None, "width_lesion": None}, **levels["by_severity"]}
    assert "from 95 % to 50 %" in sv.severity_verdict({**blind, "by_severity": stored})
    few = sv.severity_verdict({**base, "spearman_ratio": math.nan, "n_ratio": 2})
    assert few.startswith("The model sees") and "not computed (2 cases" in few


def test_rows_round_trip_through_strict_json(sweep, tmp_path):
    rows, _ = sweep
    back = sv.load_rows(sv.save_rows(tmp_path / "rows.json", rows))
    assert math.isnan(back[0]["true_ratio"]) and back[1]["severity"] == 1.0
    assert sv.emphysema_summary(back)["slope_lung_D"] == sv.emphysema_summary(rows)["slope_lung_D"]


def test_json_ready_replaces_non_finite_floats():
    out = sv.json_ready({"a": [1.0, math.nan, np.float32("inf")], "b": {"c": math.nan}, "d": "x"})
    assert out == {"a": [1.0, None, None], "b": {"c": None}, "d": "x"}


def test_plot_and_bad_input(sweep, model):
    rows, _ = sweep
    fig = plot_severity_sweep(rows)
    assert len(fig.axes) == 2 and fig.axes[0].get_xlabel() == "true mean lung D"
    with pytest.raises(ValueError, match="pathology"):
        sv.predict_case(model, SEED, 0.5, case="healthy", size=SIZE, samples=1, device="cpu")
    with pytest.raises(ValueError, match="severity"):
        sv.predict_case(model, SEED, 1.5, size=SIZE, samples=1, device="cpu")
    with pytest.raises(ValueError, match="at least one"):
        sv.severity_sweep(model, patient_seeds=[], severities=[0.5])
