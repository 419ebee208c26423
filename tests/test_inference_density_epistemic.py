"""predict's epistemic map with a checkpoint that carries the feature-density OOD detector:
"combined" writes sqrt(mc^2 + d^2) (d = ``detector.epistemic_sigma(u)`` of the model input) and
total = sqrt(aleatoric^2 + epistemic^2), the recalibration factor scaling only the aleatoric and
MC parts; "mc" writes the MC maps byte for byte as a checkpoint without a detector does; the
mode is part of the completion key; "combined" without a detector names the checkpoint."""

from __future__ import annotations

import csv
from dataclasses import asdict

import numpy as np
import pytest
import torch
from helpers import toy_generator, toy_recalibration, write_toy_chest_set

from darkfield_nb import checkpoint
from darkfield_nb.calibration.store import write_calibrated_checkpoint
from darkfield_nb.cli import build_parser
from darkfield_nb.cli.predict import _cmd_predict
from darkfield_nb.epistemic.foreign_body import ForeignBodyConfig
from darkfield_nb.epistemic.fpi import FPINet
from darkfield_nb.epistemic.store import attach_ood_detector, detector_from_checkpoint
from darkfield_nb.inference import PredictConfig, load_model, predict_folder
from darkfield_nb.inference.decoding import decode
from darkfield_nb.inference.outputs import MAPS
from darkfield_nb.io import read_image

SIZE = 32
FACTOR = 1.7
GEOMETRY = {"size": [SIZE, SIZE], "pixel_mm": 10.0}  # a 32 px input is the model's own size


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread


def _recal():
    scaling = {"kind": "sigma_scaling", "factor": FACTOR, "method": "coverage", "p": 0.9}
    return toy_recalibration(scaling, n_images=5)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("density_epistemic")
    splits = ["train"] * 6 + ["val"] * 5 + ["test"] * 1 + ["ood"] * 2
    data = write_toy_chest_set(root / "data", splits, seed=1)
    model = toy_generator()
    base = checkpoint.save_trained(root / "base.pt", model, stage=1, epoch=1, geometry=GEOMETRY)
    ood, _ = attach_ood_detector(base, data, root / "ood.pt", device="cpu", levels=(0, 1))
    both = write_calibrated_checkpoint(ood, root / "both.pt", _recal())
    # the same with a foreign-body term (an untrained segmenter: its map is what it is)
    torch.manual_seed(3)
    net = FPINet(ForeignBodyConfig(channels=(4, 8)))
    seg = root / "seg.pt"
    torch.save(
        {"method": "foreign_body", "config": asdict(net.config), "state_dict": net.state_dict()},
        seg,
    )
    fb, _ = attach_ood_detector(
        base, data, root / "fb.pt", device="cpu", levels=(0, 1), foreign_body=seg
    )
    fb_both = write_calibrated_checkpoint(fb, root / "fb_both.pt", _recal())
    return {"data": data, "base": base, "ood": ood, "both": both, "fb_both": fb_both}


def _run(ckpt, out, epistemic="auto", samples=3):
    loaded = load_model(ckpt)
    cfg = PredictConfig(samples=samples, progress=False, workers=0, epistemic=epistemic)
    src = loaded.path.parent / "data" / "attenuation"
    return predict_folder(
        loaded.model,
        src,
        out,
        geometry=loaded.geometry,
        checkpoint_sha256=loaded.sha256,
        config=cfg,
    )


def _maps(out, stem):
    return {name: read_image(out / name / f"{stem}.tif").astype(np.float64) for name in MAPS}


def _summary(out):
    with open(out / "summary.csv", newline="") as fh:
        return {r["id"]: r for r in csv.DictReader(fh)}


def _density_sigma(setup, path, key="both"):
    """d of one input by an independent path: the detector rebuilt from the checkpoint file on a
    fresh generator, ``OODDetector.predict`` of the normalized model input."""
    loaded = load_model(setup[key])
    item = decode(path, loaded.geometry, resample=True)
    assert item["plan"].identity and tuple(item["x"].shape) == (SIZE, SIZE)
    det = detector_from_checkpoint(checkpoint.load_checkpoint(setup[key]))
    with torch.no_grad():
        return det.predict(item["x"][None, None]).epistemic[0, 0].double().numpy()


