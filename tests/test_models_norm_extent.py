"""A pixel's prediction should depend on what is around it, not on how large the image is.

Instance normalization divides every feature map by its own per-image mean and standard
deviation, so adding air around a chest (a wider field of view, a padded input) changes every
prediction inside it: the shipped v3 predicted a 38 % higher lung D for the same patient framed
at 60 % instead of 100 % of the image (``bench/framing_invariance.py``). Batch normalization in
eval mode uses the running statistics stored at training time: the network is then a local
operator, and a pixel farther from the border than the receptive field is unchanged by padding.
The reference here is the same network's prediction on the unpadded image.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from darkfield_nb.inference.mc import mc_predict_batch
from darkfield_nb.models import GeneratorConfig, ProgressiveGenerator

SIZE, PAD, CENTRE = 128, 32, 16  # the centre 32 x 32 is 48 px from the border


def _centre(t: torch.Tensor, offset: int = 0) -> torch.Tensor:
    c = offset + SIZE // 2
    return t[..., c - CENTRE : c + CENTRE, c - CENTRE : c + CENTRE]


def _model(norm: str) -> ProgressiveGenerator:
    torch.manual_seed(0)
    cfg = GeneratorConfig(n_stages=2, base_width=4, depth=2, norm=norm, dropout=0.1)
    model = ProgressiveGenerator(cfg)
    if norm == "batch":  # running statistics as training would leave them (not 0 / 1)
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.rand(4, 1, SIZE, SIZE))
    return model.eval()


def _centre_maps(model, x: torch.Tensor) -> tuple[dict, dict]:
    plain = mc_predict_batch(model, x, samples=0)
    padded = mc_predict_batch(model, F.pad(x, (PAD,) * 4, mode="replicate"), samples=0)
    return (
        {k: _centre(v) for k, v in plain.items()},
        {k: _centre(v, PAD) for k, v in padded.items()},
    )


def test_receptive_field_is_smaller_than_the_margin():
    """The premise of the test below: a depth-2 U-Net's receptive field radius (two 3 x 3
    convolutions per level, pooling by 2) is below the 48 px between the centre and the border."""
    model = _model("batch")
    x = torch.zeros(1, 1, SIZE, SIZE, requires_grad=True)
    model(x)[-1].mu[0, 0, SIZE // 2, SIZE // 2].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
    radius = int(max(SIZE // 2 - rows.min(), rows.max() - SIZE // 2))
    assert 0 < radius < SIZE // 2 - CENTRE


def test_batch_norm_prediction_does_not_depend_on_image_extent():
    x = torch.rand(1, 1, SIZE, SIZE)
    plain, padded = _centre_maps(_model("batch"), x)
    for k in ("darkfield", "aleatoric"):
        torch.testing.assert_close(padded[k], plain[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", ["instance", "group"])
def test_per_image_normalization_makes_the_prediction_depend_on_extent(norm):
    x = torch.rand(1, 1, SIZE, SIZE)
    plain, padded = _centre_maps(_model(norm), x)
    rel = (padded["darkfield"] - plain["darkfield"]).abs().max() / plain["darkfield"].abs().max()
    assert rel > 1e-3


def test_shipped_model_lung_d_does_not_depend_on_padding():
    """The shipped model on a sample test image (p0010, healthy, chest filling 57 % of the
    width): 64 px of edge padding around the normalized input moves the mean predicted D over
    the lung mask by less than 2 % (v3, instance norm: +21 % on the median patient)."""
    import numpy as np

    from darkfield_nb import checkpoint
    from darkfield_nb.data import normalize_input
    from darkfield_nb.io import read_image
    from darkfield_nb.labels import LUNG
    from darkfield_nb.paths import pretrained_checkpoint, sample_data_dir

    root = sample_data_dir()
    x = normalize_input(read_image(root / "attenuation" / "p0010.png"))
    lung = (read_image(root / "masks" / "p0010.png").astype(np.int64) & LUNG) > 0
    model = checkpoint.load(pretrained_checkpoint()).eval()
    t = torch.from_numpy(x)[None, None]
    plain = mc_predict_batch(model, t, samples=0)["darkfield"][0, 0].numpy()
    padded = mc_predict_batch(model, F.pad(t, (64,) * 4, mode="replicate"), samples=0)
    padded = padded["darkfield"][0, 0, 64:-64, 64:-64].numpy()
    ratio = padded[lung].mean() / plain[lung].mean()
    assert abs(ratio - 1) < 0.02, ratio
