"""The lung level (``darkfield_nb.level``) and its hookups: the network learns a per-image
number, ``LungLevel.factors`` is its closed form, the checkpoint entry survives a round trip,
predict / synthesize scale the maps by g before the recalibration, the recalibration is fitted
on top of the level and ``load_model`` refuses a mismatch, and ``darkfield-nb fit-level``.

References: scipy.stats.spearmanr (learning), closed forms with networks whose output is a
known constant (L = m + s b, g = L / mean over the predicted field, computed here with NumPy),
NumPy's 2 x 2 reshape-mean (area resampling), float16-rounded copies of the weights (round
trip), hand-computed pixels (g, then c, then the field factors), scipy.stats.gennorm's standard
deviation (scaled GGD), and the same model's maps without the level (synthesize, predict).
"""

from __future__ import annotations

import copy
import csv

import numpy as np
import pytest
import torch
from helpers import constant_level_net, toy_generator, toy_recalibration, write_toy_chest_set
from scipy import stats

from darkfield_nb import calibration as cal
from darkfield_nb import checkpoint
from darkfield_nb.calibration.store import write_calibrated_checkpoint
from darkfield_nb.cli import main
from darkfield_nb.data import PairedDataset, normalize_input
from darkfield_nb.inference import load_model
from darkfield_nb.inference.hookups import apply_level_factor, apply_recalibration_maps
from darkfield_nb.inference.outputs import MAPS
from darkfield_nb.io import read_image
from darkfield_nb.labels import LUNG
from darkfield_nb.level import LevelConfig, LevelNet, LungLevel
from darkfield_nb.level.fit import LevelData, train_level_net
from darkfield_nb.level.store import (
    entry_from_level,
    level_digest,
    level_from_entry,
    level_of,
    write_level_checkpoint,
)
from darkfield_nb.synthesis import synthesize

SIZE = 32
GEOMETRY = {"size": [SIZE, SIZE], "pixel_mm": 10.0}  # a 32 px input is the model's own size
SMALL = LevelConfig(channels=(8, 16, 16), hidden=8, dropout=0.0)
# two constant members: L = mean(0.3 + 0.1 * 1.0, 0.5 + 0.2 * 1.0) = 0.55 (exact in float16)
CONST = {"m": (0.3, 0.5), "s": (0.1, 0.2), "b": (1.0, 1.0), "L": 0.55}

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread


def _constant_net(b: float, cfg: LevelConfig = SMALL) -> LevelNet:
    return constant_level_net(b, cfg)


def _random_net(seed: int, cfg: LevelConfig = SMALL) -> LevelNet:
    """A LevelNet with seeded weights, BatchNorm running statistics away from 0 / 1 and a
    100-fold ``out`` weight."""
    torch.manual_seed(seed)
    net = LevelNet(1, cfg)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
        net.out.weight.mul_(100)  # outputs that differ visibly between inputs
    return net.eval()


def _const_level(**kw) -> LungLevel:
    members = [_constant_net(b) for b in CONST["b"]]
    return LungLevel(members, list(CONST["m"]), list(CONST["s"]), input_shape=(SIZE, SIZE), **kw)


def _const_entry(**kw) -> dict:
    fitted_on = {"data": ["toy"], "splits": ["train"], "n_images": 0, "holdout_spearman": []}
    return entry_from_level(_const_level(**kw), fitted_on, SMALL)


