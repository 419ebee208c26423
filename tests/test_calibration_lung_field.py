"""Recalibration per field of the *predicted* lung, s(x) = f_in if mu(x) > t else f_out.

References: the fitted factors are numpy's inverted-CDF p-quantile of |y - mu| / h_p with
h_p(alpha, beta) the central p half-width from scipy.stats.gennorm, over each field of
hand-built arrays; predict / synthesize with such an entry write s(x) times the maps of the same
weights without a recalibration, s(x) taken from the darkfield map they wrote (inputs of the
model's own size, so the maps are at the model geometry); an entry without field factors (a
version-1 entry) writes the float32 products sigma * s that the global factor gave before,
byte for byte.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from helpers import toy_generator, toy_recalibration, write_toy_chest_set
from scipy import stats

from darkfield_nb import calibration as cal
from darkfield_nb import checkpoint
from darkfield_nb.calibration.store import VERSION, mean_factor, write_calibrated_checkpoint
from darkfield_nb.cli import main
from darkfield_nb.data import PairedDataset
from darkfield_nb.inference import PredictConfig, load_model, predict_folder
from darkfield_nb.inference.hookups import recalibration_message
from darkfield_nb.inference.outputs import MAPS
from darkfield_nb.io import read_image, write_image
from darkfield_nb.labels import LUNG
from darkfield_nb.synthesis import synthesize

SIZE = 32
GEOMETRY = {"size": [SIZE, SIZE], "pixel_mm": 10.0}  # a 32 px input is the model's own size
SIGMAS = ("aleatoric", "epistemic", "total")
F_IN, F_OUT, FACTOR = 0.6, 1.7, 1.3


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread


def _halfwidth_scipy(p, alpha, beta):
    """Central p half-width of GGD(0, alpha, beta) from scipy.stats.gennorm."""
    return stats.gennorm.ppf(0.5 + p / 2, beta, scale=alpha)


def _fields_data(seed=0, shape=(3, 40, 40)):
    """y ~ GGD(mu, k alpha, beta) with k = 1.5 where mu > 0.1 and k = 0.6 elsewhere."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(0.0, 0.3, shape)
    beta = rng.uniform(1.0, 2.5, shape)
    alpha = rng.uniform(0.01, 0.05, shape)
    k = np.where(mu > 0.1, 1.5, 0.6)
    y = stats.gennorm.rvs(beta, loc=mu, scale=k * alpha, random_state=rng)
    return y, mu, alpha, beta


# ----------------------------------------------------------------------------- fit
@pytest.mark.parametrize("t", [0.1, 0.2])
def test_field_factors_are_the_quantiles_of_each_field_and_cover_p(t):
    y, mu, alpha, beta = _fields_data()
    p = 0.9
    sc = cal.fit_sigma_scaling(
        y, mu, alpha, beta, method="coverage", p=p, lung_threshold=t, min_pixels=10
    )
    ratio = np.abs(y - mu) / _halfwidth_scipy(p, alpha, beta)
    inside = mu > t
    ref_in = np.quantile(ratio[inside], p, method="inverted_cdf")
    ref_out = np.quantile(ratio[~inside], p, method="inverted_cdf")
    assert sc.per_field["predicted_lung"] == pytest.approx(ref_in, rel=1e-9)
    assert sc.per_field["outside"] == pytest.approx(ref_out, rel=1e-9)
    assert sc.factor == pytest.approx(np.quantile(ratio, p, method="inverted_cdf"), rel=1e-9)
    assert sc.lung_threshold == t
    if t == 0.1:  # drawn 1.5x too narrow inside, 0.6x outside: the factors tell them apart
        assert sc.per_field["predicted_lung"] > 1.2 and sc.per_field["outside"] < 0.8
    # the rule, and exactly coverage p in each field on the fit data (within 1/N)
    s = sc.field_map(mu)
    np.testing.assert_allclose(s, np.where(mu > t, ref_in, ref_out), rtol=1e-9)
    assert set(np.unique(s)) == {sc.per_field["predicted_lung"], sc.per_field["outside"]}
    covered = ratio <= s * (1 + 1e-9)
    for sel in (inside, ~inside):
        assert covered[sel].mean() == pytest.approx(p, abs=1 / sel.sum() + 1e-12)
    # a global factor covers p of all pixels, but not of the lung field
    glob = ratio <= sc.factor * (1 + 1e-9)
    assert glob[inside].mean() < p - 0.03


