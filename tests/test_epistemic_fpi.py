"""darkfield_nb.epistemic.fpi: the Foreign Patch Interpolation corruption against hand-computed
cases (values inside / outside the patch, label = a on the patch and 0 elsewhere, a = 0 leaves
the image unchanged, the overlap label of two patches in closed form), seeded determinism, the
network's shape and range, the flip-averaged map against a by-hand average, a tiny training run
whose loss falls, the per-image score against a sort, clear errors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from darkfield_nb.epistemic.fpi import (
    FPIConfig,
    FPINet,
    corrupt_batch,
    fpi_blend,
    fpi_corrupt,
    fpi_image_score,
    fpi_map,
    load_fpi,
    random_patch,
    train_fpi,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_blend_hand_computed_case():
    x = np.full((4, 5), 2.0, np.float32)
    x2 = np.arange(20, dtype=np.float32).reshape(4, 5)
    patch = np.zeros((4, 5), bool)
    patch[1:3, 2:4] = True  # pixels (1,2), (1,3), (2,2), (2,3): x2 = 7, 8, 12, 13
    out, y = fpi_blend(x, x2, patch, 0.25)
    # (1 - 0.25) * 2 + 0.25 * x2
    expected = x.copy()
    expected[1, 2], expected[1, 3], expected[2, 2], expected[2, 3] = 3.25, 3.5, 4.5, 4.75
    np.testing.assert_allclose(out, expected)
    assert np.all(out[~patch] == 2.0)
    np.testing.assert_array_equal(y[patch], 0.25)
    np.testing.assert_array_equal(y[~patch], 0.0)


def test_factor_zero_leaves_image_unchanged_and_one_copies_source():
    rng = np.random.default_rng(3)
    x, x2 = rng.random((16, 16)), rng.random((16, 16))
    patch = random_patch((16, 16), rng, 4, 8)
    out, y = fpi_blend(x, x2, patch, 0.0)
    np.testing.assert_array_equal(out, x.astype(np.float32))
    assert not y.any()
    out, y = fpi_blend(x, x2, patch, 1.0)
    np.testing.assert_array_equal(out[patch], x2.astype(np.float32)[patch])
    np.testing.assert_array_equal(out[~patch], x.astype(np.float32)[~patch])


def test_random_patch_sizes_and_shapes():
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = random_patch((64, 80), rng, 8, 20, ellipse=0.0)
        rows, cols = np.nonzero(m)
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert 8 <= h <= 20 and 8 <= w <= 20
        assert m.sum() == h * w  # a full rectangle
    m = random_patch((64, 64), rng, 31, 31, ellipse=1.0)
    # the ellipse inscribed in a 31 x 31 box: area close to pi * 15.5^2
    assert abs(m.sum() - np.pi * 15.5**2) < 0.05 * np.pi * 15.5**2
    assert m.sum() < 31 * 31


def test_corrupt_label_is_the_interpolation_factor_everywhere():
    """x' = x + y (x2 - x) exactly, also where two patches overlap (y = 1 - (1-a)(1-a2))."""
    rng = np.random.default_rng(7)
    cfg = FPIConfig(patch_min=10, patch_max=40, second_patch=1.0, second_scale=0.8)
    x, x2 = rng.random((48, 48)), rng.random((48, 48)) + 2.0  # x2 - x > 1 everywhere
    overlaps = 0
    for _ in range(40):
        out, y = fpi_corrupt(x, x2, rng, cfg)
        np.testing.assert_allclose(out, x + y * (x2 - x), atol=2e-6)
        assert y.min() >= 0.0 and y.max() <= 1.0
        values = np.unique(y[y > 0])
        overlaps += len(values) == 3  # a1, a2 and 1 - (1 - a1)(1 - a2)
        assert len(values) <= 3
    assert overlaps > 0
    # the corrupted image never leaves the two images' own range
    assert out.min() >= min(x.min(), x2.min()) - 1e-6
    assert out.max() <= max(x.max(), x2.max()) + 1e-6


def test_corrupt_is_deterministic_when_seeded():
    x, x2 = np.random.default_rng(0).random((2, 32, 32))
    a = fpi_corrupt(x, x2, np.random.default_rng(11))
    b = fpi_corrupt(x, x2, np.random.default_rng(11))
    c = fpi_corrupt(x, x2, np.random.default_rng(12))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_corrupt_batch_uses_another_image_and_crops():
    imgs = torch.stack([torch.full((1, 32, 32), float(i)) for i in range(3)])
    cfg = FPIConfig(patch_min=8, patch_max=16, crop=16)
    xb, yb = corrupt_batch(imgs, np.array([0, 1, 2, 0]), np.random.default_rng(0), cfg)
    assert xb.shape == yb.shape == (4, 1, 16, 16)
    for k, i in enumerate([0, 1, 2, 0]):
        inside = yb[k, 0] > 0
        # outside the patch the image itself; inside, a blend toward a *different* constant
        assert torch.all(xb[k, 0][~inside] == i)
        src = (xb[k, 0][inside] - i) / yb[k, 0][inside] + i
        assert torch.allclose(src, src[0].expand_as(src), atol=1e-4) and abs(src[0] - i) > 0.5


