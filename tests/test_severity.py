"""The disease-severity study (darkfield_nb.severity) on a tiny random model at a tiny size.

References: the simulator itself (the true D of a sweep is the simulated pair's), scipy's
gennorm for the central interval, scipy.stats.spearmanr / linregress for the summary, and
hand-made rows for pooling and the verdict's branches. The maps as predict writes them: a
tiny checkpoint with a constant-output lung level (L = 0.55, so g = L / mean of mu over
{mu > 0.1} in NumPy) and a recalibration with mean factor c = 0.9, checked against the bare
maps, ``LungLevel.factors`` on the same input, the generator read with ``checkpoint`` and run
with ``mc_dropout_predict`` directly (the old behaviour), and ``synthesize`` (what a user gets).
"""

from __future__ import annotations

import copy
import math

import matplotlib
import numpy as np
import pytest
import torch
from helpers import constant_level_net, toy_generator, toy_recalibration
from scipy import stats

from darkfield_nb import checkpoint, labels
from darkfield_nb import severity as sv
from darkfield_nb.calibration import ggd_halfwidth, predictive_alpha
from darkfield_nb.calibration.store import write_calibrated_checkpoint
from darkfield_nb.level import LevelConfig, LungLevel
from darkfield_nb.level.store import entry_from_level, level_digest, write_level_checkpoint
from darkfield_nb.models import GeneratorConfig, ProgressiveGenerator
from darkfield_nb.physics import make_patient, simulate
from darkfield_nb.synthesis import synthesize
from darkfield_nb.uncertainty import mc_dropout_predict
from darkfield_nb.viz import plot_severity_sweep

matplotlib.use("Agg")

SIZE, SEED = 64, 9001  # patient 9001: a regional emphysema with lesions in both lungs
LEVEL_L, C, SIGMA_F = 0.55, 0.9, 1.5  # the toy level's L, the mean factor, the sigma factor
NEW_KEYS = ("as_written", "lung_level", "level_factor", "mean_factor")

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread


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
    level_only = {**base, "spearman_ratio": 0.3}  # the lung's level moves, the lesion is not placed
    assert "follows the disease's effect on the whole lung's D but does not place" in (
        sv.severity_verdict(level_only)
    )
    assert "misses part of the lesions" in sv.severity_verdict(
        {**level_only, "coverage_lesion": 0.8}
    )
    assert "wide enough to cover" in sv.severity_verdict(level_only)
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


# ------------------------------------------------------------- the maps as predict writes them


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """base.pt: the toy generator with a positive mean (head bias +0.4); level.pt: the same
    with a two-member constant lung level, L = mean(0.3 + 0.1, 0.5 + 0.2) = 0.55; cal.pt: that
    with a recalibration fitted on the level (mean factor C, global sigma factor SIGMA_F)."""
    root = tmp_path_factory.mktemp("severity_level")
    gen = toy_generator()
    with torch.no_grad():
        gen.stages[-1].head_mu.bias.fill_(0.4)
    geometry = {"size": [SIZE, SIZE], "pixel_mm": 400.0 / SIZE}
    base = checkpoint.save_trained(root / "base.pt", gen, stage=1, epoch=1, geometry=geometry)
    cfg = LevelConfig(channels=(8, 16, 16), hidden=8, dropout=0.0)
    level = LungLevel(
        [constant_level_net(1.0, cfg), constant_level_net(1.0, cfg)], [0.3, 0.5], [0.1, 0.2],
        input_shape=(32, 32), factor_range=(0.25, 4.0),
    )  # fmt: skip
    fitted_on = {"data": ["toy"], "splits": ["train"], "n_images": 0, "holdout_spearman": []}
    entry = entry_from_level(level, fitted_on, cfg)
    with_level = write_level_checkpoint(base, root / "level.pt", entry)
    scaling = {"kind": "sigma_scaling", "factor": SIGMA_F, "per_region": {}, "method": "coverage",
               "p": 0.9}  # fmt: skip
    recal = toy_recalibration(scaling, n_images=3, version=4)
    recal["mean_scale"] = {"factor": C, "lung_D_bias_before": 1 / C - 1, "skipped": None}
    recal["lung_level"] = {"digest": level_digest(entry)}
    cal = write_calibrated_checkpoint(with_level, root / "cal.pt", recal)
    return {"root": root, "base": base, "level": with_level, "cal": cal, "recal": recal}


