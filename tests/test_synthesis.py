"""Synthesis of folders: outputs, the variance identity, resumability, and bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from darkfield_nb.io import read_image, write_image
from darkfield_nb.models import GeneratorConfig, ProgressiveGenerator
from darkfield_nb.synthesis import MAPS, list_radiographs, synthesize, synthesize_folder


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = GeneratorConfig(n_stages=2, base_width=4, depth=2, dropout=0.2)
    model = ProgressiveGenerator(cfg).eval()
    for stage in model.stages:  # residual stages start with a zero mean head: act as if trained
        torch.nn.init.normal_(stage.head_mu.weight, std=0.1)
    return model


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "xrays"
    write_image(src / "a.png", rng.integers(0, 4096, (40, 36)).astype(np.uint16))
    write_image(src / "b.npy", rng.random((33, 45)).astype(np.float32))
    (src / "notes.txt").write_text("not an image")
    return src


def test_synthesize_maps_have_input_shape_and_variances_add(model):
    image = np.random.default_rng(1).random((37, 53)).astype(np.float32)
    out = synthesize(model, image, samples=6, seed=3)
    for name in MAPS:
        assert getattr(out, name).shape == image.shape
    # total^2 = aleatoric^2 + epistemic^2 (the definition of the total predictive variance)
    np.testing.assert_allclose(out.total**2, out.aleatoric**2 + out.epistemic**2, rtol=1e-4)
    assert (out.epistemic > 0).mean() > 0.99  # dropout is on, so passes differ
    again = synthesize(model, image, samples=6, seed=3)
    np.testing.assert_array_equal(out.darkfield, again.darkfield)  # seeded: reproducible


def test_synthesize_refuses_non_2d(model):
    with pytest.raises(ValueError, match="2-D"):
        synthesize(model, np.zeros((3, 8, 8), np.float32))


def test_folder_writes_every_map_and_resumes(model, folder, tmp_path):
    assert [p.name for p in list_radiographs(folder)] == ["a.png", "b.npy"]
    out = tmp_path / "out"
    report = synthesize_folder(model, folder, out, samples=3, progress=False)
    assert len(report.written) == 2 and not report.failed
    for name in MAPS:
        assert read_image(out / name / "b.tif").shape == (33, 45)
    before = (out / "darkfield" / "a.tif").stat().st_mtime_ns
    again = synthesize_folder(model, folder, out, samples=3, progress=False)
    assert len(again.skipped) == 2 and not again.written
    assert (out / "darkfield" / "a.tif").stat().st_mtime_ns == before
    assert not list(out.rglob(".*tmp*")), "temporary files left behind"


def test_bad_file_is_reported_by_name_and_others_still_written(model, folder, tmp_path):
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    report = synthesize_folder(model, folder, tmp_path / "out", samples=2, progress=False)
    assert len(report.written) == 2
    (problem,) = report.failed.values()
    assert "broken.png" in problem


def test_missing_folder_and_name_clash(model, tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        synthesize_folder(model, tmp_path / "nope", tmp_path / "out")
    write_image(folder / "a.tif", np.ones((8, 8), np.float32))
    with pytest.raises(ValueError, match="share the name"):
        synthesize_folder(model, folder, tmp_path / "out")


def test_device_strings_and_devices_are_resolved_by_pick_device(model):
    from darkfield_nb.hardware import pick_device

    image = np.random.default_rng(2).random((24, 24)).astype(np.float32)
    ref = synthesize(model, image, samples=3, seed=1, device="cpu")
    for device in ("auto", pick_device("auto")):
        out = synthesize(model, image, samples=3, seed=1, device=device)
        np.testing.assert_allclose(out.darkfield, ref.darkfield, atol=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_cuda_fails_early_with_a_clear_error(model):
    with pytest.raises(RuntimeError, match="no CUDA device"):
        synthesize(model, np.zeros((16, 16), np.float32), samples=2, device="cuda")
