"""The stored recalibration: fit on validation, checkpoint round trip, per-image application,
the before/after report, and ``darkfield-nb calibrate`` end to end on a tiny folder.

References: scipy.stats.gennorm / norm quantiles and hand-computed Laplace / Gaussian
half-widths (apply), coverages recomputed with scipy from the model's own MC-dropout
predictions (fit), calibration_summary called directly (report), bytes of the source file
(never overwritten) and the generator's weights (round trip).
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from darkfield_nb import calibration as cal
from darkfield_nb import checkpoint
from darkfield_nb.cli import main
from darkfield_nb.contract import write_manifest
from darkfield_nb.data import PairedDataset
from darkfield_nb.hardware import pick_device
from darkfield_nb.io import write_image
from darkfield_nb.labels import BONE, CABLE, LUNG
from darkfield_nb.models import GeneratorConfig, ProgressiveGenerator

SIZE = 40


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _tiny_folder(root, n_val=6, n_test=2, seed=0):
    """Images with a dark border (air), a lung field, a bone strip and a cable, plus masks."""
    rng = np.random.default_rng(seed)
    rows = []
    mask = np.zeros((SIZE, SIZE), np.uint16)
    mask[8:32, 6:20] = LUNG
    mask[8:32, 20:23] = BONE
    mask[12:15, 26:34] = CABLE
    for i in range(n_val + n_test):
        att = rng.uniform(20000, 60000, (SIZE, SIZE))
        att[:4], att[-4:], att[:, :4], att[:, -4:] = 200, 200, 200, 200
        d = (0.3 + 0.2 * (mask == LUNG) + 0.05 * rng.standard_normal((SIZE, SIZE))).astype("f4")
        write_image(root / "attenuation" / f"im{i}.png", att.astype(np.uint16))
        write_image(root / "darkfield" / f"im{i}.tif", d)
        write_image(root / "masks" / f"im{i}.png", mask)
        rows.append({"id": f"im{i}", "patient": f"p{i}", "split": "val" if i < n_val else "test"})
    write_manifest(root / "manifest.csv", rows)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _tiny_folder(tmp_path_factory.mktemp("calib_data"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = ProgressiveGenerator(GeneratorConfig(n_stages=2, base_width=4, depth=2, dropout=0.2))
    return checkpoint.save_trained(tmp_path_factory.mktemp("ck") / "m.pt", model, stage=1, epoch=1)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _halfwidth_scipy(p, alpha, beta):
    """Central p half-width of GGD(0, alpha, beta) from scipy.stats.gennorm."""
    return stats.gennorm.ppf(0.5 + p / 2, beta, scale=alpha)


# ----------------------------------------------------------------------------- fit + store
def test_fit_store_round_trip_and_fit_matches_scipy(tmp_path, folder, ckpt):
    src_sha = _sha(ckpt)
    dst = tmp_path / "calibrated.pt"
    out, recal = cal.calibrate_checkpoint(
        ckpt, folder, dst, device="cpu", samples=3, alpha=0.5, delta=0.5, progress=False
    )
    assert out == dst and _sha(ckpt) == src_sha  # the source is never touched
    json.dumps(recal, allow_nan=False)  # strict JSON
    assert recal["method_default"] == "sigma_scaling"
    assert recal["fitted_on"]["split"] == "val" and recal["fitted_on"]["n_images"] == 6
    assert "exchangeable" in recal["guarantee"] and "never seen" in recal["guarantee"]

    back = checkpoint.load_checkpoint(dst)
    assert cal.recalibration_of(back) == recal
    assert cal.recalibration_of(checkpoint.load_checkpoint(ckpt)) is None
    g0 = checkpoint.generator_from_checkpoint(checkpoint.load_checkpoint(ckpt))
    g1 = checkpoint.generator_from_checkpoint(back)
    for (k, a), (_, b) in zip(g0.state_dict().items(), g1.state_dict().items(), strict=True):
        assert torch.equal(a, b), k

    # the same predictions, recomputed; every fitted number checked with scipy's gennorm
    ds = PairedDataset(folder, split="val", pad_multiple=1)
    preds = cal.collect_predictions(g0, ds, samples=3, seed=0, stage=1, progress=False)
    y, mu, beta, a_t = preds.y, preds.mu, preds.beta, preds.alpha_total
    h = _halfwidth_scipy(0.9, a_t, beta)
    r = np.abs(y - mu)
    n = y.size
    sc = recal["sigma_scaling"]
    cov = recal["fit_coverage"]
    assert cov["before"] == pytest.approx(np.mean(r <= h), abs=1e-12)
    # "coverage" scaling: the smallest factor whose 90 % interval holds 90 % of the pixels
    assert np.mean(r <= sc["factor"] * h * (1 + 1e-9)) == pytest.approx(0.9, abs=1 / n + 1e-12)
    assert cov["sigma_scaling"] == pytest.approx(0.9, abs=1 / n + 1e-12)
    regions = preds.regions()
    assert set(sc["per_region"]) >= {"lung", "soft_tissue"}
    for name, s in sc["per_region"].items():
        inside = (r <= s * h * (1 + 1e-9))[regions[name]]
        assert inside.mean() == pytest.approx(0.9, abs=1 / inside.size + 1e-12), name
    # RCPS: lambda_hat from scipy's half-widths on the same grid, alpha = delta = 0.5
    need = np.where(y > mu, (y - mu) / h, (mu - y) / h)
    risks = (need[:, None] > cal.store.LAMBDAS[None, :, None, None]).mean(axis=(2, 3))
    ref = cal.rcps_lambda(risks, cal.store.LAMBDAS, alpha=0.5, delta=0.5)
    assert math.isfinite(ref.lambda_hat)
    assert recal["rcps"]["lambda_hat"] == pytest.approx(ref.lambda_hat)
    assert risks[:, ref.index].mean() <= 0.5


def test_collect_predictions_resolves_device_auto(folder, ckpt):
    """device="auto" goes through hardware.pick_device (torch.device("auto") would raise) and
    gives the predictions of the device it picks, here compared with that device named."""
    g = checkpoint.generator_from_checkpoint(checkpoint.load_checkpoint(ckpt))
    ds = PairedDataset(folder, split="test", pad_multiple=1)
    kw = dict(samples=2, seed=0, stage=1, progress=False)
    auto = cal.collect_predictions(g, ds, device="auto", **kw)
    named = cal.collect_predictions(g, ds, device=pick_device("auto"), **kw)
    assert list(auto.ids) == list(named.ids) and len(auto.ids) == 2
    for f in ("y", "mu", "aleatoric", "epistemic", "total", "alpha", "beta"):
        np.testing.assert_array_equal(getattr(auto, f), getattr(named, f), err_msg=f)


def test_existing_destination_is_refused_by_name(tmp_path, ckpt):
    recal = _hand_recal()
    dst = tmp_path / "taken.pt"
    dst.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="taken.pt: already exists"):
        cal.write_calibrated_checkpoint(ckpt, dst, recal)
    assert dst.read_bytes() == b"keep me"
    with pytest.raises(FileExistsError, match="is the source checkpoint"):
        cal.write_calibrated_checkpoint(ckpt, ckpt, recal)
    cal.write_calibrated_checkpoint(ckpt, dst, recal, overwrite=True)
    assert cal.recalibration_of(checkpoint.load_checkpoint(dst)) == recal
    with pytest.raises(ValueError, match="lacks"):
        cal.write_calibrated_checkpoint(ckpt, tmp_path / "x.pt", {"method_default": "rcps"})
    bad = {**recal, "sigma_scaling": {**recal["sigma_scaling"], "factor": float("nan")}}
    with pytest.raises(ValueError, match="strict JSON"):
        cal.write_calibrated_checkpoint(ckpt, tmp_path / "y.pt", bad)


# ----------------------------------------------------------------------------- apply
def _hand_recal(factor=2.0, lung=0.5, table=(0.0, 0.5, 1.0), lam=1.5):
    return {
        "version": 1,
        "method_default": "sigma_scaling",
        "sigma_scaling": {
            "kind": "sigma_scaling",
            "factor": factor,
            "per_region": {"lung": lung},
            "method": "coverage",
            "p": 0.9,
        },
        "isotonic": {"kind": "isotonic", "table": list(table)},
        "rcps": {
            "kind": "rcps",
            "lambda_hat": lam,
            "alpha": 0.1,
            "delta": 0.1,
            "n": 30,
            "halfwidth_level": 0.9,
        },
    }


def test_apply_sigma_scaling_against_hand_values():
    mu = np.array([[0.2, 0.3], [0.4, 0.5]])
    total = np.full((2, 2), 0.1)
    alpha = np.full((2, 2), 0.05)
    z90 = 1.6448536269514722  # Phi^-1(0.95)
    recal = _hand_recal()
    # Gaussian shape (beta = 2): alpha_t = sqrt(2) total, 90 % half-width = z90 s total
    out = cal.apply_recalibration(recal, mu, alpha, np.full((2, 2), 2.0), total)
    np.testing.assert_allclose(out["scale"], 2.0)
    np.testing.assert_allclose(out["total"], 0.2)
    np.testing.assert_allclose(out["alpha"], 0.1)
    np.testing.assert_allclose(out["alpha_total"], 2.0 * np.sqrt(2) * 0.1, rtol=1e-12)
    np.testing.assert_allclose(out["hi"], mu + z90 * 0.2, rtol=1e-12)
    np.testing.assert_allclose(out["lo"], mu - z90 * 0.2, rtol=1e-12)
    # regions known: the lung pixel takes the lung factor 0.5, the others the global 2
    # Laplace shape (beta = 1): sigma = sqrt(2) alpha, P(|r| <= h) = 1 - exp(-h / alpha)
    # -> h = alpha ln 10
    regions = {"lung": np.array([[True, False], [False, False]])}
    regions["soft_tissue"] = ~regions["lung"]
    out = cal.apply_recalibration(recal, mu, alpha, np.ones((2, 2)), total, regions=regions)
    s = np.array([[0.5, 2.0], [2.0, 2.0]])
    np.testing.assert_allclose(out["scale"], s)
    np.testing.assert_allclose(out["total"], 0.1 * s)
    np.testing.assert_allclose(out["hi"] - mu, s * 0.1 / np.sqrt(2) * np.log(10), rtol=1e-12)
    np.testing.assert_allclose(mu - out["lo"], out["hi"] - mu, rtol=1e-12)
    with pytest.raises(ValueError, match="region 'lung'"):
        cal.apply_recalibration(recal, mu, alpha, 2.0 + 0 * mu, total, {"lung": np.ones(3, bool)})


def test_apply_isotonic_and_rcps_against_hand_values():
    mu, total, alpha = np.zeros((1, 3)), np.array([[0.1, 0.2, 0.4]]), np.full((1, 3), 0.05)
    beta = np.full((1, 3), 2.0)
    # R through (0, 0), (0.5, 0.25), (1, 1): R^-1(0.05) = 0.1, R^-1(0.95) = 0.5 + 0.7 / 1.5
    recal = _hand_recal(table=(0.0, 0.25, 1.0))
    out = cal.apply_recalibration(recal, mu, alpha, beta, total, method="isotonic")
    np.testing.assert_allclose(out["lo"], stats.norm.ppf(0.1) * total, rtol=1e-9)
    np.testing.assert_allclose(out["hi"], stats.norm.ppf(0.5 + 0.7 / 1.5) * total, rtol=1e-9)
    np.testing.assert_allclose(out["total"], 2.0 * total)  # sigma maps stay sigma-scaled
    # identity R: the uncalibrated interval; gennorm at beta = 1.5 as the reference
    recal = _hand_recal(table=(0.0, 1.0))
    b15 = np.full((1, 3), 1.5)
    out = cal.apply_recalibration(recal, mu, alpha, b15, total, method="isotonic")
    a_t = cal.predictive_alpha(total, b15)
    np.testing.assert_allclose(out["hi"], stats.gennorm.ppf(0.95, 1.5, scale=a_t), rtol=1e-9)
    # RCPS: mu -+ lambda_hat x the uncalibrated 90 % half-width
    out = cal.apply_recalibration(_hand_recal(lam=1.5), mu, alpha, beta, total, method="rcps")
    np.testing.assert_allclose(out["hi"], 1.5 * 1.6448536269514722 * total, rtol=1e-9)
    np.testing.assert_allclose(out["lo"], -out["hi"])
    with pytest.raises(ValueError, match="no RCPS lambda was certified"):
        cal.apply_recalibration(_hand_recal(lam=None), mu, alpha, beta, total, method="rcps")
    with pytest.raises(ValueError, match="method 'gauss'"):
        cal.apply_recalibration(recal, mu, alpha, beta, total, method="gauss")


# ----------------------------------------------------------------------------- report
def _synthetic(seed, scale=1.6, n=4, size=48):
    """Predictions whose truth is GGD(mu, scale * alpha_t, beta): over-confident by ``scale``."""
    rng = np.random.default_rng(seed)
    shape = (n, size, size)
    mu = rng.normal(0.3, 0.05, shape)
    beta = rng.uniform(1.0, 2.5, shape)
    total = rng.uniform(0.02, 0.08, shape)
    a_t = cal.predictive_alpha(total, beta)
    y = stats.gennorm.rvs(beta, loc=mu, scale=scale * a_t, random_state=rng)
    mask = np.zeros(shape, np.int32)
    mask[:, 10:40, 6:24] = LUNG
    x = rng.uniform(0.3, 1.0, shape)
    x[:, :3], x[:, -3:] = 0.0, 0.0
    z = np.zeros(shape)
    ids = np.array([f"s{i}" for i in range(n)])
    return cal.Predictions(ids=ids, y=y, x=x, mask=mask, mu=mu, aleatoric=z, epistemic=z,
                           total=total, alpha=a_t, beta=beta)  # fmt: skip


def test_calibration_report_before_and_after_per_region():
    val, test = _synthetic(1), _synthetic(2)
    sc = cal.fit_sigma_scaling(val.y, val.mu, val.alpha_total, val.beta, method="coverage",
                               regions=val.regions(), min_pixels=500)  # fmt: skip
    iso = cal.fit_isotonic(cal.pit(val.y, val.mu, alpha=val.alpha_total, beta=val.beta))
    recal = {**_hand_recal(lam=1.4), "sigma_scaling": sc.to_dict(), "isotonic": iso.to_dict()}
    rep = cal.calibration_report(test, recal)
    json.dumps(rep, allow_nan=False)
    regions = test.regions()
    assert rep["before"] == json.loads(
        json.dumps(cal.calibration_summary(test.y, test.mu, test.alpha_total, test.beta, regions))
    )
    assert set(rep["before"]) == {"all", "lung", "soft_tissue", "air"}
    after = rep["after"]
    for method in ("sigma_scaling", "sigma_scaling_per_region", "isotonic"):
        assert set(after[method]) == set(rep["before"]), method
    # reference coverage from scipy's gennorm CDF; drawn 1.6x wider than predicted
    a_t = test.alpha_total
    h = _halfwidth_scipy(0.9, a_t, test.beta)
    r = np.abs(test.y - test.mu)
    assert rep["before"]["all"]["coverage_90"] == pytest.approx(np.mean(r <= h), abs=1e-12)
    assert rep["before"]["all"]["coverage_90"] < 0.75
    got = after["sigma_scaling"]["all"]["coverage_90"]
    assert got == pytest.approx(np.mean(r <= sc.factor * h), abs=1e-12)
    assert got == pytest.approx(0.9, abs=0.02)
    for name in ("lung", "soft_tissue"):
        s = sc.scale_map(regions)
        ref = np.mean((r <= s * h)[regions[name]])
        assert after["sigma_scaling_per_region"][name]["coverage_90"] == pytest.approx(ref)
    assert after["isotonic"]["all"]["coverage_90"] == pytest.approx(0.9, abs=0.02)
    assert (
        after["isotonic"]["all"]["miscalibration_area"]
        < rep["before"]["all"]["miscalibration_area"]
    )
    # RCPS at lambda 1.4: coverage, width and per-image risk by hand
    inside = r <= 1.4 * h
    assert after["rcps"]["all"]["coverage"] == pytest.approx(inside.mean())
    assert after["rcps"]["all"]["width"] == pytest.approx(2 * 1.4 * h.mean())
    assert after["rcps"]["risk"] == pytest.approx(np.mean(1 - inside.mean(axis=(1, 2))))
    assert after["rcps"]["lung"]["coverage"] == pytest.approx(inside[regions["lung"]].mean())


# ----------------------------------------------------------------------------- CLI
def _calibrate(*extra):
    return ["calibrate", "--samples", "2", "--device", "cpu", "--quiet", *map(str, extra)]


def test_cli_calibrate_end_to_end_and_refusals(tmp_path, folder, ckpt, capsys):
    out = tmp_path / "runs" / "calibrated.pt"
    args = _calibrate("--checkpoint", ckpt, "--data", folder, "--out", out)
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "sigma factor" in text and "per region: lung" in text
    assert "RCPS lambda: none certified with 6 images" in text  # 22 are needed at 0.1 / 0.1
    assert "90 % coverage on 'val': before" in text and f"wrote {out}" in text
    recal = cal.recalibration_of(checkpoint.load_checkpoint(out))
    assert recal["fitted_on"]["samples"] == 2 and recal["rcps"]["lambda_hat"] is None

    assert main(args) == 2  # an existing --out is refused, by name
    assert f"{out}: already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    capsys.readouterr()

    missing = tmp_path / "nope.pt"
    args = _calibrate("--checkpoint", missing, "--data", folder, "--out", tmp_path / "a.pt")
    assert main(args) == 2
    assert f"{missing}: checkpoint file not found" in capsys.readouterr().err

    no_val = _tiny_folder(tmp_path / "no_val", n_val=0, n_test=2)
    args = _calibrate("--checkpoint", ckpt, "--data", no_val, "--out", tmp_path / "b.pt")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "manifest.csv: split 'val' has no images" in err and len(err.strip().splitlines()) == 1

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    bad_out = blocker / "c.pt"
    assert main(_calibrate("--checkpoint", ckpt, "--data", folder, "--out", bad_out)) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and str(blocker) in err and len(err.strip().splitlines()) == 1

    assert main([*_calibrate("--checkpoint", ckpt, "--data", folder, "--out", tmp_path / "d.pt"),
                 "--split", "test"]) == 2  # fmt: skip
    assert "refusing to calibrate on the 'test' split" in capsys.readouterr().err
