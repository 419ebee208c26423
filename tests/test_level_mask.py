"""The lung-mask network of the lung level (``darkfield_nb.level.lung_mask``) and what uses it:
``LungLevel.lung_field`` / ``factors`` with a mask network, the ``"lung_mask"`` sub-entry of the
checkpoint entry (version 2) and its digest, ``fit_lung_level(..., keep_members=True)`` and
``darkfield-nb fit-level --keep-members / --no-mask``, and synthesize / predict end to end.

References: scikit-learn's ``f1_score`` (binary Dice), hand-computed Dice values, toy images of
bright ellipses whose masks are known, sigmoid and flips computed here with torch, a network
whose logits are a known function of its input (10 (x - 1/2)), scipy.ndimage.zoom (bilinear,
half-pixel grid) and the 0.75 / 0.25 weights derived by hand at a block's edges, NumPy's masked
mean for g, float16-rounded copies of the weights, the digest the shipped checkpoint's
recalibration recorded before version 2 existed, and the same model's maps without the level.
"""

from __future__ import annotations

import copy
import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import constant_level_net, toy_generator, write_toy_chest_set
from scipy import ndimage
from sklearn.metrics import f1_score

from darkfield_nb import calibration as cal
from darkfield_nb import checkpoint
from darkfield_nb.cli import main
from darkfield_nb.data import PairedDataset
from darkfield_nb.inference import load_model
from darkfield_nb.inference.outputs import MAPS
from darkfield_nb.io import read_image
from darkfield_nb.level import LevelConfig, LungLevel
from darkfield_nb.level.lung_mask import (
    LungMaskConfig,
    LungMaskNet,
    dice,
    predict_lung_probability,
    train_lung_mask_net,
)
from darkfield_nb.level.store import (
    entry_from_level,
    fit_lung_level,
    level_digest,
    level_from_entry,
    level_of,
    stored_level,
    write_level_checkpoint,
)
from darkfield_nb.synthesis import synthesize

SIZE = 32
GEOMETRY = {"size": [SIZE, SIZE], "pixel_mm": 10.0}
SMALL = LevelConfig(channels=(8, 16, 16), hidden=8, dropout=0.0)
L = 0.55  # two constant members: mean(0.3 + 0.1 * 1.0, 0.5 + 0.2 * 1.0), exact in float16
S5 = 1 / (1 + np.exp(-5.0))  # sigmoid(5): P(lung) inside the blocks of _Ramp's inputs below
FITTED_ON = {"data": ["toy"], "splits": ["train"], "n_images": 0, "holdout_spearman": []}

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread


class _Ramp(torch.nn.Module):
    """Logits 10 (x - 1/2): P(lung) = sigmoid(10 (x - 1/2)), its own mirror image's mirror."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10 * (x - 0.5)


def _const_level(**kw) -> LungLevel:
    members = [constant_level_net(1.0, SMALL) for _ in range(2)]
    return LungLevel(members, [0.3, 0.5], [0.1, 0.2], input_shape=(SIZE, SIZE), **kw)


def _random_mask_net(seed: int, channels=(4, 8, 16)) -> LungMaskNet:
    """A seeded LungMaskNet with BatchNorm running statistics away from 0 / 1 and a 50-fold
    head weight, eval mode."""
    torch.manual_seed(seed)
    net = LungMaskNet(LungMaskConfig(channels=channels))
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.2)
        net.head.weight.mul_(50)  # probabilities that differ visibly between pixels
    return net.eval()


def _everywhere_net(bias: float = 5.0) -> LungMaskNet:
    """Zero convolution weights and a head bias: logit ``bias`` at every pixel."""
    net = LungMaskNet(LungMaskConfig(channels=(4, 8)))
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.Conv2d):
                mod.weight.zero_()
        net.head.bias.fill_(bias)
    return net.eval()


def _ellipses(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """32 px images of N(0, 0.3) noise plus 1 inside one or two ellipses at random positions
    (semi-axes 3-7 px); the mask is the ellipses."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE] + 0.5
    x = rng.normal(0, 0.3, (n, SIZE, SIZE)).astype(np.float32)
    m = np.zeros((n, SIZE, SIZE), bool)
    for i in range(n):
        for _ in range(rng.integers(1, 3)):
            cy, cx = rng.uniform(8, SIZE - 8, 2)
            ry, rx = rng.uniform(3, 7, 2)
            m[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    x[m] += 1.0
    return x, m


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A toy generator with a positive mean (head bias +0.4) at 32 px, the same with a
    constant-member lung level without a mask network, and a 30-image chest set."""
    root = tmp_path_factory.mktemp("mask")
    data = write_toy_chest_set(root / "data", ["train"] * 24 + ["val"] * 6, seed=3)
    model = toy_generator()
    with torch.no_grad():
        model.stages[-1].head_mu.bias.fill_(0.4)
    base = checkpoint.save_trained(root / "base.pt", model, stage=1, epoch=1, geometry=GEOMETRY)
    entry = entry_from_level(_const_level(factor_range=(0.25, 4.0)), FITTED_ON, SMALL)
    level = write_level_checkpoint(base, root / "level.pt", entry)
    return {"root": root, "data": data, "base": base, "level": level, "entry": entry}


# ----------------------------------------------------------------------------- 1. Dice
def test_dice_is_the_binary_f1_score():
    """Dice = 2|P n T| / (|P| + |T|) = F1 of the pixels (scikit-learn), per image; 1 where both
    masks are empty; and a hand-computed pair."""
    rng = np.random.default_rng(0)
    pred = rng.random((6, 9, 11)) < np.linspace(0.1, 0.7, 6)[:, None, None]
    truth = rng.random((6, 9, 11)) < 0.4
    got = dice(pred, truth)
    want = [f1_score(t.ravel(), p.ravel()) for p, t in zip(pred, truth, strict=True)]
    assert got.shape == (6,)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    empty = np.zeros((2, 4, 4), bool)
    np.testing.assert_array_equal(dice(empty, empty), [1.0, 1.0])
    one = empty.copy()
    one[1, 0, 0] = True
    np.testing.assert_array_equal(dice(one, empty), [1.0, 0.0])  # one side empty: 0
    # by hand: image 0, P 4 px, T 6 px, 3 shared: 6 / 10; image 1, P 2 px, T 0 px: 0
    p, t = np.zeros((2, 3, 4), bool), np.zeros((2, 3, 4), bool)
    p[0, 0, :4] = True
    t[0, 0, 1:4], t[0, 1, :3] = True, True
    p[1, 2, 2:4] = True
    np.testing.assert_allclose(dice(p, t), [0.6, 0.0], rtol=1e-12)
    np.testing.assert_allclose(dice(p[0], t[0]), 0.6, rtol=1e-12)  # one (H, W) image


# ----------------------------------------------------------------------------- 2. training
def test_mask_net_learns_ellipses_deterministically():
    """150 ellipse images, (4, 8, 16) channels, 6 epochs: Dice > 0.85 on the holdout (info,
    and recomputed here on the seeded holdout, which shows the best epoch was kept) and on a
    fresh set; the same seed gives bit-identical weights; bad shapes are ValueErrors."""
    x, m = _ellipses(150, seed=0)
    test_x, test_m = _ellipses(40, seed=1)
    cfg = LungMaskConfig(
        channels=(4, 8, 16), lr=1e-2, batch_size=16, max_epochs=6, min_epochs=6,
        holdout_fraction=0.1, seed=0,
    )  # fmt: skip
    net, info = train_lung_mask_net(x, m, cfg, device="cpu", progress=False)
    assert info["n_holdout"] == 15 and info["n_fit"] == 135 and len(info["history"]) == 6
    assert info["best_holdout_dice"] > 0.85
    assert info["best_holdout_dice"] == max(h["holdout_dice"] for h in info["history"])
    hold = np.random.default_rng(0).permutation(150)[:15]
    p_hold = predict_lung_probability(net, x[hold][:, None])
    assert float(dice(p_hold > 0.5, m[hold]).mean()) == pytest.approx(info["best_holdout_dice"])
    p_test = predict_lung_probability(net, test_x[:, None])
    assert float(dice(p_test > 0.5, test_m).mean()) > 0.85
    assert not net.training and next(net.parameters()).device.type == "cpu"

    again, info2 = train_lung_mask_net(x, m, cfg, device="cpu", progress=False)
    for (k, a), (_, b) in zip(net.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert [h["loss"] for h in info2["history"]] == [h["loss"] for h in info["history"]]
    seed1 = LungMaskConfig(**{**vars(cfg), "seed": 1})
    other, _ = train_lung_mask_net(x, m, seed1, device="cpu", progress=False)
    assert not torch.equal(other.head.weight, net.head.weight)  # the seed matters

    with pytest.raises(ValueError, match=r"input \(30, 32\) is not divisible by 4"):
        net(torch.zeros(1, 1, 30, SIZE))
    with pytest.raises(ValueError, match=r"input \(32, 36\) is not divisible by 8"):
        LungMaskNet(LungMaskConfig(channels=(2, 2, 2, 2)))(torch.zeros(1, 1, SIZE, 36))
    with pytest.raises(ValueError, match=r"inputs \(150, 32, 32\) and masks \(150, 32, 31\)"):
        train_lung_mask_net(x, m[..., :31], cfg, progress=False)
    with pytest.raises(ValueError, match="must both be"):
        train_lung_mask_net(x[:, None], m[:, None], cfg, progress=False)
    with pytest.raises(ValueError, match="too few for a holdout"):
        train_lung_mask_net(x[:10], m[:10], cfg, progress=False)


# ----------------------------------------------------------------------------- 3. flip average
def test_predict_lung_probability_is_the_flip_average():
    """P = (sigmoid(q(x)) + flip(sigmoid(q(flip x)))) / 2, computed here with torch, for a
    seeded network on left-right asymmetric inputs; in [0, 1]; the batch size does not
    matter; a training-mode network is put in eval mode."""
    net = _random_mask_net(3)
    rng = np.random.default_rng(2)
    ramp = np.linspace(-2, 2, SIZE, dtype=np.float32)
    x = (rng.normal(0, 1, (5, 1, SIZE, SIZE)) + ramp).astype(np.float32)
    with torch.no_grad():
        t = torch.from_numpy(x)
        net.head.bias -= net(t).median()  # logits about 0: probabilities across (0, 1)
        plain = torch.sigmoid(net(t))
        mirrored = torch.sigmoid(net(t.flip(-1))).flip(-1)
    want = ((plain + mirrored) / 2)[:, 0].numpy()
    assert (plain - mirrored).abs().max() > 1e-2  # the mirror matters for these inputs
    net.train()
    got = predict_lung_probability(net, x, batch=2)
    assert not net.training
    assert got.dtype == np.float32 and got.shape == (5, SIZE, SIZE)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    whole = predict_lung_probability(net, torch.from_numpy(x))  # one batch of 5
    np.testing.assert_allclose(whole, got, rtol=1e-6, atol=1e-7)
    assert got.min() >= 0 and got.max() <= 1 and np.ptp(got) > 0.2
    extreme = predict_lung_probability(_Ramp(), np.linspace(-100, 100, 64).reshape(1, 1, 8, 8))
    assert extreme.min() == 0.0 and extreme.max() == 1.0  # saturated, still in [0, 1]
    assert predict_lung_probability(net, x[:0]).shape == (0, SIZE, SIZE)


# ----------------------------------------------------------------------------- 4. the field
def _blocks64() -> tuple[np.ndarray, np.ndarray]:
    """Inputs (3, 1, 64, 64): 1 on a block with even edges [2a, 2b) x [2c, 2d), 0 elsewhere; the
    blocks as booleans (3, 64, 64)."""
    x = np.zeros((3, 1, 64, 64), np.float32)
    for i, (r0, r1, c0, c1) in enumerate([(8, 40, 12, 36), (20, 50, 6, 30), (2, 62, 30, 60)]):
        x[i, 0, r0:r1, c0:c1] = 1.0
    return x, x[:, 0] > 0


def test_lung_field_of_a_known_mask_network():
    """With q = 10 (x - 1/2), inputs at 2 x the level's 32 px: area resampling gives the block
    [a, b) at 32 px exactly, P = sigmoid(+-5) there, and bilinear resampling back
    (align_corners=False, scale 2) weights the two nearest pixels 0.75 / 0.25, so the pixel at
    2a gets 0.75 s(5) + 0.25 s(-5) = 0.75 > 1/2 and the one at 2a - 1 gets 0.25: F is the block
    [2a, 2b) exactly. g = clip(L / mean of mu over the block) (NumPy); without a mask network F
    is {mu > t}."""
    x, block = _blocks64()
    # a_min 0: the field is the mask network's whatever mu says (the guard has its own test)
    level = _const_level(mask_net=_Ramp(), factor_range=(0.25, 4.0), min_field_agreement=0.0)
    p = level.lung_probability(x, (64, 64))
    small = np.where(x[:, 0].reshape(3, 32, 2, 32, 2).mean(axis=(2, 4)) > 0, S5, 1 - S5)
    ref = np.stack([ndimage.zoom(s, 2, order=1, grid_mode=True, mode="nearest") for s in small])
    np.testing.assert_allclose(p, ref, rtol=1e-5, atol=1e-6)  # scipy's half-pixel bilinear
    edge_in, edge_out = 0.75 * S5 + 0.25 * (1 - S5), 0.25 * S5 + 0.75 * (1 - S5)
    assert p[0, 8, 20] == pytest.approx(edge_in, rel=1e-5)  # row 2a = 8, inside
    assert p[0, 7, 20] == pytest.approx(edge_out, rel=1e-5)  # row 2a - 1, outside
    assert p[0, 39, 20] == pytest.approx(edge_in, rel=1e-5)  # row 2b - 1 = 39
    assert p[0, 40, 20] == pytest.approx(edge_out, rel=1e-5)
    corner = 0.75 * 0.75 * S5 + (1 - 0.75 * 0.75) * (1 - S5)  # one of four source pixels in
    assert p[0, 8, 12] == pytest.approx(corner, rel=1e-5) and corner > 0.5
    assert p[0, 20, 20] == pytest.approx(S5, rel=1e-6)

    rng = np.random.default_rng(7)
    mu = rng.uniform(0.02, 0.6, (3, 64, 64))
    mu[2][block[2]] = rng.uniform(0.05, 0.15, block[2].sum())  # g = 5.5 -> clipped to 4
    field = level.lung_field(x, mu)
    np.testing.assert_array_equal(field, block)
    want = np.array([np.clip(L / mu[i][block[i]].mean(), 0.25, 4.0) for i in range(3)])
    lung, g = level.factors(x, mu)
    np.testing.assert_allclose(lung, L, rtol=1e-12)
    np.testing.assert_allclose(g, want, rtol=1e-12)
    assert g[2] == 4.0 and 0.25 < g[0] < 4.0
    plain = level.factors_of(lung, mu)  # the old field {mu > 0.1}
    assert np.abs(plain[:2] - g[:2]).min() > 0.05  # the test can tell the two fields apart
    np.testing.assert_array_equal(level.lung_field(x[1, 0], mu[1]), block[1:2])  # one image

    # at the level's own size: no resampling, F = {x > 1/2}
    x32 = rng.uniform(0, 1, (2, 1, SIZE, SIZE)).astype(np.float32)
    x32[np.abs(x32 - 0.5) < 1e-3] = 0.7
    np.testing.assert_array_equal(level.lung_field(x32, mu[:2, :SIZE, :SIZE]), x32[:, 0] > 0.5)
    # a higher threshold on P shrinks F to {x > 1/2 + ln(0.9 / 0.1) / 10}
    strict = _const_level(mask_net=_Ramp(), mask_threshold=0.9, min_field_agreement=0.0)
    cut = 0.5 + np.log(9.0) / 10
    x32[np.abs(x32 - cut) < 1e-3] = 0.95
    np.testing.assert_array_equal(strict.lung_field(x32, mu[:2, :SIZE, :SIZE]), x32[:, 0] > cut)

    bare = _const_level(factor_range=(0.25, 4.0), field_threshold=0.3)
    np.testing.assert_array_equal(bare.lung_field(x, mu), mu > 0.3)
    lung_b, g_b = bare.factors(x, mu)
    want_b = np.array([np.clip(L / m[m > 0.3].mean(), 0.25, 4.0) for m in mu])
    np.testing.assert_allclose(g_b, want_b, rtol=1e-12)
    with pytest.raises(ValueError, match="has no lung-mask network"):
        bare.lung_probability(x, (64, 64))
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match=f"mask_threshold={bad}: need 0 < p < 1"):
            _const_level(mask_threshold=bad)


def test_mask_field_is_dropped_where_it_disagrees_with_the_generator():
    """F = the mask network's field where its Dice with {mu > t} reaches a_min, else empty (so
    g = 1): image 0 agrees exactly (Dice 1), image 1 not at all (Dice 0), image 2 partly; the
    Dice of image 2 is scikit-learn's F1 of the two fields, and a_min just above / below it
    drops / keeps that image's field."""
    x, block = _blocks64()
    mu = np.full((3, 64, 64), 0.05)
    mu[0][block[0]] = 0.3  # {mu > 0.1} is the block
    mu[1][~block[1]] = 0.3  # {mu > 0.1} is everything but the block
    rows = np.zeros((64, 64), bool)
    rows[2:40, 30:60] = True  # overlaps the block [2, 62) x [30, 60) in part
    mu[2][rows] = 0.3
    d2 = f1_score(block[2].ravel(), rows.ravel())
    assert 0.3 < d2 < 0.9
    for a_min, keep2 in ((d2 - 1e-6, True), (d2 + 1e-6, False)):
        level = _const_level(mask_net=_Ramp(), factor_range=(0.25, 4.0), min_field_agreement=a_min)
        field = level.lung_field(x, mu)
        np.testing.assert_array_equal(field[0], block[0])
        assert not field[1].any()
        np.testing.assert_array_equal(field[2], block[2] if keep2 else np.zeros_like(rows))
        _, g = level.factors(x, mu)
        assert g[0] == pytest.approx(np.clip(L / 0.3, 0.25, 4.0), rel=1e-12)
        assert g[1] == 1.0  # an empty field: the level is not applied
        want2 = np.clip(L / mu[2][block[2]].mean(), 0.25, 4.0) if keep2 else 1.0
        assert g[2] == pytest.approx(want2, rel=1e-12)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="min_field_agreement=.*need 0 <= a <= 1"):
            _const_level(min_field_agreement=bad)