def test_field_scaling_round_trips_and_old_dicts_read_as_global():
    y, mu, alpha, beta = _fields_data(1)
    sc = cal.fit_sigma_scaling(y, mu, alpha, beta, method="coverage", lung_threshold=0.1)
    d = json.loads(json.dumps(sc.to_dict()))
    assert d["lung_threshold"] == 0.1 and set(d["per_field"]) == {"predicted_lung", "outside"}
    back = cal.recalibrator_from_dict(d)
    assert back == sc
    np.testing.assert_array_equal(back.field_map(mu), sc.field_map(mu))
    plain = cal.fit_sigma_scaling(y, mu, alpha, beta, method="coverage")
    assert "per_field" not in plain.to_dict() and "lung_threshold" not in plain.to_dict()
    old = {"kind": "sigma_scaling", "factor": 0.58, "method": "coverage", "p": 0.9}
    np.testing.assert_array_equal(cal.SigmaScaling.from_dict(old).field_map(mu), 0.58)
    with pytest.raises(ValueError, match="per_field needs exactly"):
        cal.SigmaScaling.from_dict({**old, "per_field": {"predicted_lung": 1.0}})


def test_a_field_with_too_few_pixels_keeps_the_global_factor():
    y, mu, alpha, beta = _fields_data(2)
    n_in = int((mu > 0.29).sum())
    sc = cal.fit_sigma_scaling(
        y, mu, alpha, beta, method="coverage", lung_threshold=0.29, min_pixels=n_in + 1
    )
    assert sc.per_field["predicted_lung"] == sc.factor
    assert sc.per_field["outside"] != sc.factor


def test_apply_recalibration_uses_the_fields_of_the_given_mean():
    y, mu, alpha, beta = _fields_data(3, shape=(20, 20))
    total = stats.gennorm.std(beta, scale=alpha)
    fields = {"predicted_lung": F_IN, "outside": F_OUT}
    sc = cal.SigmaScaling(FACTOR, {}, "coverage", 0.9, fields, 0.1)
    recal = _entry(sc.to_dict(), version=VERSION)
    out = cal.apply_recalibration(recal, mu, alpha, beta, total)
    s = np.where(mu > 0.1, F_IN, F_OUT)
    np.testing.assert_array_equal(out["scale"], s)
    np.testing.assert_allclose(out["total"], s * total, rtol=1e-12)
    h = _halfwidth_scipy(0.9, s * cal.predictive_alpha(total, beta), beta)
    np.testing.assert_allclose(out["hi"], mu + h, rtol=1e-9)
    old = cal.apply_recalibration(_entry(_old_scaling()), mu, alpha, beta, total)
    np.testing.assert_array_equal(old["scale"], np.full(mu.shape, FACTOR))


def test_calibration_report_gives_the_field_scaling():
    rng = np.random.default_rng(4)
    shape = (3, 40, 40)
    y, mu, alpha, beta = _fields_data(4, shape)
    total = stats.gennorm.std(beta, scale=alpha)
    a_t = cal.predictive_alpha(total, beta)
    mask = np.zeros(shape, np.int32)
    mask[:, 5:35, 5:20] = LUNG
    z = np.zeros(shape)
    preds = cal.Predictions(ids=np.array(["a", "b", "c"]), y=y, x=rng.uniform(0.3, 1, shape),
                            mask=mask, mu=mu, aleatoric=total, epistemic=z, total=total,
                            alpha=alpha, beta=beta)  # fmt: skip
    sc = cal.fit_sigma_scaling(y, mu, a_t, beta, method="coverage", lung_threshold=0.1)
    rep = cal.calibration_report(preds, {**_entry(sc.to_dict()), "version": VERSION})
    s = np.where(mu > 0.1, sc.per_field["predicted_lung"], sc.per_field["outside"])
    h = _halfwidth_scipy(0.9, s * a_t, beta)
    got = rep["after"]["sigma_scaling_per_field"]["all"]["coverage_90"]
    # the quantile pixels lie on the interval's edge: bracket them
    r = np.abs(y - mu)
    assert np.mean(r < h * (1 - 1e-9)) <= got <= np.mean(r <= h * (1 + 1e-9))
    assert got == pytest.approx(0.9, abs=2 / y.size)
    assert (
        "sigma_scaling_per_field"
        not in cal.calibration_report(preds, _entry(_old_scaling()))["after"]
    )