@pytest.fixture(scope="module")
def both(ckpts):
    """The calibrated checkpoint's model and, for patient SEED at severity 1, its case as
    written (the default) and bare."""
    model, stage, path = sv.load_model(ckpts["cal"], "cpu")
    kw = dict(size=SIZE, samples=2, device="cpu", stage=stage)
    return (
        model,
        sv.predict_case(model, SEED, 1.0, **kw),
        sv.predict_case(model, SEED, 1.0, as_written=False, **kw),
    )


def test_load_model_attaches_the_level_and_the_recalibration(ckpts):
    model, stage, path = sv.load_model(ckpts["cal"], "cpu")
    assert path == ckpts["cal"] and stage == 1 and model.checkpoint_path == path
    assert isinstance(model.lung_level, LungLevel) and len(model.lung_level.members) == 2
    assert model.recalibration["mean_scale"]["factor"] == C
    plain, _, _ = sv.load_model(ckpts["base"], "cpu")
    assert plain.lung_level is None and plain.recalibration is None
    only_level, _, _ = sv.load_model(ckpts["level"], "cpu")
    assert only_level.lung_level is not None and only_level.recalibration is None
    # a recalibration fitted on the level, on a checkpoint without it: refused, naming the file
    lacking = write_calibrated_checkpoint(
        ckpts["base"], ckpts["root"] / "lacking.pt", ckpts["recal"]
    )
    with pytest.raises(checkpoint.CheckpointError, match="darkfield-nb calibrate") as err:
        sv.load_model(lacking, "cpu")
    assert str(lacking) in str(err.value)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        sv.load_model(ckpts["root"] / "missing.pt", "cpu")


