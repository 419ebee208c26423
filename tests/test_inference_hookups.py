"""predict / synthesize / evaluate with a checkpoint that carries a recalibration ("recalibration",
``darkfield-nb calibrate``) and an OOD detector ("ood"): the sigma maps are the factor times
those without it, the completion key redoes sets made without it, the summary's ood columns
equal ``ood.score_radiograph`` of the model input, and ``evaluate --json`` reports both."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from helpers import toy_generator, toy_recalibration, write_toy_chest_set

from darkfield_nb import checkpoint
from darkfield_nb.calibration import apply_recalibration, recalibration_of
from darkfield_nb.calibration.store import write_calibrated_checkpoint
from darkfield_nb.cli import main
from darkfield_nb.contract import write_manifest
from darkfield_nb.epistemic.store import attach_ood_detector, detector_from_checkpoint
from darkfield_nb.inference import PredictConfig, load_model, predict_folder
from darkfield_nb.inference.decoding import decode
from darkfield_nb.inference.outputs import MAPS
from darkfield_nb.io import read_image
from darkfield_nb.models import GeneratorConfig, ProgressiveGenerator
from darkfield_nb.synthesis import synthesize

SIZE = 32
FACTOR = 1.7


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread


def _recal(factor=FACTOR):
    scaling = {"kind": "sigma_scaling", "factor": factor, "per_region": {"lung": 0.5}}
    return toy_recalibration({**scaling, "method": "coverage", "p": 0.9}, n_images=3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("hookups")
    splits = ["train"] * 6 + ["val"] * 3 + ["test"] * 3 + ["ood"] * 3
    data = write_toy_chest_set(root / "data", splits, seed=0)
    base = checkpoint.save_trained(root / "base.pt", toy_generator(), stage=1, epoch=1)
    recal = write_calibrated_checkpoint(base, root / "recal.pt", _recal())
    ood, _ = attach_ood_detector(base, data, root / "ood.pt", device="cpu", levels=(0, 1))
    both = write_calibrated_checkpoint(ood, root / "both.pt", _recal())
    return {"data": data, "base": base, "recal": recal, "ood": ood, "both": both}


def _predict(ckpt, src, out):
    args = ["predict", str(src), "--out", str(out), "--checkpoint", str(ckpt), "--samples", "3"]
    return main([*args, "--device", "cpu", "--workers", "0", "--quiet"])


def _summary(out):
    with open(out / "summary.csv", newline="") as fh:
        return {r["id"]: r for r in csv.DictReader(fh)}


def test_load_model_carries_the_entries(setup):
    base, both = load_model(setup["base"]), load_model(setup["both"])
    assert base.recalibration is None and base.detector is None
    assert base.model.recalibration is None and base.model.ood_detector is None
    assert both.recalibration == recalibration_of(checkpoint.load_checkpoint(setup["both"]))
    assert both.detector is not None and both.model.ood_detector is both.detector


def test_predict_scales_sigma_maps_by_the_stored_factor(setup, tmp_path, capsys):
    src = setup["data"] / "attenuation"
    assert _predict(setup["base"], src, tmp_path / "plain") == 0
    capsys.readouterr()
    assert _predict(setup["recal"], src, tmp_path / "recal") == 0
    text = capsys.readouterr().out
    assert (
        f"applying the recalibration stored in {setup['recal']} (sigma x 1.7, fitted on 3 val "
        "images)" in text
    )
    # the factor predict applies is apply_recalibration's "scale" for an image without masks
    m = np.full((4, 4), 0.1)
    assert np.all(apply_recalibration(_recal(), m, m, m + 1.9, m)["scale"] == FACTOR)
    for p in sorted(src.glob("*.png")):
        for name in MAPS:
            a = read_image(tmp_path / "plain" / name / f"{p.stem}.tif")
            b = read_image(tmp_path / "recal" / name / f"{p.stem}.tif")
            if name == "darkfield":
                np.testing.assert_array_equal(a, b)
            else:
                assert a.max() > 0 or name == "epistemic"
                np.testing.assert_allclose(b, np.float32(FACTOR) * a, rtol=2e-6, atol=1e-9)
        t = read_image(tmp_path / "recal" / "total" / f"{p.stem}.tif").astype(np.float64)
        al = read_image(tmp_path / "recal" / "aleatoric" / f"{p.stem}.tif").astype(np.float64)
        ep = read_image(tmp_path / "recal" / "epistemic" / f"{p.stem}.tif").astype(np.float64)
        np.testing.assert_allclose(t**2, al**2 + ep**2, rtol=1e-4)
    plain, recal = _summary(tmp_path / "plain"), _summary(tmp_path / "recal")
    for k in plain:
        assert float(recal[k]["mean_total"]) == pytest.approx(
            FACTOR * float(plain[k]["mean_total"]), rel=1e-4
        )
        assert plain[k]["ood_score"] == "" and recal[k]["ood_flag"] == ""


def test_completion_key_redoes_sets_made_without_the_recalibration(setup, tmp_path):
    src, out = setup["data"] / "attenuation", tmp_path / "out"
    model = load_model(setup["base"]).model
    cfg = PredictConfig(samples=2, progress=False, workers=0)

    def run(recal):
        return predict_folder(
            model, src, out, checkpoint_sha256="same", config=cfg, recalibration=recal
        )

    first = run(None)
    assert len(first.written) == 15
    again = run(_recal())
    assert len(again.written) == 15 and set(again.redone.values()) == {"recalibration changed"}
    assert len(run(_recal()).skipped) == 15  # same recalibration: nothing to redo
    other = run(_recal(factor=2.5))
    assert set(other.redone.values()) == {"recalibration changed"}


def test_predict_and_synthesize_score_the_model_input(setup, tmp_path):
    src = setup["data"] / "attenuation"
    assert _predict(setup["ood"], src, tmp_path / "ood") == 0
    rows = _summary(tmp_path / "ood")
    loaded = load_model(setup["ood"])
    # reference: the detector rebuilt on a fresh generator, scoring the image the model sees
    # (the model input as it is: score_radiograph would normalize the resampled input again)
    ref_det = detector_from_checkpoint(checkpoint.load_checkpoint(setup["ood"]))
    flags = []
    for p in sorted(src.glob("*.png")):
        x = decode(p, loaded.geometry, resample=True)["x"]
        s = float(ref_det.score(x[None, None])[0])
        want = {"ood_score": s, "ood_flag": bool(ref_det.threshold.flag(s))}
        row = rows[p.stem]
        assert float(row["ood_score"]) == pytest.approx(want["ood_score"], rel=1e-5)
        assert row["ood_flag"] == str(want["ood_flag"])
        flags.append(want["ood_flag"])
        syn = synthesize(loaded.model, read_image(p), samples=2, geometry=loaded.geometry)
        assert syn.ood_score == pytest.approx(want["ood_score"], rel=1e-5)
        assert syn.ood_flag == want["ood_flag"] and syn.scale is None
    assert any(flags)  # the pacemaker images stand out from the toy training images
    both = load_model(setup["both"]).model
    plain = load_model(setup["base"]).model
    img = read_image(next(iter(sorted(src.glob("*.png")))))
    a = synthesize(plain, img, samples=2, seed=3)
    b = synthesize(both, img, samples=2, seed=3, epistemic="mc")  # the MC spread alone
    assert b.scale == FACTOR and a.ood_score is None and math.isfinite(b.ood_score)
    np.testing.assert_array_equal(a.darkfield, b.darkfield)
    for name in ("aleatoric", "epistemic", "total"):
        np.testing.assert_allclose(getattr(b, name), FACTOR * getattr(a, name), rtol=2e-6)


def _finite_numbers(tree):
    if isinstance(tree, dict):
        return [v for x in tree.values() for v in _finite_numbers(x)]
    if isinstance(tree, list):
        return [v for x in tree for v in _finite_numbers(x)]
    return [tree] if isinstance(tree, int | float) and not isinstance(tree, bool) else []


def test_evaluate_json_reports_calibration_and_ood(setup, tmp_path, capsys):
    out = tmp_path / "eval.json"
    args = ["evaluate", "--checkpoint", str(setup["both"]), "--data", str(setup["data"])]
    assert main([*args, "--samples", "2", "--device", "cpu", "--quiet", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "after the stored sigma scaling" in text and "ood: per-image AUROC" in text
    result = json.loads(out.read_text())
    cal = result["calibration"]
    assert cal["n_images"] == 3 and cal["fitted_on"]["split"] == "val"
    for block in (cal["before"]["all"], cal["after"]["sigma_scaling"]["all"]):
        assert math.isfinite(block["coverage_90"]) and math.isfinite(block["width_90"])
    # the stored factor widens every interval by exactly that factor
    assert cal["after"]["sigma_scaling"]["all"]["width_90"] == pytest.approx(
        FACTOR * cal["before"]["all"]["width_90"], rel=1e-9
    )
    assert "lung" in cal["before"]
    ood = result["ood"]
    assert 0.0 <= ood["image_auroc"] <= 1.0
    assert ood["pixel_auroc"] and all(math.isfinite(v) for v in _finite_numbers(ood["pixel_auroc"]))
    # without an ood split the detector is not evaluated, and evaluate says so
    rows = [r for r in csv.DictReader(open(setup["data"] / "manifest.csv"))]
    small = tmp_path / "small"
    for r in rows:
        for sub, ext in (("attenuation", "png"), ("darkfield", "tif"), ("masks", "png")):
            f = setup["data"] / sub / f"{r['id']}.{ext}"
            (small / sub).mkdir(parents=True, exist_ok=True)
            (small / sub / f.name).write_bytes(f.read_bytes())
    write_manifest(small / "manifest.csv", [r for r in rows if r["split"] != "ood"])
    out2 = tmp_path / "eval2.json"
    args = ["evaluate", "--checkpoint", str(setup["ood"]), "--data", str(small)]
    assert main([*args, "--samples", "0", "--device", "cpu", "--quiet", "--json", str(out2)]) == 0
    assert "has no 'ood' split" in capsys.readouterr().out
    result = json.loads(out2.read_text())
    assert "ood" not in result and "calibration" not in result


def _with_prefix(setup, samples: int):
    """The OOD checkpoint's model and detector, four of its sample images as model inputs, and
    the Monte Carlo prefix ``mc_predict_batch`` computed for them."""
    from darkfield_nb.inference.mc import mc_predict_batch

    loaded = load_model(setup["ood"])
    src = sorted((setup["data"] / "attenuation").glob("*.png"))
    x = torch.stack([decode(p, loaded.geometry, resample=True)["x"] for p in src[-4:]])[:, None]
    seen: list = []
    mc_predict_batch(loaded.model, x, samples=samples, on_prefix=seen.append)
    return loaded.model, loaded.detector, x, seen[0]


def test_shared_ood_reuses_the_prefix_only_where_it_holds_the_detector_features(setup):
    """``hookups.shared_ood`` (predict's path: the MC prefix's encoder features, no second
    forward pass) equals the detector's own score; it declines (None) without a prefix and for
    attention gating, whose encoder features are not the ones the detector was fitted on."""
    from darkfield_nb.inference.hookups import shared_ood

    model, det, x, prefix = _with_prefix(setup, samples=3)
    got = shared_ood(det, prefix, x, model)
    want = det.score(x)
    assert [g["ood_flag"] for g in got] == [bool(det.threshold.flag(float(w))) for w in want]
    np.testing.assert_allclose([g["ood_score"] for g in got], want, rtol=1e-5)
    assert shared_ood(det, None, x, model) is None
    gated = ProgressiveGenerator(
        GeneratorConfig(n_stages=2, base_width=4, depth=2, dropout=0.2, conditioning="attention")
    ).eval()
    assert shared_ood(det, gated.mc_prefix(x), x, gated) is None


def test_shared_ood_takes_the_deterministic_mean_from_the_caller(setup, monkeypatch):
    """With ``mean`` (the stage's eval-mode mean, which ``mc_predict_batch`` hands over for
    mean-head dropout) ``shared_ood`` runs no decoder pass and still equals the detector's own
    score."""
    from darkfield_nb.inference.hookups import shared_ood

    model, det, x, prefix = _with_prefix(setup, samples=2)
    with torch.no_grad():
        mu = model.eval()(x)[-1].mu
    want = det.score(x)

    def no_decoder_pass(*args, **kwargs):
        raise AssertionError("shared_ood ran a decoder pass although it was given the mean")

    monkeypatch.setattr(model, "mc_suffix", no_decoder_pass)
    got = shared_ood(det, prefix, x, model, mu)
    np.testing.assert_allclose([g["ood_score"] for g in got], want, rtol=1e-5)
    with pytest.raises(AssertionError, match="decoder pass"):
        shared_ood(det, prefix, x, model)  # without the mean it needs one
