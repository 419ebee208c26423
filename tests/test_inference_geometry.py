"""Geometry-aware inference: resampling (against scipy.ndimage.zoom and a closed form), pixel
spacing from DICOM headers, the resampling plan, the far-from-training warning, and the
geometry a checkpoint records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from darkfield_nb import checkpoint
from darkfield_nb.inference.geometry import (
    TrainingGeometry,
    dicom_pixel_spacing,
    plan_resample,
    resize,
    resize_sigma,
)
from darkfield_nb.models import GeneratorConfig, ProgressiveGenerator
from darkfield_nb.synthesis import synthesize

REAL_DCM = Path("/work/shared/real_cxr/siim_chest_pa.dcm")
TRAIN = TrainingGeometry((256, 256), 1.5625)


def _smooth(n: int) -> np.ndarray:
    """A smooth test image on pixel centres: sin/cos of a few cycles plus a ramp."""
    c = (np.arange(n) + 0.5) / n
    y, x = np.meshgrid(c, c, indexing="ij")
    return (np.sin(2 * np.pi * 2 * x) * np.cos(2 * np.pi * 1.5 * y) + x).astype(np.float32)


def test_upsampling_equals_scipy_zoom_linear_on_pixel_centres():
    a = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    ours = resize(a, (40, 60))
    ref = ndi.zoom(a, 2, order=1, grid_mode=True, mode="nearest")
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_round_trip_of_a_smooth_image_is_close():
    img = _smooth(512)
    back = resize(resize(img, (256, 256)), (512, 512))
    inner = (slice(8, -8), slice(8, -8))
    span = float(img.max() - img.min())
    assert np.abs(back - img)[inner].max() < 2e-3 * span
    assert np.abs(back - img).mean() < 1e-3 * span
    # shrinking agrees with scipy's linear zoom up to the antialiasing filter's smoothing
    ref = ndi.zoom(img, 0.5, order=1, grid_mode=True, mode="nearest")
    assert np.abs(resize(img, (256, 256)) - ref)[4:-4, 4:-4].max() < 5e-3 * span


def test_a_linear_ramp_is_reproduced_exactly_inside():
    # bilinear interpolation is exact for a linear function (closed form): f(x) = 3x + 1
    c = (np.arange(64) + 0.5) / 64
    ramp = np.tile(3 * c + 1, (64, 1)).astype(np.float32)
    up = resize(ramp, (64, 128))
    c2 = (np.arange(128) + 0.5) / 128
    np.testing.assert_allclose(up[:, 2:-2], np.tile(3 * c2 + 1, (64, 1))[:, 2:-2], atol=1e-5)


def test_sigma_maps_are_resampled_through_the_variance():
    rng = np.random.default_rng(1)
    ale = rng.random((32, 32)).astype(np.float32)
    epi = 0.1 * rng.random((32, 32)).astype(np.float32)
    tot = np.sqrt(ale**2 + epi**2)
    shape = (77, 50)
    a, e, t = (resize_sigma(s, shape) for s in (ale, epi, tot))
    np.testing.assert_allclose(t**2, a**2 + e**2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(a, np.sqrt(resize(ale**2, shape)), rtol=1e-6)
    torch_out = resize_sigma(torch.from_numpy(ale), shape)
    np.testing.assert_allclose(torch_out.numpy(), a, rtol=1e-6)


@pytest.mark.skipif(not REAL_DCM.exists(), reason="real radiographs not available")
def test_pixel_spacing_of_the_real_dicom():
    row, col, tag = dicom_pixel_spacing(REAL_DCM)
    assert (row, col, tag) == (pytest.approx(0.168), pytest.approx(0.168), "PixelSpacing")


def _write_dicom(path: Path, **tags) -> Path:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = 40, 50
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.arange(2000, dtype=np.uint16).reshape(40, 50).tobytes()
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True) if _new_pydicom(pydicom) else ds.save_as(path)
    return path


def _new_pydicom(pydicom) -> bool:
    return int(pydicom.__version__.split(".")[0]) >= 3


def test_pixel_spacing_of_synthetic_dicoms(tmp_path):
    imager = _write_dicom(tmp_path / "imager.dcm", ImagerPixelSpacing=[0.2, 0.25])
    assert dicom_pixel_spacing(imager) == (0.2, 0.25, "ImagerPixelSpacing")
    both = _write_dicom(
        tmp_path / "both.dcm", ImagerPixelSpacing=[0.2, 0.2], PixelSpacing=[0.1, 0.1]
    )
    assert dicom_pixel_spacing(both) == (0.1, 0.1, "PixelSpacing")  # patient plane wins
    assert dicom_pixel_spacing(_write_dicom(tmp_path / "none.dcm")) is None
    assert dicom_pixel_spacing(tmp_path / "x.png") is None


def test_plan_with_known_and_assumed_pixel_size():
    # no header: the whole 512 px image is the 400 mm training field -> 0.78125 mm, scale 1/2
    plan = plan_resample((512, 512), TRAIN)
    assert plan.pixel_source == "assumed" and plan.model_shape == (256, 256)
    assert plan.pixel_mm == (0.78125, 0.78125) and plan.scale == (0.5, 0.5)
    assert not plan.warnings
    # a 2500 x 2000 px detector of 0.16 mm pixels: 400 x 320 mm, model pixels 1.5625 mm
    plan = plan_resample((2500, 2000), TRAIN, (0.16, 0.16, "PixelSpacing"))
    assert plan.model_shape == (round(2500 * 0.16 / 1.5625), round(2000 * 0.16 / 1.5625))
    assert not plan.warnings
    # the training geometry itself: nothing to do
    assert plan_resample((256, 256), TRAIN).identity
    native = plan_resample((1024, 1024), TRAIN, resample=False)
    assert native.identity and native.pixel_source == "native"


def test_far_from_training_geometry_warns_naming_the_file():
    # a DICOM header implying a 172 mm chest field (the SIIM file: downsampled, tag kept) is
    # not believed: the whole image is taken as the chest field, and the warning says so
    small = plan_resample((1024, 1024), TRAIN, (0.168, 0.168, "PixelSpacing"), name="a.dcm")
    assert len(small.warnings) == 1
    assert small.warnings[0].startswith("a.dcm: PixelSpacing 0.168 mm x 1024 px implies a 172 mm")
    assert small.pixel_source == "assumed (PixelSpacing ignored)"
    assert small.model_shape == (256, 256)
    wide = plan_resample((300, 900), TRAIN, name="wide.png")
    assert any("wide.png: aspect ratio 3.00" in w for w in wide.warnings)
    assert not plan_resample((1000, 1100), TRAIN, (0.4, 0.4, "PixelSpacing")).warnings


def test_synthesize_resamples_back_and_warns(tmp_path):
    torch.manual_seed(0)
    model = ProgressiveGenerator(GeneratorConfig(n_stages=1, base_width=4, depth=2, dropout=0.2))
    model.training_geometry = TrainingGeometry((32, 32), 400 / 32)
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    out = synthesize(model, image, samples=3)
    assert out.plan.model_shape == (32, 32) and out.darkfield.shape == (64, 64)
    np.testing.assert_allclose(out.total**2, out.aleatoric**2 + out.epistemic**2, rtol=1e-4)
    with pytest.warns(UserWarning, match="xray.dcm: field of view 1280 mm"):
        far = synthesize(model, image, samples=2, pixel_mm=20.0, name="xray.dcm")
    assert far.plan.model_shape == (102, 102) and far.darkfield.shape == (64, 64)
    with pytest.raises(ValueError, match="xray.dcm: 64 x 64 px of 0.5 mm"):
        synthesize(model, image, samples=2, pixel_mm=0.5, name="xray.dcm")


def test_checkpoint_records_geometry_and_defaults_without_it(tmp_path):
    model = ProgressiveGenerator(GeneratorConfig(n_stages=1, base_width=4, depth=2))
    geo = checkpoint.make_geometry(128, field_of_view_mm=300.0)
    assert geo == {"size": [128, 128], "field_of_view_mm": 300.0, "pixel_mm": 300.0 / 128}
    path = checkpoint.save_trained(tmp_path / "g.pt", model, stage=0, epoch=1, geometry=geo)
    assert checkpoint.checkpoint_geometry(checkpoint.load_checkpoint(path)) == geo
    old = checkpoint.save_trained(tmp_path / "old.pt", model, stage=0, epoch=1)
    got = checkpoint.checkpoint_geometry(checkpoint.load_checkpoint(old))
    assert (
        got
        == checkpoint.DEFAULT_GEOMETRY
        == {
            "size": [256, 256],
            "field_of_view_mm": 400.0,
            "pixel_mm": 1.5625,
        }
    )


def test_dataset_geometry_from_sidecar_or_image_size(tmp_path):
    from darkfield_nb.io import write_image

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "dataset.json").write_text(
        '{"size": 256, "fov_cm": 40.0, "pixel_mm": 1.5625}'
    )
    assert checkpoint.dataset_geometry(tmp_path / "a") == checkpoint.DEFAULT_GEOMETRY
    write_image(tmp_path / "b" / "attenuation" / "x.png", np.zeros((96, 80), np.uint8))
    geo = checkpoint.dataset_geometry(tmp_path / "b")
    assert geo == {"size": [96, 80], "field_of_view_mm": 400.0, "pixel_mm": 400.0 / 96}
    assert checkpoint.dataset_geometry(tmp_path / "empty") is None


def test_a_loaded_model_carries_its_geometry_into_synthesize(tmp_path):
    from darkfield_nb.synthesis import model_geometry

    torch.manual_seed(0)
    model = ProgressiveGenerator(GeneratorConfig(n_stages=1, base_width=4, depth=2, dropout=0.2))
    geo = checkpoint.make_geometry(40, field_of_view_mm=400.0)
    path = checkpoint.save_trained(tmp_path / "m.pt", model, stage=0, epoch=1, geometry=geo)
    loaded = checkpoint.load(path)
    assert model_geometry(loaded) == TrainingGeometry((40, 40), 10.0)
    out = synthesize(
        loaded, np.random.default_rng(0).random((80, 80)).astype(np.float32), samples=2
    )
    assert out.plan.model_shape == (40, 40) and out.darkfield.shape == (80, 80)