def test_factors_with_a_mask_network_name_a_batch_mismatch():
    """As without a mask network (test_level.py), 2 inputs and 5 means say so; with one, the
    field of the 2 inputs reaches field_means first and NumPy's reshape error comes out."""
    level = _const_level(mask_net=_Ramp())
    x = np.random.default_rng(0).random((5, 1, SIZE, SIZE), np.float32)
    mu = np.full((5, SIZE, SIZE), 0.3)
    with pytest.raises(ValueError, match="2 inputs but 5 means"):
        level.factors(x[:2], mu)


def test_field_means_refuses_a_field_of_another_shape():
    """A (1, 32, 32) field for (1, 16, 64) means has as many pixels, and is reshaped into a
    different set of pixels instead of refused."""
    level = _const_level()
    mu = np.full((1, 16, 64), 0.3) + np.arange(64) / 100
    field = np.zeros((1, SIZE, SIZE), bool)
    field[:, :, :16] = True  # the left half at 32 x 32
    with pytest.raises(ValueError, match=r"\(1, 32, 32\).*\(1, 16, 64\)"):
        level.field_means(mu, field)


# ----------------------------------------------------------------------------- 5. entry
def _half_copy(net: LungMaskNet) -> LungMaskNet:
    ref = copy.deepcopy(net)
    ref.load_state_dict(
        {k: v.half().float() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    )
    return ref.eval()


def _mask_entry() -> tuple[LungLevel, dict]:
    level = _const_level(mask_net=_random_mask_net(5), mask_threshold=0.4, min_field_agreement=0.0)
    level.info = {"mask": {"data": ["toy"], "n_images": 7, "holdout_dice": 0.91}}
    return level, entry_from_level(level, FITTED_ON, SMALL)


def test_entry_with_a_mask_network_round_trips():
    """LungLevel -> entry -> torch.save / torch.load(weights_only=True) -> LungLevel: P(lung) of
    the float16-rounded original network, the threshold, the record; the digest follows the
    mask weights and threshold and, without "lung_mask", is the entry's old digest."""
    level, entry = _mask_entry()
    assert entry["version"] == 2 and entry["lung_mask"]["threshold"] == 0.4
    assert entry["lung_mask"]["min_agreement"] == 0.0
    assert entry["lung_mask"]["config"]["channels"] == [4, 8, 16]
    assert all(
        v.dtype == (torch.float16 if v.is_floating_point() else torch.int64)
        for v in entry["lung_mask"]["state"].values()
    )
    buf = io.BytesIO()
    torch.save({"lung_level": entry}, buf)
    buf.seek(0)
    back = level_of(torch.load(buf, weights_only=True), "buf")
    loaded = level_from_entry(back, "x.pt")
    assert loaded.digest == level_digest(entry) == level_digest(back) is not None
    assert loaded.mask_threshold == 0.4 and isinstance(loaded.mask_net, LungMaskNet)
    assert loaded.min_field_agreement == 0.0
    assert loaded.info == {**FITTED_ON, "mask": level.info["mask"]}
    assert not loaded.mask_net.training
    rng = np.random.default_rng(4)
    x = (rng.normal(0, 1, (3, 1, 64, 64)) + np.linspace(-1, 1, 64)).astype(np.float32)
    got = loaded.lung_probability(x, (64, 64))
    ref = _const_level(mask_net=_half_copy(level.mask_net))
    np.testing.assert_allclose(got, ref.lung_probability(x, (64, 64)), rtol=1e-6, atol=1e-7)
    orig = level.lung_probability(x, (64, 64))
    assert np.abs(got - orig).max() < 5e-3  # float16 weights
    other = _const_level(mask_net=_random_mask_net(6)).lung_probability(x, (64, 64))
    assert np.abs(orig - other).max() > 0.1  # another network is far away
    mu = rng.uniform(0.05, 0.5, (3, 64, 64))
    np.testing.assert_array_equal(loaded.lung_field(x, mu), got > 0.4)

    base = level_digest(entry)
    nudged = copy.deepcopy(entry)
    nudged["lung_mask"]["state"]["head.bias"] += 0.5
    assert level_digest(nudged) != base
    one_weight = copy.deepcopy(entry)
    w = one_weight["lung_mask"]["state"]["down.0.0.weight"]
    w.view(-1)[0] = w.view(-1)[0] + 0.25
    assert level_digest(one_weight) != base
    thresh = copy.deepcopy(entry)
    thresh["lung_mask"]["threshold"] = 0.45
    assert level_digest(thresh) != base
    agree = copy.deepcopy(entry)
    agree["lung_mask"]["min_agreement"] = 0.5
    assert level_digest(agree) != base
    without = entry_from_level(_const_level(), FITTED_ON, SMALL)  # no mask network
    before = level_digest(without)
    added = {**copy.deepcopy(without), "lung_mask": copy.deepcopy(entry["lung_mask"])}
    assert level_digest(added) != before
    added.pop("lung_mask")
    assert level_digest(added) == before
    same = copy.deepcopy(entry)
    same.pop("lung_mask")
    assert level_digest(same) == before  # the members and numbers alone


def test_a_version_1_entry_keeps_its_digest():
    """The shipped checkpoint's level is session 22's four networks plus a mask network: with
    the mask network taken out (a version-1 entry), its digest is the one session 22's
    recalibration recorded before version 2 existed, and it loads without a mask network; as
    shipped, the recalibration records the digest of the whole entry and the level loads with
    its mask network."""
    path = Path(__file__).parents[1] / "data_samples" / "pretrained.pt"
    ckpt = torch.load(path, weights_only=True, map_location="cpu")
    entry = ckpt["lung_level"]
    assert entry["version"] == 2 and "lung_mask" in entry
    old = {k: v for k, v in entry.items() if k != "lung_mask"} | {"version": 1}
    assert level_digest(old) == "5e3c733e54c8d93c"  # session 22's shipped level
    assert level_from_entry(old, "old.pt").mask_net is None
    recorded = ckpt["recalibration"]["lung_level"]["digest"]
    assert level_digest(entry) == recorded != "5e3c733e54c8d93c"
    level = stored_level(ckpt, ckpt["recalibration"], "pretrained.pt")
    assert isinstance(level.mask_net, LungMaskNet) and level.digest == recorded
    assert level.min_field_agreement == 0.5 and level.mask_threshold == 0.5


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda m: m.pop("state"), "'lung_level' entry's lung_mask must be a dict with"),
        (lambda m: m.pop("threshold"), "'lung_level' entry's lung_mask must be a dict with"),
        (lambda m: m.pop("min_agreement"), "'lung_level' entry's lung_mask must be a dict with"),
        (lambda m: m.pop("fitted_on"), "'lung_level' entry's lung_mask must be a dict with"),
        (lambda m: m.update(threshold=0.0), "lung_mask threshold 0.0: need a number 0 < p < 1"),
        (lambda m: m.update(threshold=1.0), "lung_mask threshold 1.0: need a number 0 < p < 1"),
        (lambda m: m.update(threshold=None), "lung_mask threshold None: need a number"),
        (lambda m: m["config"].update(channels=[4, 8]), "the lung-mask network does not fit"),
        (lambda m: m["state"].pop("head.bias"), "the lung-mask network does not fit"),
        (lambda m: m["state"].update(extra=torch.zeros(2)), "the lung-mask network does not fit"),
        (lambda m: m["config"].update(newer_field=1), "lung_mask config: .*newer_field"),
        (lambda m: m["config"].update(channels=[4]), "lung_mask config: .*channels"),
    ],
)
def test_malformed_mask_entries_are_refused_by_name(setup, tmp_path, change, words):
    _, entry = _mask_entry()
    change(entry["lung_mask"])
    with pytest.raises(ValueError, match=f"x.pt: .*{words}"):
        level_from_entry(entry, "x.pt")
    dst = tmp_path / "bad.pt"
    with pytest.raises(ValueError, match=f"bad.pt: .*{words}"):
        write_level_checkpoint(setup["base"], dst, entry)
    assert not dst.exists()