# ----------------------------------------------------------------------------- entries
def _old_scaling(factor=FACTOR):
    return {"kind": "sigma_scaling", "factor": factor, "per_region": {"lung": 0.5},
            "method": "coverage", "p": 0.9}  # fmt: skip


def _entry(scaling, version=1):
    return toy_recalibration(scaling, n_images=5, version=version)


def _field_entry(t):
    sc = {**_old_scaling(), "per_field": {"predicted_lung": F_IN, "outside": F_OUT}}
    return _entry({**sc, "lung_threshold": t}, version=VERSION)


# ----------------------------------------------------------------------------- predict
def _run(ckpt, out, samples=3):
    loaded = load_model(ckpt)
    cfg = PredictConfig(samples=samples, progress=False, workers=0)
    return predict_folder(
        loaded.model,
        loaded.path.parent / "data" / "attenuation",
        out,
        geometry=loaded.geometry,
        checkpoint_sha256=loaded.sha256,
        config=cfg,
    )


def _maps(out, stem):
    return {name: read_image(out / name / f"{stem}.tif") for name in MAPS}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lung_field")
    splits = ["train"] * 4 + ["val"] * 3 + ["test"] * 2
    data = write_toy_chest_set(root / "data", splits, seed=5, background=0.05, noise=0.03)
    model = toy_generator()
    base = checkpoint.save_trained(root / "base.pt", model, stage=1, epoch=1, geometry=GEOMETRY)
    plain = _run(base, root / "plain")
    assert len(plain.written) == 9
    stems = [p.stem for p in sorted((data / "attenuation").glob("*.png"))]
    means = np.stack([_maps(root / "plain", s)["darkfield"] for s in stems])
    t = float(np.round(np.median(means), 4))  # both fields hold pixels of these toy images
    field = write_calibrated_checkpoint(base, root / "field.pt", _field_entry(t))
    old = write_calibrated_checkpoint(base, root / "old.pt", _entry(_old_scaling()))
    return {"data": data, "base": base, "field": field, "old": old, "t": t, "stems": stems,
            "plain": root / "plain"}  # fmt: skip


def test_predict_writes_s_of_its_own_mean_times_the_plain_maps(setup, tmp_path):
    rep = _run(setup["field"], tmp_path / "field")
    assert len(rep.written) == 9
    n_in = n_out = 0
    for stem in setup["stems"]:
        got, plain = _maps(tmp_path / "field", stem), _maps(setup["plain"], stem)
        np.testing.assert_array_equal(got["darkfield"], plain["darkfield"])
        s = np.where(got["darkfield"].astype(np.float64) > setup["t"], F_IN, F_OUT)
        n_in, n_out = n_in + int((s == F_IN).sum()), n_out + int((s == F_OUT).sum())
        for name in SIGMAS:
            want = s * plain[name].astype(np.float64)
            np.testing.assert_allclose(got[name], want, rtol=1e-6, atol=0, err_msg=name)
    assert n_in > 100 and n_out > 100  # both factors were exercised


def test_synthesize_applies_the_same_field_map(setup):
    field, plain = load_model(setup["field"]).model, load_model(setup["base"]).model
    img = read_image(sorted((setup["data"] / "attenuation").glob("*.png"))[0])
    a = synthesize(plain, img, samples=3, seed=2)
    b = synthesize(field, img, samples=3, seed=2)
    assert b.plan.identity and a.scale is None
    np.testing.assert_array_equal(a.darkfield, b.darkfield)
    s = np.where(b.darkfield.astype(np.float64) > setup["t"], F_IN, F_OUT)
    assert {F_IN, F_OUT} <= set(np.unique(s))
    np.testing.assert_array_equal(b.scale, s)
    for name in SIGMAS:
        want = s * getattr(a, name).astype(np.float64)
        np.testing.assert_allclose(getattr(b, name), want, rtol=1e-6, atol=0, err_msg=name)


def test_an_old_entry_writes_the_global_factor_byte_for_byte(setup, tmp_path):
    """Before the field factors predict wrote float32(sigma) * FACTOR in float32: the same
    bytes now, and synthesize returns them with scale the number FACTOR."""
    rep = _run(setup["old"], tmp_path / "old")
    assert len(rep.written) == 9
    ref_dir = tmp_path / "ref"
    for stem in setup["stems"]:
        plain = _maps(setup["plain"], stem)
        for name in MAPS:
            want = plain[name] if name == "darkfield" else plain[name] * np.float32(FACTOR)
            assert want.dtype == np.float32
            write_image(ref_dir / name / f"{stem}.tif", want)
            got = (tmp_path / "old" / name / f"{stem}.tif").read_bytes()
            assert got == (ref_dir / name / f"{stem}.tif").read_bytes(), (name, stem)
    img = read_image(sorted((setup["data"] / "attenuation").glob("*.png"))[1])
    a = synthesize(load_model(setup["base"]).model, img, samples=3)
    b = synthesize(load_model(setup["old"]).model, img, samples=3)
    assert b.scale == FACTOR and isinstance(b.scale, float)
    for name in SIGMAS:
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name) * np.float32(FACTOR))