def _field_g(mu: np.ndarray, level: float, t: float = 0.1, lo=0.25, hi=4.0) -> np.ndarray:
    """g = clip(L / mean of mu over {mu > t}), per image of ``mu`` (N, H, W), in NumPy."""
    mu = np.float64(mu)
    return np.array([np.clip(level / m[m > t].mean(), lo, hi) for m in mu])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A toy generator with a positive mean (head bias +0.4), at 32 px; the same with a
    constant-output lung level; the chest set it is calibrated on."""
    root = tmp_path_factory.mktemp("level")
    data = write_toy_chest_set(root / "data", ["train"] * 2 + ["val"] * 3, seed=3)
    model = toy_generator()
    with torch.no_grad():
        model.stages[-1].head_mu.bias.fill_(0.4)
    base = checkpoint.save_trained(root / "base.pt", model, stage=1, epoch=1, geometry=GEOMETRY)
    entry = _const_entry(factor_range=(0.25, 4.0))
    level = write_level_checkpoint(base, root / "level.pt", entry)
    return {"root": root, "data": data, "base": base, "level": level, "entry": entry}


# ----------------------------------------------------------------------------- 1. training
def _blocks(n: int, seed: int) -> LevelData:
    """Images of noise with a central 12 x 12 block at a level a_i ~ U(0, 1); the target is the
    block's mean plus N(0, 0.02) noise."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 1, n)
    x = rng.normal(0, 0.3, (n, SIZE, SIZE)).astype(np.float32)
    x[:, 10:22, 10:22] += a[:, None, None].astype(np.float32)
    t = x[:, 10:22, 10:22].mean(axis=(1, 2), dtype=np.float64) + rng.normal(0, 0.02, n)
    return LevelData(x, t, np.array([f"toy/{i}" for i in range(n)]))


