"""evaluate(): per-stage metrics against scikit-image, uncertainty figures against scipy."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from darkfield_nb.contract import write_manifest
from darkfield_nb.data import PairedDataset
from darkfield_nb.evaluation import evaluate, format_stage_table
from darkfield_nb.io import write_image
from darkfield_nb.models import StageOutput

skm = pytest.importorskip("skimage.metrics")


class ConstantModel(nn.Module):
    """Stage k predicts mu = c_k everywhere with a fixed GGD (alpha, beta): known outputs."""

    def __init__(self, levels=(0.1, 0.3), alpha=0.2, beta=1.5):
        super().__init__()
        self.levels, self.alpha, self.beta = levels, alpha, beta
        self.config = SimpleNamespace(n_stages=len(levels))

    def forward(self, x, n_stages=None):
        n = n_stages or len(self.levels)
        full = torch.ones_like(x)
        return [StageOutput(full * c, full * self.alpha, full * self.beta) for c in self.levels[:n]]


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    targets, rows = [], []
    for i in range(5):
        write_image(
            tmp_path / "attenuation" / f"i{i}.png",
            rng.integers(0, 4096, (24, 20)).astype(np.uint16),
        )
        t = (0.3 + 0.1 * rng.standard_normal((24, 20))).astype(np.float32)
        write_image(tmp_path / "darkfield" / f"i{i}.tif", t)
        targets.append(t)
        rows.append({"id": f"i{i}", "patient": f"P{i}", "split": "test"})
    write_manifest(tmp_path / "manifest.csv", rows)
    return PairedDataset(tmp_path, split="test", pad_multiple=1), targets


def test_stage_metrics_match_skimage(data):
    ds, targets = data
    model = ConstantModel()
    result = evaluate(model, ds, mc_samples=0, progress=False)
    assert result["n_images"] == 5
    for k, level in enumerate(model.levels):
        pairs = [(t, np.full_like(t, level)) for t in targets]
        ref_mse = np.mean([skm.mean_squared_error(t, p) for t, p in pairs])
        ref_psnr = np.mean([skm.peak_signal_noise_ratio(t, p, data_range=1.0) for t, p in pairs])
        ref_ssim = np.mean([skm.structural_similarity(t, p, data_range=1.0) for t, p in pairs])
        assert result["mse"][k] == pytest.approx(ref_mse, rel=1e-5)
        assert result["psnr"][k] == pytest.approx(ref_psnr, abs=1e-4)
        assert result["ssim"][k] == pytest.approx(ref_ssim, abs=1e-4)
        low, high = result["mse_ci95"][k]
        assert low <= result["mse"][k] <= high
    assert result["mse"][1] < result["mse"][0]  # 0.3 is the targets' centre, 0.1 is not
    assert "stage" in format_stage_table(result)


def test_device_auto_is_resolved_by_pick_device(data):
    from darkfield_nb.hardware import pick_device

    ds, _ = data
    model = ConstantModel()
    auto = evaluate(model, ds, mc_samples=0, device="auto", progress=False)
    explicit = evaluate(model, ds, mc_samples=0, device=pick_device("auto"), progress=False)
    assert auto["mse"] == explicit["mse"] and auto["n_images"] == 5
    assert (
        auto["mse"] == evaluate(model, ds, mc_samples=0, progress=False)["mse"]
    )  # the cpu default


def test_uncertainty_figures_match_scipy_gennorm(data):
    ds, targets = data
    model = ConstantModel(levels=(0.3,), alpha=0.15, beta=1.5)
    unc = evaluate(model, ds, mc_samples=0, progress=False)["uncertainty"]
    y = np.concatenate([t.ravel() for t in targets]).astype(np.float64)
    dist = stats.gennorm(1.5, loc=0.3, scale=0.15)
    assert unc["nll"] == pytest.approx(-dist.logpdf(y).mean(), rel=1e-4)
    low, high = dist.ppf(0.05), dist.ppf(0.95)
    assert unc["coverage_90"] == pytest.approx(np.mean((y >= low) & (y <= high)), abs=1e-3)
    assert unc["mean_sigma_aleatoric"] == pytest.approx(dist.std(), rel=1e-4)
    assert unc["mean_sigma_epistemic"] == 0.0


def test_empty_split_is_refused(data, tmp_path):
    ds, _ = data
    ds.rows = []
    with pytest.raises(ValueError, match="empty"):
        evaluate(ConstantModel(), ds, mc_samples=0, progress=False)


def test_spearman_is_none_for_constant_sigma_and_matches_scipy_otherwise(data):
    ds, targets = data
    unc = evaluate(ConstantModel(levels=(0.3,)), ds, mc_samples=0, progress=False)["uncertainty"]
    assert unc["spearman_sigma_error"] is None  # constant sigma: no rank correlation exists

    class SigmaFollowsError(ConstantModel):
        def forward(self, x, n_stages=None):
            (out,) = super().forward(x, n_stages)
            return [out._replace(alpha=0.01 + x.abs())]

    unc = evaluate(SigmaFollowsError(levels=(0.3,)), ds, mc_samples=0, progress=False)
    # every pixel is pooled for these small images, so scipy on the same pixels is the reference
    # (sigma is monotone in alpha at fixed beta, so ranking alpha ranks sigma)
    alpha = np.concatenate([(0.01 + ds[i]["input"].abs()).numpy().ravel() for i in range(5)])
    err = np.concatenate([np.abs(t - 0.3).ravel() for t in targets])
    ref = stats.spearmanr(alpha, err).statistic
    assert unc["uncertainty"]["spearman_sigma_error"] == pytest.approx(ref, abs=1e-6)


def test_paired_differences_hand_computed():
    from darkfield_nb.evaluation import paired_differences

    images = [
        {"mse": [0.4, 0.2], "psnr": [10.0, 12.0], "ssim": [0.5, 0.4]},
        {"mse": [0.4, 0.3], "psnr": [10.0, 11.0], "ssim": [0.5, 0.7]},
    ]
    out = paired_differences(images)
    (mse,) = out["mse"]
    assert (mse["stage"], mse["versus"]) == (2, 1)
    assert mse["mean"] == pytest.approx(-0.15) and mse["improved"] == 1.0
    assert out["ssim"][0]["mean"] == pytest.approx(0.05) and out["ssim"][0]["improved"] == 0.5
    assert out["psnr"][0]["ci95"][0] <= 1.5 <= out["psnr"][0]["ci95"][1]


def test_non_finite_output_is_refused_by_image(data):
    """A model whose stage-2 mu is NaN must not yield a table of NaN: one error naming the image
    and the stage (the reference is the output we built)."""
    ds, _ = data
    with pytest.raises(ValueError, match=r"image 'i0': stage 2 output mu holds 480 non-finite"):
        evaluate(ConstantModel(levels=(0.1, float("nan"))), ds, mc_samples=0, progress=False)