def test_predict_names_both_factors_and_the_threshold(setup, tmp_path, capsys):
    msg = recalibration_message(_field_entry(0.1), "m.pt")
    assert "x 0.6 inside the predicted lung field (mean > 0.1 D), x 1.7 outside" in msg
    assert "sigma x 1.3," in recalibration_message(_entry(_old_scaling()), "m.pt")
    src = setup["data"] / "attenuation"
    args = ["predict", str(src), "--out", str(tmp_path / "o"), "--checkpoint", str(setup["field"])]
    assert main([*args, "--samples", "2", "--device", "cpu", "--workers", "0", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"(mean > {setup['t']:g} D), x 1.7 outside" in out


def _check_fields(recal, preds, t, min_pixels):
    """The entry's field factors are the inverted-CDF 0.9-quantiles of |y - mu| / h_p (scipy)
    over {mu > t} and {mu <= t} of ``preds`` (the global factor for a field with fewer than
    ``min_pixels`` pixels), and ``fit_coverage`` is the coverage they give. Returns the number
    of fields fitted on their own pixels."""
    sc = recal["sigma_scaling"]
    assert sc["lung_threshold"] == t
    ratio = np.abs(preds.y - preds.mu) / _halfwidth_scipy(0.9, preds.alpha_total, preds.beta)
    inside = preds.mu > t
    own = 0
    for name, sel in (("predicted_lung", inside), ("outside", ~inside)):
        own += int(sel.sum() >= min_pixels)
        ref = (
            np.quantile(ratio[sel], 0.9, method="inverted_cdf")
            if sel.sum() >= min_pixels
            else sc["factor"]
        )
        assert sc["per_field"][name] == pytest.approx(ref, rel=1e-6), name
    cov = recal["fit_coverage"]["sigma_scaling_per_field"]
    s = np.where(inside, sc["per_field"]["predicted_lung"], sc["per_field"]["outside"])
    # the quantile pixels lie on the interval's edge: bracket them
    assert np.mean(ratio < s * (1 - 1e-6)) <= cov <= np.mean(ratio <= s * (1 + 1e-6))
    return own


def test_calibrate_stores_the_field_factors_by_default(setup, tmp_path, capsys):
    """``darkfield-nb calibrate`` on the toy val split: a version-3 entry with t = 0.1 whose
    field factors are the quantiles of each field of the same predictions
    (collect_predictions, the mean times the entry's mean factor); with the threshold at the
    toy model's median mean both fields are fitted on their own pixels."""
    dst = tmp_path / "cal.pt"
    argv = ["calibrate", "--checkpoint", str(setup["base"]), "--data", str(setup["data"])]
    assert main([*argv, "--out", str(dst), "--samples", "2", "--device", "cpu", "--quiet"]) == 0
    assert "applied by predict / synthesize: predicted lung field (mean > 0.1 D)" in (
        capsys.readouterr().out
    )
    recal = cal.recalibration_of(checkpoint.load_checkpoint(dst))
    assert recal["version"] == VERSION == 4
    g = checkpoint.generator_from_checkpoint(checkpoint.load_checkpoint(setup["base"]))
    ds = PairedDataset(setup["data"], split="val", pad_multiple=1)
    preds = cal.collect_predictions(g, ds, samples=2, seed=0, stage=1, progress=False)
    preds = replace(preds, mu=mean_factor(recal) * preds.mu)
    _check_fields(recal, preds, 0.1, 1000)
    kw = dict(samples=2, stage=1, device="cpu", progress=False, min_pixels=100)
    median = cal.fit_recalibration(g, setup["data"], lung_threshold=setup["t"], **kw)
    assert _check_fields(median, preds, setup["t"], 100) == 2
    none = cal.fit_recalibration(g, setup["data"], lung_threshold=None, **kw)
    assert "per_field" not in none["sigma_scaling"]
    assert none["fit_coverage"]["sigma_scaling_per_field"] is None