def test_level_net_learns_a_global_quantity_deterministically():
    """~200 training images: the holdout and a fresh test set rank by the target (Spearman,
    scipy) above 0.8; the same seed gives identical weights; too few images is a ValueError."""
    data, test = _blocks(200, seed=0), _blocks(60, seed=1)
    cfg = LevelConfig(channels=(8, 16, 16), hidden=16, max_epochs=10, min_epochs=3, seed=0)
    net, info = train_level_net(data, cfg, device="cpu", progress=False)
    assert info["n_holdout"] == 20 and info["n_fit"] == 180
    assert info["best_holdout_spearman"] > 0.8
    level = LungLevel([net], [info["target_mean"]], [info["target_sd"]], input_shape=(SIZE, SIZE))
    pred = level.estimate(torch.from_numpy(test.x)[:, None])
    assert stats.spearmanr(test.t, pred)[0] > 0.8
    fit = np.random.default_rng(0).permutation(200)[20:]  # the seeded holdout is the first 20
    assert info["target_mean"] == pytest.approx(data.t[fit].mean(), rel=1e-12)
    assert info["target_sd"] == pytest.approx(data.t[fit].std(), rel=1e-12)
    again, info2 = train_level_net(data, cfg, device="cpu", progress=False)
    for (k, a), (_, b) in zip(net.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    drop = lambda hist: [{k: v for k, v in h.items() if k != "minutes"} for h in hist]  # noqa: E731
    assert drop(info2["history"]) == drop(info["history"])  # loss and holdout rho, every epoch
    with pytest.raises(ValueError, match="too few for a holdout"):
        train_level_net(_blocks(10, seed=2), cfg, progress=False)
    flat = LevelData(data.x[:40], np.full(40, 0.3), data.ids[:40])
    with pytest.raises(ValueError, match="every training target is the same"):
        train_level_net(flat, cfg, progress=False)


# ----------------------------------------------------------------------------- 2. closed form
def test_factors_closed_form_clipping_and_empty_fields():
    """Constant members: L = mean_k(m_k + s_k b_k) = 0.55 exactly; g = L / mean over {mu > t},
    clipped to factor_range, 1 where the field has fewer than min_field_pixels pixels."""
    level = _const_level(factor_range=(0.5, 1.5), min_field_pixels=64, field_threshold=0.1)
    mu = np.full((5, SIZE, SIZE), 0.05)  # below t: outside every field
    mu[0, :10, :10], mu[0, 20:22, :10] = 0.4, 0.7  # 100 px at 0.4, 20 px at 0.7
    mu[0, 25:30, :10] = 0.1  # at t exactly: outside the field (mu > t)
    mu[1, :10, :10] = 0.2  # g = 2.75 -> 1.5
    mu[2, :10, :10] = 2.0  # g = 0.275 -> 0.5
    mu[3, :5, :10] = 0.4  # 50 px < 64: g = 1
    mu[4] = 0.0  # no field at all: g = 1
    x = torch.from_numpy(np.random.default_rng(0).random((5, 1, SIZE, SIZE), np.float32))
    lung, g = level.factors(x, mu)
    np.testing.assert_allclose(lung, 0.55, rtol=1e-12)
    field0 = (100 * 0.4 + 20 * 0.7) / 120
    np.testing.assert_allclose(g, [0.55 / field0, 1.5, 0.5, 1.0, 1.0], rtol=1e-12)
    means, counts = level.field_means(mu)
    np.testing.assert_array_equal(counts, [120, 100, 100, 50, 0])
    assert means[0] == pytest.approx(field0) and np.isnan(means[4])
    single = level.factors(x[0, 0].numpy(), mu[0])[1]  # one (H, W) image
    np.testing.assert_allclose(single, g[:1], rtol=1e-12)
    with pytest.raises(ValueError, match="2 inputs but 5 means"):
        level.factors(x[:2], mu)


def test_estimate_flip_average_and_area_resampling():
    """L = m + s (f(x) + f(flip x)) / 2 for a nonconstant network; a 256 px input gives the
    estimate of its 2 x 2 block means at the networks' 128 px (NumPy reshape-mean)."""
    net = _random_net(1)
    level = LungLevel([net], [0.4], [0.2], input_shape=(128, 128))
    rng = np.random.default_rng(1)
    ramp = np.linspace(-2, 2, 256, dtype=np.float32)  # left-right asymmetric
    big = rng.normal(0, 1, (3, 1, 256, 256)).astype(np.float32) + ramp
    big *= np.array([0.5, 1.0, 3.0], np.float32)[:, None, None, None]
    small = big.reshape(3, 1, 128, 2, 128, 2).mean(axis=(3, 5))
    got, ref = level.estimate(big), level.estimate(small)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    decimated = level.estimate(np.ascontiguousarray(big[..., ::2, ::2]))
    assert np.abs(decimated - ref).max() > 100 * np.abs(got - ref).max()  # the test can tell
    with torch.no_grad():
        t = torch.from_numpy(small)
        f, f_flip = net(t).double().numpy(), net(t.flip(-1)).double().numpy()
    assert np.abs(f - f_flip).max() > 1e-3  # the mirror matters for these inputs
    np.testing.assert_allclose(ref, 0.4 + 0.2 * (f + f_flip) / 2, rtol=1e-6)
    assert np.ptp(ref) > 1e-3  # the network's output depends on its input
    np.testing.assert_allclose(level.estimate(small[1, 0]), ref[1:2], rtol=1e-6)
    with pytest.raises(ValueError, match=r"expected \(B, 1, H, W\)"):
        level.estimate(small[:, 0])


def test_lung_level_constructor_errors():
    nets = [_constant_net(0.0)]
    with pytest.raises(ValueError, match="need one of each per member"):
        LungLevel([], [], [])
    with pytest.raises(ValueError, match="1 members with 2 target means"):
        LungLevel(nets, [0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="need 0 < lo <= 1 <= hi"):
        LungLevel(nets, [0.1], [0.1], factor_range=(1.2, 2.0))
    with pytest.raises(ValueError, match="need 0 < lo <= 1 <= hi"):
        LungLevel(nets, [0.1], [0.1], factor_range=(0.0, 2.0))
    with pytest.raises(ValueError, match="field_threshold=0"):
        LungLevel(nets, [0.1], [0.1], field_threshold=0)
    with pytest.raises(ValueError, match="input_shape=\\(0, 32\\)"):
        LungLevel(nets, [0.1], [0.1], input_shape=(0, 32))
    with pytest.raises(ValueError, match="channels"):
        LevelConfig(channels=(8, 0))
    with pytest.raises(ValueError, match="holdout_fraction"):
        LevelConfig(holdout_fraction=1.0)


# ----------------------------------------------------------------------------- 3. entry
def test_entry_round_trip_through_a_checkpoint(setup, tmp_path):
    """entry -> checkpoint -> torch.load(weights_only=True) -> LungLevel: the estimates of the
    float16-rounded original networks, the same digest; the source is left as it was."""
    members = [_random_net(2), _random_net(3)]
    shape = dict(input_shape=(SIZE, SIZE), field_threshold=0.08, factor_range=(0.6, 1.7))
    level = LungLevel(members, [0.3, 0.35], [0.1, 0.12], min_field_pixels=20, **shape)
    fitted_on = {"data": ["a", "b"], "splits": ["train"], "n_images": 7, "holdout_spearman": [0.9]}
    entry = entry_from_level(level, fitted_on, SMALL)
    out = write_level_checkpoint(setup["base"], tmp_path / "lev.pt", entry)
    raw = torch.load(out, weights_only=True)
    back = level_of(raw, str(out))
    assert level_digest(back) == level_digest(entry) is not None
    assert level_of(torch.load(setup["base"], weights_only=True)) is None
    loaded = level_from_entry(back)
    assert loaded.input_shape == (SIZE, SIZE) and loaded.factor_range == (0.6, 1.7)
    assert loaded.field_threshold == 0.08 and loaded.min_field_pixels == 20
    assert loaded.info == fitted_on and loaded.target_sd == [0.1, 0.12]
    half = []
    for net in members:  # the reference: the original weights rounded to float16
        ref, state = copy.deepcopy(net), net.state_dict()
        ref.load_state_dict(
            {k: v.half().float() if v.is_floating_point() else v for k, v in state.items()}
        )
        half.append(ref.eval())
    ref_level = LungLevel(half, [0.3, 0.35], [0.1, 0.12], input_shape=(SIZE, SIZE))
    x = np.random.default_rng(4).normal(0, 1, (4, 1, SIZE, SIZE)).astype(np.float32)
    np.testing.assert_allclose(loaded.estimate(x), ref_level.estimate(x), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(loaded.estimate(x), level.estimate(x), rtol=0, atol=5e-3)
    # the digest follows the weights
    nudged = copy.deepcopy(entry)
    nudged["members"][0]["out.bias"] += 0.5
    assert level_digest(nudged) != level_digest(entry)


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda e: e.pop("target_sd"), "lacks \\['target_sd'\\]"),
        (lambda e: e.update(target_mean=[0.1]), "2 members, 1 target means"),
        (lambda e: e.update(factor_range=[1.1, 2.0]), "must hold 1"),
        (lambda e: e.update(target_sd=[0.1, 0.0]), "need positive values"),
        (lambda e: e.update(version=3), "newer than this package reads"),
        (lambda e: e.update(members=[]), "0 members"),
        (lambda e: e.update(field_threshold=0.0), "field_threshold=0.0: need > 0"),
        (lambda e: e.update(input_shape=[0, 32]), "input_shape=\\(0, 32\\): need positive"),
        (lambda e: e["config"].update(newer_field=1), "config: .*newer_field"),
    ],
)
def test_malformed_entries_are_refused_by_name(setup, tmp_path, change, words):
    entry = copy.deepcopy(setup["entry"])
    change(entry)
    with pytest.raises(ValueError, match=f"x.pt: 'lung_level' entry.*{words}"):
        level_from_entry(entry, "x.pt")
    dst = tmp_path / "bad.pt"
    with pytest.raises(ValueError, match=f"bad.pt: 'lung_level' entry.*{words}"):
        write_level_checkpoint(setup["base"], dst, entry)
    assert not dst.exists()