@pytest.mark.parametrize("key", ["both", "fb_both"])
@pytest.mark.parametrize("samples", [3, 0])
def test_combined_adds_the_density_sigma_in_quadrature(setup, tmp_path, samples, key):
    """samples=3: d from the MC prefix's features; samples=0 (no prefix): one detector pass.
    "fb_both": the detector carries a foreign-body term, and d includes its sigma."""
    comb = _run(setup[key], tmp_path / "comb", "combined", samples)
    mc = _run(setup[key], tmp_path / "mc", "mc", samples)
    assert comb.epistemic == "combined" and mc.epistemic == "mc"
    assert len(comb.written) == len(mc.written) == 14
    grew = 0
    for p in sorted((setup["data"] / "attenuation").glob("*.png")):
        c, m = _maps(tmp_path / "comb", p.stem), _maps(tmp_path / "mc", p.stem)
        d = _density_sigma(setup, p, key)
        np.testing.assert_array_equal(c["darkfield"], m["darkfield"])
        np.testing.assert_array_equal(c["aleatoric"], m["aleatoric"])  # s ale, both modes
        # s scales the MC part (already in m), not d
        want = np.sqrt(m["epistemic"] ** 2 + d**2)
        np.testing.assert_allclose(c["epistemic"], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            c["total"] ** 2, c["aleatoric"] ** 2 + c["epistemic"] ** 2, rtol=1e-5, atol=1e-12
        )
        if samples == 0:
            assert m["epistemic"].max() == 0.0
        grew += int(d.max() > 0 and (c["epistemic"] > m["epistemic"] + 1e-6).any())
    assert grew > 0  # the density adds something somewhere (the pacemaker images at least)
    rows_c, rows_m = _summary(tmp_path / "comb"), _summary(tmp_path / "mc")
    assert {r["epistemic"] for r in rows_c.values()} == {"mc+density"}
    assert {r["epistemic"] for r in rows_m.values()} == {"mc"}
    for k in rows_c:
        assert rows_c[k]["ood_score"] == rows_m[k]["ood_score"]


def test_mc_mode_writes_the_bytes_of_a_checkpoint_without_a_detector(setup, tmp_path):
    """ "mc" with the detector checkpoint: the same files as the same weights without a
    detector (whose "auto" is "mc", the behaviour before the option)."""
    plain = _run(setup["base"], tmp_path / "plain")
    mc = _run(setup["ood"], tmp_path / "mc", "mc")
    assert plain.epistemic == "mc" and mc.epistemic == "mc"
    for p in sorted((setup["data"] / "attenuation").glob("*.png")):
        for name in MAPS:
            a = (tmp_path / "plain" / name / f"{p.stem}.tif").read_bytes()
            b = (tmp_path / "mc" / name / f"{p.stem}.tif").read_bytes()
            assert a == b, (name, p.stem)


def test_mode_is_part_of_the_completion_key(setup, tmp_path):
    out = tmp_path / "out"
    first = _run(setup["ood"], out)  # auto with a detector: combined
    assert first.epistemic == "combined" and len(first.written) == 14
    again = _run(setup["ood"], out, "combined")
    assert len(again.skipped) == 14 and not again.written
    switched = _run(setup["ood"], out, "mc")
    assert len(switched.written) == 14
    assert set(switched.redone.values()) == {"epistemic map changed"}
    assert len(_run(setup["ood"], out, "mc").skipped) == 14
    back = _run(setup["ood"], out, "auto")
    assert set(back.redone.values()) == {"epistemic map changed"}


def test_combined_without_a_detector_names_the_checkpoint(setup, tmp_path):
    with pytest.raises(ValueError, match=str(setup["base"])):
        _run(setup["base"], tmp_path / "x", "combined")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="epistemic='density'"):
        _run(setup["ood"], tmp_path / "y", "density")


def test_cli_passes_the_mode_and_says_which_map_it_wrote(setup, tmp_path, capsys):
    """``_cmd_predict`` passes ``args.epistemic`` on (``flags_for``) and its closing lines say
    which epistemic map was written."""
    src = setup["data"] / "attenuation"
    argv = ["predict", str(src), "--out", str(tmp_path / "o"), "--checkpoint", str(setup["ood"])]
    args = build_parser().parse_args([*argv, "--samples", "2", "--workers", "0", "--quiet"])
    args.device = "cpu"
    args.epistemic = "mc"
    assert _cmd_predict(args) == 0
    assert "epistemic maps: the MC dropout spread (--epistemic mc)" in capsys.readouterr().out
    args.epistemic = "combined"
    assert _cmd_predict(args) == 0
    text = capsys.readouterr().out
    assert "redid 14" in text and "epistemic maps: sqrt(mc^2 + d^2)" in text


def test_synthesize_follows_the_same_rule_as_predict(setup, tmp_path):
    """``synthesize`` of one radiograph gives the maps ``predict`` writes for it, in each mode:
    "combined" (the default with a detector) sqrt(mc^2 + d^2), "mc" the MC spread alone."""
    from darkfield_nb.synthesis import synthesize

    loaded = load_model(setup["both"])
    path = sorted((setup["data"] / "attenuation").glob("*.png"))[-1]  # an ood image
    image = read_image(path)
    epi = {}
    for mode in ("combined", "mc"):
        _run(setup["both"], tmp_path / mode, mode, samples=3)
        s = synthesize(
            loaded.model, image, samples=3, epistemic="auto" if mode == "combined" else mode
        )
        written = _maps(tmp_path / mode, path.stem)
        for name in MAPS:
            np.testing.assert_allclose(getattr(s, name), written[name], rtol=1e-5, atol=1e-6)
        epi[mode] = s.epistemic
    assert (epi["combined"] > epi["mc"] + 1e-4).any()  # the pacemaker's density counts
    with pytest.raises(ValueError, match="epistemic='combined' needs"):
        synthesize(load_model(setup["base"]).model, image, samples=0, epistemic="combined")