def test_as_written_is_c_g_times_the_bare_maps(both):
    """mu' = c g mu, every sigma g times, g from LungLevel.factors on the same input and the
    bare mu and from its closed form in NumPy; the interval is scipy's gennorm interval of the
    scaled total (g times the bare one), and the row records L, g and c."""
    model, written, bare = both
    L, g = model.lung_level.factors(torch.from_numpy(bare.x)[None, None], bare.mu[None])
    L, g = float(L[0]), float(g[0])
    mu64 = np.float64(bare.mu)
    g_np = np.clip(LEVEL_L / mu64[mu64 > 0.1].mean(), 0.25, 4.0)
    assert L == pytest.approx(LEVEL_L, rel=1e-6) and g == pytest.approx(g_np, rel=1e-6)
    assert abs(g - 1) > 0.05  # the level changes something here
    assert (written.lung_level, written.level_factor, written.mean_factor) == (L, g, C)
    assert written.as_written and not bare.as_written
    assert (bare.level_factor, bare.mean_factor) == (1.0, 1.0) and math.isnan(bare.lung_level)
    np.testing.assert_allclose(written.mu, C * g * mu64, rtol=1e-6)
    for k in ("aleatoric", "epistemic", "total"):
        np.testing.assert_allclose(getattr(written, k), g * np.float64(getattr(bare, k)),
                                   rtol=1e-6, err_msg=k)  # fmt: skip
        assert getattr(written, k).dtype == np.float32
    for k in ("beta", "x", "y", "y_clean", "mask"):
        np.testing.assert_array_equal(getattr(written, k), getattr(bare, k), err_msg=k)
    beta = np.float64(written.beta)
    alpha_t = np.float64(written.total) / stats.gennorm(beta).std()
    lo, hi = stats.gennorm.interval(0.9, beta, loc=np.float64(written.mu), scale=alpha_t)
    np.testing.assert_allclose(written.half, (hi - lo) / 2, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(written.half, g * np.float64(bare.half), rtol=1e-4)
    row, row0 = sv.case_row(written), sv.case_row(bare)
    assert {k: row[k] for k in NEW_KEYS} == {
        "as_written": True, "lung_level": L, "level_factor": g, "mean_factor": C
    }  # fmt: skip
    assert row0["as_written"] is False and row0["level_factor"] == 1.0
    assert math.isnan(row0["lung_level"]) and row0["mean_factor"] == 1.0
    assert row["pred_lung_D"] == pytest.approx(C * g * row0["pred_lung_D"], rel=1e-5)
    assert row["width_lung"] == pytest.approx(g * row0["width_lung"], rel=1e-4)
    assert row["true_lung_D"] == row0["true_lung_D"]


def test_bare_option_is_the_old_generator_alone(both, ckpts):
    """as_written=False gives, bit for bit, the maps of the checkpoint's generator read with
    ``checkpoint.load_with_generator`` (what the study loaded before) and run with
    ``mc_dropout_predict`` (seed 0), with the half-width from that total; and a model without a
    level or recalibration gives the same maps whether as written or not."""
    model, _, bare = both
    _, gen = checkpoint.load_with_generator(ckpts["cal"], "cpu")
    assert not hasattr(gen, "lung_level")
    xt = torch.from_numpy(bare.x)[None, None]
    mc = mc_dropout_predict(gen, xt, samples=2, seed=0, stage=1).image_maps(0)
    for k in ("mu", "aleatoric", "epistemic", "total", "beta"):
        np.testing.assert_array_equal(getattr(bare, k), mc[k], err_msg=k)
    half = ggd_halfwidth(0.9, predictive_alpha(mc["total"], mc["beta"]), mc["beta"])
    np.testing.assert_array_equal(bare.half, half.astype(np.float32))
    kw = dict(size=SIZE, samples=2, device="cpu", stage=1)
    old = sv.predict_case(gen, SEED, 1.0, **kw)  # no attributes: nothing to apply
    for k in ("mu", "aleatoric", "epistemic", "total", "beta", "half"):
        np.testing.assert_array_equal(getattr(old, k), getattr(bare, k), err_msg=k)
    assert {k: v for k, v in sv.case_row(old).items() if k not in NEW_KEYS} == {
        k: v for k, v in sv.case_row(bare).items() if k not in NEW_KEYS
    }


def test_as_written_matches_synthesize(both):
    """The study's default maps are what ``synthesize`` (predict's per-image path) writes for
    the same radiograph (no resampling): the dark-field and g equal, the sigma maps equal after
    dividing out the recalibration's sigma factor, which the study leaves out. Dropout is
    switched off in a copy of the model: the two paths draw their MC masks differently (and
    differ by float rounding, up to about 1.5e-6 in D here)."""
    model = copy.deepcopy(both[0])
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p = 0.0
    assert model.lung_level is not None and model.recalibration is not None
    written = sv.predict_case(model, SEED, 1.0, size=SIZE, samples=2, device="cpu")
    pair = simulate(make_patient(SEED, 0, "emphysema", severity=1.0), SIZE)
    out = synthesize(model, pair.attenuation, samples=2, seed=0, resample=False, device="cpu")
    assert abs(written.level_factor - 1) > 0.05
    assert out.level_factor == pytest.approx(written.level_factor, rel=1e-5)
    np.testing.assert_allclose(out.darkfield, written.mu, rtol=1e-5, atol=1e-5)
    for k in ("aleatoric", "total"):
        np.testing.assert_allclose(getattr(out, k) / SIGMA_F, getattr(written, k), rtol=1e-5,
                                   atol=1e-5, err_msg=k)  # fmt: skip


def test_sweep_rows_carry_the_factors_and_old_rows_stay_readable(ckpts, tmp_path):
    model, stage, _ = sv.load_model(ckpts["cal"], "cpu")
    kw = dict(patient_seeds=[SEED], severities=[0.0, 1.0], size=SIZE, samples=2, device="cpu",
              progress=False, stage=stage)  # fmt: skip
    rows = sv.severity_sweep(model, **kw)
    bare = sv.severity_sweep(model, as_written=False, **kw)
    for r, b in zip(rows, bare, strict=True):
        assert r["as_written"] and r["mean_factor"] == C and r["lung_level"] == pytest.approx(0.55)
        assert r["pred_lung_D"] == pytest.approx(C * r["level_factor"] * b["pred_lung_D"], 1e-5)
        assert not b["as_written"] and b["level_factor"] == 1.0 and math.isnan(b["lung_level"])
    back = sv.load_rows(sv.save_rows(tmp_path / "rows.json", rows))
    assert [r["level_factor"] for r in back] == [r["level_factor"] for r in rows]
    assert all(r["as_written"] is True for r in back)
    # a row cached before these keys existed: the bare network's, and it reads as such
    old = [{k: v for k, v in b.items() if k not in NEW_KEYS} for b in bare]
    got = sv.load_rows(sv.save_rows(tmp_path / "old.json", old))
    for g_row in got:
        assert g_row["as_written"] is False and math.isnan(g_row["lung_level"])
        assert (g_row["level_factor"], g_row["mean_factor"]) == (1.0, 1.0)
    assert sv.emphysema_summary(got)["slope_lung_D"] == pytest.approx(
        sv.emphysema_summary(bare)["slope_lung_D"]
    )