def test_network_shape_range_and_flip_average():
    torch.manual_seed(0)
    cfg = FPIConfig(channels=(4, 8, 8))
    net = FPINet(cfg).eval()
    x = torch.rand(3, 1, 37, 50)  # odd sizes: the decoder upsamples to the skip's size
    assert net(x).shape == (3, 1, 37, 50)
    m = fpi_map(net, x, batch=2)
    assert m.shape == (3, 1, 37, 50) and m.dtype == torch.float32
    assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0
    with torch.no_grad():
        ref = (torch.sigmoid(net(x)) + torch.sigmoid(net(x.flip(-1))).flip(-1)) / 2
    torch.testing.assert_close(m, ref)
    # the flip-averaged map is mirror-symmetric in the input
    torch.testing.assert_close(fpi_map(net, x.flip(-1)), m.flip(-1), atol=1e-6, rtol=1e-5)


def test_tiny_training_loss_falls_and_checkpoint_loads(tmp_path):
    g = torch.Generator().manual_seed(0)
    # smooth in-distribution images: a blurred noise field plus a vertical ramp
    base = F.avg_pool2d(torch.rand(12, 1, 40, 40, generator=g), 9, 1, 4)
    imgs = base + torch.linspace(0, 1, 40)[None, None, :, None]
    cfg = FPIConfig(
        channels=(8, 16), patch_min=4, patch_max=16, epochs=8, steps_per_epoch=6,
        batch_size=8, lr=5e-3, seed=1,
    )  # fmt: skip
    net, hist = train_fpi(
        imgs[:10], cfg, holdout=imgs[10:], checkpoint=tmp_path / "f.pt", keep_epochs=True, log=str
    )
    assert len(hist["train"]) == 8 and len(hist["holdout"]) == 8
    assert np.mean(hist["train"][-2:]) < 0.8 * hist["train"][0]
    assert min(hist["holdout"]) < hist["holdout"][0]
    again = load_fpi(tmp_path / "f.pt")  # the lowest-holdout weights, as returned
    torch.testing.assert_close(fpi_map(again, imgs[10:]), fpi_map(net, imgs[10:]))
    # one copy per epoch, each with that epoch's own weights; the last equals the final weights
    assert sorted(p.name for p in tmp_path.glob("f_e*.pt")) == [
        f"f_e{e:02d}.pt" for e in range(1, 9)
    ]
    last = torch.load(tmp_path / "f.pt", weights_only=False)["state_dict"]
    e8 = load_fpi(tmp_path / "f_e08.pt").state_dict()
    for k, v in last.items():
        torch.testing.assert_close(e8[k], v)
    e1 = load_fpi(tmp_path / "f_e01.pt").state_dict()
    assert not torch.equal(e1["head.weight"], e8["head.weight"])
    # seeded: the same run gives the same weights
    net2, _ = train_fpi(imgs[:10], cfg, holdout=imgs[10:], log=str)
    for a, b in zip(net.state_dict().values(), net2.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_image_score_is_top_k_mean_inside_the_body():
    x = np.zeros((20, 20))
    x[5:15, 5:15] = 0.5  # body: a 10 x 10 square
    m = np.random.default_rng(0).random((20, 20))
    m[0, 0] = 5.0  # outside the body: ignored
    ref = np.sort(m[5:15, 5:15].ravel())[-7:].mean()
    assert fpi_image_score(m, x, top_k=7) == pytest.approx(ref)
    assert fpi_image_score(m, x, top_k=1000) == pytest.approx(m[5:15, 5:15].mean())


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="2-D arrays of one shape"):
        fpi_blend(np.zeros((4, 4)), np.zeros((4, 5)), np.zeros((4, 4), bool), 0.5)
    with pytest.raises(ValueError, match="outside"):
        fpi_blend(np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((4, 4), bool), 1.5)
    with pytest.raises(ValueError, match="two 2-D images"):
        fpi_corrupt(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        FPINet(FPIConfig(channels=(4, 8)))(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        fpi_map(FPINet(FPIConfig(channels=(4, 8))), torch.zeros(8, 8))
    with pytest.raises(ValueError, match="N >= 2"):
        train_fpi(torch.zeros(1, 1, 8, 8), FPIConfig(channels=(4, 8)))
    with pytest.raises(ValueError, match="patch_min <= patch_max"):
        FPIConfig(patch_min=20, patch_max=10)
    with pytest.raises(ValueError, match="differ in shape"):
        fpi_image_score(np.zeros((4, 4)), np.zeros((5, 5)))
    bad = tmp_path / "bad.pt"
    torch.save({"weights": 1}, bad)
    with pytest.raises(ValueError, match="bad.pt: not an FPI checkpoint"):
        load_fpi(bad)