def test_weights_that_do_not_fit_the_config_are_refused(setup):
    entry = copy.deepcopy(setup["entry"])
    entry["config"]["channels"] = [8, 16, 32]
    with pytest.raises(ValueError, match="x.pt: member 0 does not fit its config"):
        level_from_entry(entry, "x.pt")


# ----------------------------------------------------------------------------- 4. hookups
def _maps(shape, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    al = rng.uniform(0.01, 0.05, shape).astype(np.float32)
    ep = rng.uniform(0.0, 0.03, shape).astype(np.float32)
    return {
        "darkfield": rng.uniform(0, 0.5, shape).astype(np.float32),
        "aleatoric": al,
        "epistemic": ep,
        "total": np.sqrt(al.astype(np.float64) ** 2 + ep**2).astype(np.float32),
    }


def test_apply_level_factor_scales_each_image_and_keeps_the_quadrature():
    maps, g = _maps((3, 6, 7)), np.array([0.5, 1.0, 1.75])
    got = apply_level_factor(maps, g)
    for k, v in maps.items():
        assert got[k].dtype == np.float32, k
        for i in range(3):
            np.testing.assert_allclose(got[k][i], np.float64(v[i]) * g[i], rtol=1e-6, err_msg=k)
    np.testing.assert_allclose(
        np.float64(got["total"]) ** 2,
        np.float64(got["aleatoric"]) ** 2 + np.float64(got["epistemic"]) ** 2,
        rtol=1e-5,
    )
    one = _maps((6, 7), seed=1)
    got1 = apply_level_factor(one, 1.3)
    for k, v in one.items():
        np.testing.assert_allclose(got1[k], np.float64(v) * 1.3, rtol=1e-6, err_msg=k)
        assert got1[k].dtype == np.float32
    assert apply_level_factor(one, None) is one
    extra = apply_level_factor({**one, "other": np.ones(3)}, 2.0)
    np.testing.assert_array_equal(extra["other"], np.ones(3))  # only D and the sigmas


def _field_recal(c: float) -> dict:
    scaling = {"kind": "sigma_scaling", "factor": 0.6, "per_region": {}, "method": "coverage",
               "p": 0.9, "per_field": {"predicted_lung": 0.8, "outside": 0.5},
               "lung_threshold": 0.1}  # fmt: skip
    recal = toy_recalibration(scaling, 40, version=3)
    recal["mean_scale"] = {"factor": c, "lung_D_bias_before": 1 / c - 1, "skipped": None}
    return recal


def test_recalibration_is_applied_on_top_of_the_level():
    """Hand-computed pixels, t = 0.1, f_in 0.8, f_out 0.5, c = 0.9: with g = 1.2 a mean of 0.105
    becomes 0.1134 (> t: f_in; c alone would give 0.0945, f_out); with g = 0.9 a mean of 0.12
    becomes 0.0972 (< t: f_out)."""
    mean = np.array([[[0.105, 0.2]], [[0.12, 0.3]]], np.float32)
    sig = np.array([[[0.04, 0.05]], [[0.05, 0.02]]], np.float32)
    maps = {"darkfield": mean, "aleatoric": sig, "epistemic": sig / 2, "total": sig * 1.2}
    g = np.array([1.2, 0.9])
    got, scale = apply_recalibration_maps(maps, _field_recal(0.9), level_factor=g)
    np.testing.assert_allclose(got["darkfield"], [[[0.1134, 0.216]], [[0.0972, 0.243]]], rtol=1e-6)
    np.testing.assert_array_equal(scale, [[[0.8, 0.8]], [[0.5, 0.8]]])
    want = [[[0.04 * 1.2 * 0.8, 0.05 * 1.2 * 0.8]], [[0.05 * 0.9 * 0.5, 0.02 * 0.9 * 0.8]]]
    np.testing.assert_allclose(got["aleatoric"], want, rtol=1e-6)
    np.testing.assert_allclose(got["total"], 1.2 * got["aleatoric"], rtol=1e-6)
    assert got["darkfield"].dtype == np.float32
    first, _ = apply_recalibration_maps(apply_level_factor(maps, g), _field_recal(0.9))
    for k in maps:
        np.testing.assert_array_equal(got[k], first[k], err_msg=k)
    only, none = apply_recalibration_maps(maps, None, level_factor=g)
    assert none is None
    np.testing.assert_allclose(only["darkfield"][1], 0.9 * np.float64(mean[1]), rtol=1e-6)


# ----------------------------------------------------------------------------- 5. Predictions
def test_predictions_scaled_by_g():
    rng = np.random.default_rng(5)
    n, shape = 3, (3, 5, 4)
    al, ep = rng.uniform(0.01, 0.1, shape), rng.uniform(0.0, 0.05, shape)
    beta = rng.uniform(1.0, 2.5, shape)
    preds = cal.Predictions(
        mu=rng.uniform(0, 0.5, shape).astype(np.float32), aleatoric=al.astype(np.float32),
        epistemic=ep.astype(np.float32), total=np.sqrt(al**2 + ep**2).astype(np.float32),
        beta=beta.astype(np.float32), ids=np.arange(n), y=rng.random(shape).astype(np.float32),
        x=rng.random(shape).astype(np.float32), mask=np.full(shape, LUNG, np.int32),
        alpha=rng.uniform(0.01, 0.1, shape).astype(np.float32),
    )  # fmt: skip
    g = np.array([0.5, 1.0, 2.0])
    out = preds.scaled(g)
    for k in ("mu", "aleatoric", "epistemic", "total", "alpha"):
        want = np.float64(getattr(preds, k)) * g[:, None, None]
        np.testing.assert_allclose(getattr(out, k), want, rtol=1e-6, err_msg=k)
        assert getattr(out, k).dtype == np.float32
    for k in ("beta", "y", "x", "mask", "ids"):
        np.testing.assert_array_equal(getattr(out, k), getattr(preds, k), err_msg=k)
    want = g[:, None, None] * cal.predictive_alpha(preds.total, preds.beta)
    np.testing.assert_allclose(out.alpha_total, want, rtol=1e-6)
    # a GGD of scale alpha_total has standard deviation total (scipy's gennorm): g total after
    sd = stats.gennorm.std(np.float64(out.beta), scale=np.float64(out.alpha_total))
    np.testing.assert_allclose(sd, np.float64(preds.total) * g[:, None, None], rtol=1e-5)
    with pytest.raises(ValueError, match="2 factors for 3 images"):
        preds.scaled([1.0, 2.0])


# ----------------------------------------------------------------------------- 6. load_model
def test_load_model_refuses_a_recalibration_fitted_without_the_level(setup, tmp_path):
    entry = setup["entry"]
    scaling = {"kind": "sigma_scaling", "factor": 1.5, "per_region": {}, "method": "coverage",
               "p": 0.9}  # fmt: skip
    recal = toy_recalibration(scaling, n_images=3)
    calibrated = write_calibrated_checkpoint(setup["base"], tmp_path / "recal.pt", recal)
    both = write_level_checkpoint(calibrated, tmp_path / "recal_then_level.pt", entry)
    with pytest.raises(checkpoint.CheckpointError) as err:
        load_model(both)
    msg = str(err.value)
    assert str(both) in msg and "darkfield-nb calibrate" in msg and "no lung level" in msg
    # a recalibration made on this level, on a checkpoint without it: refused too
    on_level = {**recal, "version": 4, "lung_level": {"digest": level_digest(entry)}}
    lacking = write_calibrated_checkpoint(setup["base"], tmp_path / "lacking.pt", on_level)
    with pytest.raises(checkpoint.CheckpointError, match="carries no lung level"):
        load_model(lacking)
    fine = write_calibrated_checkpoint(setup["level"], tmp_path / "fine.pt", on_level)
    assert load_model(fine).recalibration["lung_level"]["digest"] == level_digest(entry)

    loaded = load_model(setup["level"])
    assert isinstance(loaded.level, LungLevel) and loaded.model.lung_level is loaded.level
    assert loaded.recalibration is None and len(loaded.level.members) == 2
    assert load_model(setup["base"]).model.lung_level is None


# ----------------------------------------------------------------------------- 7. synthesize
def test_synthesize_scales_every_map_by_g(setup):
    """The level-only checkpoint's maps are g times the same model's without it (same seed,
    no resampling); g = L / mean of that D over {D > t}, computed here."""
    plain_model = load_model(setup["base"]).model
    level_model = load_model(setup["level"]).model
    image = np.random.default_rng(6).uniform(20000, 40000, (SIZE, SIZE)).astype(np.float32)
    kw = dict(samples=2, seed=1, resample=False, device="cpu")
    plain = synthesize(plain_model, image, **kw)
    scaled = synthesize(level_model, image, **kw)
    assert plain.level_factor is None and plain.lung_level is None
    g = _field_g(plain.darkfield[None], CONST["L"])[0]
    assert abs(g - 1) > 0.1  # the level changes something here
    assert scaled.lung_level == pytest.approx(CONST["L"], rel=1e-12)
    assert scaled.level_factor == pytest.approx(g, rel=1e-6)
    ref = level_model.lung_level.factors(normalize_input(image)[None, None], plain.darkfield)
    assert scaled.level_factor == pytest.approx(float(ref[1][0]), rel=1e-12)
    for k in MAPS:
        want = g * np.float64(getattr(plain, k))
        np.testing.assert_allclose(getattr(scaled, k), want, rtol=2e-6, atol=1e-9, err_msg=k)


def test_predict_fills_the_level_columns(setup, tmp_path, capsys):
    src = setup["data"] / "attenuation"

    def run(ckpt, out):
        args = ["predict", str(src), "--out", str(out), "--checkpoint", str(ckpt)]
        opts = ["--samples", "2", "--device", "cpu", "--workers", "0", "--resample", "off"]
        return main([*args, *opts, "--quiet"])

    assert run(setup["base"], tmp_path / "plain") == 0
    assert "lung level" not in capsys.readouterr().out
    assert run(setup["level"], tmp_path / "level") == 0
    assert "applying the lung level stored in" in capsys.readouterr().out

    def summary(out):
        with open(out / "summary.csv", newline="") as fh:
            return {r["id"]: r for r in csv.DictReader(fh)}

    plain, level = summary(tmp_path / "plain"), summary(tmp_path / "level")
    assert len(level) == 5 and set(level) == set(plain)
    for stem, row in level.items():
        assert plain[stem]["lung_level"] == "" and plain[stem]["level_factor"] == ""
        assert float(row["lung_level"]) == pytest.approx(CONST["L"], rel=1e-9)
        members = [m + s * b for m, s, b in zip(CONST["m"], CONST["s"], CONST["b"], strict=True)]
        want_sd = np.std(members, ddof=1)  # 0.4 and 0.7: 0.3 / sqrt(2)
        assert float(row["lung_level_sd"]) == pytest.approx(want_sd, rel=1e-6)
        assert plain[stem]["lung_level_sd"] == ""
        d_plain = read_image(tmp_path / "plain" / "darkfield" / f"{stem}.tif")
        g = _field_g(d_plain[None], CONST["L"])[0]
        assert float(row["level_factor"]) == pytest.approx(g, rel=1e-6) and abs(g - 1) > 0.1
        for name in MAPS:
            a = read_image(tmp_path / "plain" / name / f"{stem}.tif").astype(np.float64)
            b = read_image(tmp_path / "level" / name / f"{stem}.tif")
            np.testing.assert_allclose(b, g * a, rtol=2e-6, atol=1e-9, err_msg=name)


def test_a_new_lung_level_redoes_the_sets(setup, tmp_path):
    """predict_folder with the same checkpoint digest: sets written without a level are redone
    when a level is passed (the completion key carries its digest), and skipped on a rerun."""
    from darkfield_nb.inference import PredictConfig, predict_folder

    loaded = load_model(setup["level"])
    cfg = PredictConfig(samples=1, resample="off", progress=False, workers=0)
    kw = dict(checkpoint_sha256="same", config=cfg, device="cpu")
    src, out = setup["data"] / "attenuation", tmp_path / "out"
    loaded.model.lung_level = None  # else level=None picks the model's level up
    first = predict_folder(loaded.model, src, out, **kw)
    assert first.totals["written"] == 5
    again = predict_folder(loaded.model, src, out, level=loaded.level, **kw)
    assert again.totals["skipped"] == 0, again.totals
    assert set(again.redone.values()) == {"lung level changed"}, again.redone
    rerun = predict_folder(loaded.model, src, out, level=loaded.level, **kw)
    assert rerun.totals["skipped"] == 5


# ----------------------------------------------------------------------------- 8. calibrate
def test_recalibration_fitted_on_top_of_the_level(setup, tmp_path):
    """c = mean_i(lung mean of y_i) / mean_i(lung mean of g_i mu_i), g_i = L / mean of mu_i over
    {mu_i > t} (NumPy, from collect_predictions); the entry records the level's digest and the
    range of g; calibrate_checkpoint on the level checkpoint writes what load_model accepts."""
    model = load_model(setup["base"]).model
    kw = dict(samples=2, stage=1, device="cpu", progress=False, min_pixels=50)
    recal = cal.fit_recalibration(model, setup["data"], level_entry=setup["entry"], **kw)
    preds = cal.collect_predictions(
        model, PairedDataset(setup["data"], split="val", pad_multiple=1), samples=2, seed=0,
        stage=1, progress=False,
    )  # fmt: skip
    g = _field_g(preds.mu, CONST["L"])
    assert np.ptp(g) > 0 and np.all(np.abs(g - 1) > 0.05)
    lung = (preds.mask & LUNG) > 0
    per_image = lambda a: np.array([np.float64(a[i])[lung[i]].mean() for i in range(len(a))])  # noqa: E731
    want = per_image(preds.y).mean() / (g * per_image(preds.mu)).mean()
    assert recal["version"] == 4
    rec = recal["lung_level"]
    assert rec["digest"] == level_digest(setup["entry"])
    assert rec["factor_min"] == pytest.approx(g.min(), rel=1e-6)
    assert rec["factor_max"] == pytest.approx(g.max(), rel=1e-6)
    assert recal["mean_scale"]["factor"] == pytest.approx(want, rel=1e-6)
    without = cal.fit_recalibration(model, setup["data"], **kw)
    assert without["lung_level"]["digest"] is None
    assert without["mean_scale"]["factor"] != pytest.approx(want, rel=1e-3)

    out, entry = cal.calibrate_checkpoint(
        setup["level"], setup["data"], tmp_path / "cal.pt", device="cpu", samples=2,
        progress=False, min_pixels=50,
    )  # fmt: skip
    assert entry["lung_level"]["digest"] == level_digest(setup["entry"])
    assert entry["mean_scale"]["factor"] == pytest.approx(want, rel=1e-6)
    loaded = load_model(out)
    assert loaded.level is not None and loaded.recalibration == entry


# ----------------------------------------------------------------------------- 9. CLI
def test_cli_fit_level(setup, tmp_path, capsys):
    data = write_toy_chest_set(tmp_path / "d", ["train"] * 24 + ["val"] * 6 + ["test"], seed=4)
    out = tmp_path / "with_level.pt"
    args = ["fit-level", "--checkpoint", str(setup["base"]), "--data", str(data), "--out", str(out)]
    assert main([*args, "--members", "1", "--max-epochs", "2", "--device", "cpu", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "trained 1 lung-level network(s) on 30 images of 1 folder(s) at 32 x 32 px" in text
    assert f"wrote {out}" in text and "darkfield-nb calibrate" in text
    entry = level_of(checkpoint.load_checkpoint(out))
    assert len(entry["members"]) == 1 and entry["input_shape"] == [SIZE, SIZE]
    assert entry["fitted_on"]["n_images"] == 30 and entry["fitted_on"]["splits"] == ["train", "val"]
    # the targets are the mean of D over the LUNG bit of the train and val images (read here)
    ts = []
    for i in range(30):
        d = np.float64(read_image(data / "darkfield" / f"im{i:02d}.tif"))
        mask = read_image(data / "masks" / f"im{i:02d}.png").astype(np.int64)
        ts.append(d[(mask & LUNG) > 0].mean())
    fit_ids = np.random.default_rng(0).permutation(30)[3:]  # the seeded holdout (3 of 30)
    assert entry["target_mean"][0] == pytest.approx(np.mean(np.array(ts)[fit_ids]), rel=1e-6)
    assert entry["target_sd"][0] == pytest.approx(np.std(np.array(ts)[fit_ids]), rel=1e-6)
    assert isinstance(load_model(out).level, LungLevel)

    missing = tmp_path / "no_such_folder"
    args = ["fit-level", "--checkpoint", str(setup["base"]), "--data", str(missing)]
    assert main([*args, "--out", str(tmp_path / "x.pt"), "--members", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()