def test_a_lung_mask_that_is_not_a_dict_is_refused(setup, tmp_path):
    _, entry = _mask_entry()
    entry["lung_mask"] = [1, 2]
    with pytest.raises(ValueError, match="x.pt: 'lung_level' entry's lung_mask must be a dict"):
        level_from_entry(entry, "x.pt")


# ----------------------------------------------------------------------------- 6. fit / CLI
def test_fit_lung_level_keep_members_trains_only_the_mask(setup, tmp_path):
    """The member weights and numbers are the source's bit for bit, a "lung_mask" appears with
    its holdout Dice, the digest changes; keep_members needs a level and a mask."""
    mcfg = LungMaskConfig(channels=(4, 8), batch_size=8, max_epochs=2, min_epochs=1, seed=0)
    kw = dict(mask_config=mcfg, device="cpu", progress=False)
    out, entry = fit_lung_level(
        setup["level"], [setup["data"]], tmp_path / "kept.pt", keep_members=True, **kw
    )
    src = level_of(torch.load(setup["level"], weights_only=True))
    got = level_of(torch.load(out, weights_only=True))
    assert len(got["members"]) == len(src["members"]) == 2
    for a, b in zip(src["members"], got["members"], strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    kept = ("target_mean", "target_sd", "input_shape", "field_threshold", "factor_range")
    for k in (*kept, "min_field_pixels", "fitted_on", "config"):
        assert got[k] == src[k], k
    mask = got["lung_mask"]
    assert mask["fitted_on"]["n_images"] == 30 and mask["fitted_on"]["splits"] == ["train", "val"]
    assert 0.0 <= mask["fitted_on"]["holdout_dice"] <= 1.0
    assert mask["fitted_on"]["holdout_dice"] == entry["lung_mask"]["fitted_on"]["holdout_dice"]
    assert mask["config"]["channels"] == [4, 8] and mask["threshold"] == 0.5
    assert level_digest(got) == level_digest(entry) != level_digest(src)
    loaded = load_model(out)  # no recalibration in the source: accepted as it is
    assert isinstance(loaded.level.mask_net, LungMaskNet)

    with pytest.raises(ValueError, match=f"{setup['base']}: carries no lung level"):
        fit_lung_level(setup["base"], [setup["data"]], tmp_path / "y.pt", keep_members=True, **kw)
    with pytest.raises(ValueError, match="keep_members without mask"):
        fit_lung_level(
            setup["level"], [setup["data"]], tmp_path / "z.pt", keep_members=True, mask=False, **kw
        )
    assert not (tmp_path / "y.pt").exists() and not (tmp_path / "z.pt").exists()


def test_cli_fit_level_mask_options(setup, tmp_path, capsys):
    """--keep-members prints the mask network's holdout Dice (the stored one); --no-mask writes
    an entry without "lung_mask" and says so; the two together are refused."""
    common = ["--data", str(setup["data"]), "--device", "cpu", "--quiet"]
    kept = tmp_path / "kept.pt"
    args = ["fit-level", "--checkpoint", str(setup["level"]), "--out", str(kept), *common]
    assert main([*args, "--keep-members", "--mask-epochs", "1"]) == 0
    text = capsys.readouterr().out
    entry = level_of(checkpoint.load_checkpoint(kept))
    dice_value = entry["lung_mask"]["fitted_on"]["holdout_dice"]
    assert f"lung-mask network: holdout Dice {dice_value:.4f}" in text
    assert "kept 2 lung-level network(s) on 0 images" in text  # the source's record
    assert len(entry["lung_mask"]["config"]["channels"]) == 4  # the default network

    bare = tmp_path / "bare.pt"
    args = ["fit-level", "--checkpoint", str(setup["base"]), "--out", str(bare), *common]
    assert main([*args, "--no-mask", "--members", "1", "--max-epochs", "1"]) == 0
    text = capsys.readouterr().out
    assert "no lung-mask network (field: mean > 0.1)" in text and "holdout Dice" not in text
    entry = level_of(checkpoint.load_checkpoint(bare))
    assert "lung_mask" not in entry and len(entry["members"]) == 1
    assert load_model(bare).level.mask_net is None

    both = tmp_path / "both.pt"
    args = ["fit-level", "--checkpoint", str(setup["level"]), "--out", str(both), *common]
    assert main([*args, "--keep-members", "--no-mask"]) == 2
    assert "keep_members without mask" in capsys.readouterr().err
    assert not both.exists()


# ----------------------------------------------------------------------------- 7. end to end
@pytest.fixture(scope="module")
def everywhere(setup):
    """The base model's checkpoint with a constant-member level (L = 0.55) whose mask network
    says P(lung) = sigmoid(5) at every pixel (F = the whole image) and a field threshold of
    0.45, so that the old field {mu > t} would be a part of the image."""
    level = _const_level(
        mask_net=_everywhere_net(), factor_range=(0.25, 4.0), field_threshold=0.45,
        min_field_agreement=0.0,
    )  # fmt: skip
    entry = entry_from_level(level, FITTED_ON, SMALL)
    path = write_level_checkpoint(setup["base"], setup["root"] / "everywhere.pt", entry)
    return {"path": path, "entry": entry}


def _whole_g(d: np.ndarray) -> float:
    return float(np.clip(L / np.float64(d).mean(), 0.25, 4.0))


def test_synthesize_with_a_mask_network(setup, everywhere):
    """synthesize's maps with the level are g times the same model's without it, g = L / mean
    of the unlevelled D over the whole image (the mask network's field), not over {D > t}."""
    plain_model = load_model(setup["base"]).model
    loaded = load_model(everywhere["path"])
    assert loaded.level.mask_net is not None and loaded.recalibration is None
    image = np.random.default_rng(6).uniform(20000, 40000, (SIZE, SIZE)).astype(np.float32)
    kw = dict(samples=2, seed=1, resample=False, device="cpu")
    plain = synthesize(plain_model, image, **kw)
    scaled = synthesize(loaded.model, image, **kw)
    d = np.float64(plain.darkfield)
    g = _whole_g(d)
    old = float(np.clip(L / d[d > 0.45].mean(), 0.25, 4.0))
    assert 0.02 < (d > 0.45).mean() < 0.98 and abs(g - old) > 0.02  # the fields differ
    assert abs(g - 1) > 0.1
    assert scaled.lung_level == pytest.approx(L, rel=1e-12)
    assert scaled.level_factor == pytest.approx(g, rel=1e-6)
    assert plain.lung_field is None and scaled.lung_field.shape == image.shape
    assert scaled.lung_field.all()  # F = the whole image
    big = synthesize(
        loaded.model, np.kron(image, np.ones((2, 2), np.float32)), **{**kw, "resample": True}
    )
    assert not big.plan.identity  # predicted at 32 px, the field resampled back to 64
    assert big.lung_field.shape == (2 * SIZE, 2 * SIZE) and big.lung_field.all()
    for k in MAPS:
        want = g * np.float64(getattr(plain, k))
        np.testing.assert_allclose(getattr(scaled, k), want, rtol=2e-6, atol=1e-9, err_msg=k)


def test_predict_with_a_mask_network(setup, everywhere, tmp_path):
    """predict (level_items): the summary's level_factor and every written map use g over the
    mask network's field, the whole image, of the same model's maps without the level."""
    src = setup["data"] / "attenuation"

    def run(ckpt, out):
        args = ["predict", str(src), "--out", str(out), "--checkpoint", str(ckpt)]
        opts = ["--samples", "2", "--device", "cpu", "--workers", "0", "--resample", "off"]
        assert main([*args, *opts, "--quiet"]) == 0
        with open(out / "summary.csv", newline="") as fh:
            return {r["id"]: r for r in csv.DictReader(fh)}

    plain, level = (
        run(setup["base"], tmp_path / "plain"),
        run(everywhere["path"], tmp_path / "level"),
    )
    assert len(level) == 30 and set(level) == set(plain)
    for stem in sorted(level)[:6]:
        row = level[stem]
        d = read_image(tmp_path / "plain" / "darkfield" / f"{stem}.tif").astype(np.float64)
        g = _whole_g(d)
        assert float(row["lung_level"]) == pytest.approx(L, rel=1e-9)
        assert float(row["level_factor"]) == pytest.approx(g, rel=1e-6)
        for name in MAPS:
            a = read_image(tmp_path / "plain" / name / f"{stem}.tif").astype(np.float64)
            b = read_image(tmp_path / "level" / name / f"{stem}.tif")
            np.testing.assert_allclose(b, g * a, rtol=2e-6, atol=1e-9, err_msg=name)


def test_recalibration_fitted_with_a_mask_network(setup, everywhere):
    """calibrate fits on top of the same g as inference: L / mean of each validation image's
    MC mean over the mask network's field (the whole image), from collect_predictions (NumPy);
    the entry records that level's digest."""
    model = load_model(setup["base"]).model
    kw = dict(samples=2, stage=1, device="cpu", progress=False, min_pixels=50)
    recal = cal.fit_recalibration(model, setup["data"], level_entry=everywhere["entry"], **kw)
    preds = cal.collect_predictions(
        model, PairedDataset(setup["data"], split="val", pad_multiple=1), samples=2, seed=0,
        stage=1, progress=False,
    )  # fmt: skip
    g = np.array([_whole_g(m) for m in preds.mu])
    old = np.array([np.clip(L / np.float64(m)[m > 0.45].mean(), 0.25, 4.0) for m in preds.mu])
    assert np.abs(g - old).min() > 0.02  # the old field would give other factors
    rec = recal["lung_level"]
    assert rec["digest"] == level_digest(everywhere["entry"])
    assert rec["factor_min"] == pytest.approx(g.min(), rel=1e-6)
    assert rec["factor_max"] == pytest.approx(g.max(), rel=1e-6)


def test_level_warning_says_why_a_level_was_dropped_or_clipped():
    """The message for a field disagreement names both Dice figures; g at either bound of the
    factor range says clipped; otherwise (or without a mask network's agreement) nothing."""
    level = _const_level(mask_net=_Ramp(), factor_range=(0.5, 2.0), min_field_agreement=0.5)
    said = level.level_warning(1.0, 0.22)
    assert "lung level not applied (g = 1)" in said and "Dice 0.22 < 0.5" in said
    assert "clipped: g = 2" in level.level_warning(2.0, 0.9)
    assert "clipped: g = 0.5" in level.level_warning(0.5, None)
    assert level.level_warning(1.3, 0.9) is None and level.level_warning(0.7, None) is None


@pytest.fixture(scope="module")
def disagreeing(setup):
    """The everywhere level (F = the whole image) with a_min 0.99 and t 0.45: the whole image
    and {mu > 0.45} never agree that well, so the guard drops every image's field."""
    level = _const_level(
        mask_net=_everywhere_net(), factor_range=(0.25, 4.0), field_threshold=0.45,
        min_field_agreement=0.99,
    )  # fmt: skip
    entry = entry_from_level(level, FITTED_ON, SMALL)
    return write_level_checkpoint(setup["base"], setup["root"] / "disagreeing.pt", entry)


def test_predict_and_synthesize_warn_when_the_guard_drops_the_level(
    setup, disagreeing, tmp_path, capsys
):
    """g = 1 for every image, and predict (one printed warning per image, naming it, and the
    summary's warnings column) and synthesize (a UserWarning) say why; synthesize's maps equal
    the model's without the level."""
    src = setup["data"] / "attenuation"
    args = ["predict", str(src), "--out", str(tmp_path / "out"), "--checkpoint", str(disagreeing)]
    opts = ["--samples", "2", "--device", "cpu", "--workers", "0", "--resample", "off", "--quiet"]
    assert main([*args, *opts]) == 0
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "lung level not applied" in line]
    assert len(said) == 30 and all(str(src) in line for line in said)
    with open(tmp_path / "out" / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert all(float(r["level_factor"]) == 1.0 for r in rows)
    assert all("lung level not applied (g = 1)" in r["warnings"] for r in rows)
    image = np.random.default_rng(6).uniform(20000, 40000, (SIZE, SIZE)).astype(np.float32)
    kw = dict(samples=2, seed=1, resample=False, device="cpu", name="x.png")
    with pytest.warns(UserWarning, match=r"x.png: lung level not applied"):
        out = synthesize(load_model(disagreeing).model, image, **kw)
    plain = synthesize(load_model(setup["base"]).model, image, **kw)
    assert out.level_factor == 1.0 and not out.lung_field.any()  # the field was dropped
    np.testing.assert_array_equal(out.darkfield, plain.darkfield)
