"""The shipped pretrained model: export round trip, checksum, recipe, and reproducible metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from darkfield_nb import checkpoint
from darkfield_nb.models import GeneratorConfig, ProgressiveGenerator
from darkfield_nb.paths import pretrained_checkpoint, sample_data_dir
from darkfield_nb.pretrained import (
    INFO_NAME,
    SUM_NAME,
    export_pretrained,
    verify_pretrained,
    write_pretrained_checksum,
)
from darkfield_nb.train import recipes


def test_export_round_trip_and_tamper_detection(tmp_path):
    torch.manual_seed(0)
    model = ProgressiveGenerator(GeneratorConfig(n_stages=2, base_width=4, depth=2))
    src = checkpoint.save(
        tmp_path / "model.pt", model, stage=1, epoch=3, history=[{"stage": 0, "epoch": 1}]
    )
    out = tmp_path / "ship"
    path = export_pretrained(src, out, info={"note": "test"})
    assert verify_pretrained(out) == []
    loaded = checkpoint.load(path)
    for (name, a), (_, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert b.dtype == a.dtype, name
        torch.testing.assert_close(b, a.half().float(), rtol=0, atol=0)  # exactly fp16-rounded
    info = json.loads((out / INFO_NAME).read_text())
    assert info["note"] == "test" and info["history"] == [{"stage": 0, "epoch": 1}]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte
    path.write_bytes(bytes(data))
    assert any("sha256" in p for p in verify_pretrained(out))
    (out / SUM_NAME).unlink()
    assert any("missing" in p for p in verify_pretrained(out))


def test_export_keeps_geometry_and_stored_entries(tmp_path):
    """The training geometry, the recalibration, the OOD entry and the lung level travel with
    the export, in the float16 file whose checksum then matches; a later entry needs a new
    checksum."""
    torch.manual_seed(0)
    model = ProgressiveGenerator(GeneratorConfig(n_stages=1, base_width=4, depth=2))
    geometry = checkpoint.make_geometry(512, field_of_view_mm=400.0)
    src = checkpoint.save(tmp_path / "model.pt", model, stage=0, epoch=1, geometry=geometry)
    raw = checkpoint.load_checkpoint(src)
    raw["recalibration"] = {"kind": "sigma_scale", "scale": 0.5}
    raw["ood"] = {"threshold": 1.5}
    raw["lung_level"] = {"version": 1, "members": [{"w": torch.ones(2, dtype=torch.float16)}]}
    torch.save(raw, src)
    out = tmp_path / "ship"
    path = export_pretrained(src, out, info={})
    stored = checkpoint.load_checkpoint(path)
    assert stored["geometry"] == {
        "size": [512, 512],
        "field_of_view_mm": 400.0,
        "pixel_mm": 0.78125,
    }
    assert stored["recalibration"] == {"kind": "sigma_scale", "scale": 0.5}
    assert stored["ood"] == {"threshold": 1.5}
    assert torch.equal(stored["lung_level"]["members"][0]["w"], torch.ones(2).half())
    assert stored["generator_dtype"] == "float16"
    assert verify_pretrained(out) == []
    stored["recalibration"]["scale"] = 0.6
    torch.save(stored, path)
    assert verify_pretrained(out) != []
    write_pretrained_checksum(out)
    assert verify_pretrained(out) == []


shipped = pytest.mark.skipif(
    not pretrained_checkpoint().exists(), reason="no shipped pretrained model yet"
)


@shipped
def test_shipped_model_checksum_recipe_and_size():
    root = sample_data_dir()
    assert verify_pretrained(root) == []
    assert pretrained_checkpoint().stat().st_size < 20 * 2**20
    info = json.loads((root / INFO_NAME).read_text())
    assert info["train_config"] == recipes.pretrained().to_dict()
    ckpt = checkpoint.load_checkpoint(pretrained_checkpoint())
    assert ckpt["stages_trained"] == 3 and ckpt["generator_dtype"] == "float16"


@pytest.mark.skipif(
    not (sample_data_dir() / "gpu512" / "pretrained.pt").exists(), reason="no GPU model shipped"
)
def test_gpu_model_checksum_recipe_geometry_and_size():
    root = sample_data_dir() / "gpu512"
    assert verify_pretrained(root) == []
    assert (root / "pretrained.pt").stat().st_size < 20 * 2**20
    info = json.loads((root / INFO_NAME).read_text())
    assert info["train_config"] == recipes.wide512(epochs=(1, 2, 3)).to_dict()
    ckpt = checkpoint.load_checkpoint(root / "pretrained.pt")
    assert ckpt["stages_trained"] == 3 and ckpt["generator_dtype"] == "float16"
    assert ckpt["geometry"]["size"] == [512, 512]


@shipped
def test_shipped_model_reproduces_its_recorded_sample_metrics():
    """The deterministic (no MC) metrics on the sample test split were recorded at export;
    evaluating the shipped file again must give the same numbers."""
    from darkfield_nb.data import PairedDataset
    from darkfield_nb.evaluation import evaluate

    info = json.loads((sample_data_dir() / INFO_NAME).read_text())
    model = checkpoint.load(pretrained_checkpoint())
    test = PairedDataset(sample_data_dir(), split="test", pad_multiple=1)
    result = evaluate(model, test, mc_samples=0, progress=False)
    for name in ("mse", "psnr", "ssim"):
        assert result[name] == pytest.approx(info["sample_test"][name], abs=1e-4)


def test_shipped_detector_carries_the_foreign_body_term_and_sees_a_drawn_wire():
    """Session 24's detector (entry version 5): the segmenter is stored in float16 and its map
    ranks the pixels of a wire added to a sample input (a straight band, drawn here, not by the
    simulator's device models) above the rest of the body, and the wire raises the score."""
    from sklearn.metrics import roc_auc_score

    from darkfield_nb.data import PairedDataset
    from darkfield_nb.epistemic.foreign_body import band_profile, distance_to_polyline
    from darkfield_nb.epistemic.fpi import body_from_input
    from darkfield_nb.inference import load_model

    torch.set_num_threads(1)
    raw = torch.load(pretrained_checkpoint(), map_location="cpu", weights_only=True)["ood"]
    assert raw["version"] == 5
    fb = raw["detector"]["foreign_body"]
    assert fb["method"] == "foreign_body" and fb["region"] == "thorax"
    assert all(v.dtype == torch.float16 for v in fb["state"].values() if v.is_floating_point())
    assert "foreign_body" in raw["detector"]["image_score"]["names"]
    det = load_model().detector
    x = PairedDataset(sample_data_dir(), split="test", pad_multiple=1, check=False)[0]["input"]
    x = x[None].float()
    wire = band_profile(
        distance_to_polyline(np.array([[60.0, 40.0], [200.0, 110.0]]), (256, 256)), 0.7
    )
    x2 = x + 0.3 * torch.from_numpy(wire).float()[None, None]
    m = det.foreign_body_map(x2)[0, 0].double().numpy()
    body = body_from_input(x[0, 0].numpy())
    on = wire > 0.5
    sel = body & ((wire == 0) | on)
    assert roc_auc_score(on[sel], m[sel]) > 0.9
    assert det.score(x2)[0] > det.score(x)[0]
