"""darkfield_nb.ood: pixel AUROC against scipy's Mann-Whitney U, scikit-learn and hand-computed
cases; the body mask by hand; per-case tables against scikit-learn on independently computed
maps; the per-image summary against scikit-learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu

from darkfield_nb.labels import LUNG, PACEMAKER
from darkfield_nb.ood import (
    MAPS,
    OODDetector,
    OODThreshold,
    body_mask,
    default_real_dir,
    device_table,
    load_real,
    ood_summary,
    pixel_auroc,
    summarize_table,
)
from darkfield_nb.uncertainty import mc_dropout_predict


def test_hand_computed_cases():
    pos = np.array([True, True, False, False])
    assert pixel_auroc([3, 4, 1, 2], pos) == 1.0  # every positive above every negative
    assert pixel_auroc([1, 2, 3, 4], pos) == 0.0
    assert pixel_auroc([1, 1, 1, 1], pos) == 0.5  # all ties
    # pairs (pos, neg): (2,1) win, (2,3) loss, (4,1) win, (4,3) win -> 3/4
    assert pixel_auroc([2, 4, 1, 3], pos) == 0.75


def test_matches_mann_whitney_u_with_ties_and_explicit_negatives():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=(30, 40)), 1)  # rounding makes ties
    pos = np.zeros((30, 40), bool)
    pos[5:12, 10:20] = True
    scores[pos] += 0.7
    neg = np.zeros_like(pos)
    neg[15:, :] = True
    u = mannwhitneyu(scores[pos], scores[neg]).statistic
    assert pixel_auroc(scores, pos, neg) == pytest.approx(u / (pos.sum() * neg.sum()))


def test_empty_groups_and_shape_mismatch_are_refused():
    with pytest.raises(ValueError, match="0 positive"):
        pixel_auroc(np.zeros(4), np.zeros(4, bool))
    with pytest.raises(ValueError, match="shapes differ"):
        pixel_auroc(np.zeros(4), np.zeros(5, bool))


def test_matches_scikit_learn_roc_auc_with_ties():
    roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=(20, 25)), 1)
    pos = rng.random((20, 25)) < 0.2
    scores[pos] += 0.5
    ref = roc_auc_score(pos.ravel(), scores.ravel())  # default negatives: every other pixel
    assert pixel_auroc(scores, pos) == pytest.approx(ref, abs=1e-12)


# ----------------------------------------------------------------------------- per-image, per-case
def test_body_mask_fills_the_dark_lungs_inside_the_body():
    x = np.zeros((9, 9))
    x[1:8, 1:8] = 0.8
    x[3:6, 3:6] = 0.01  # dark "lung" inside the bright rim
    mask = np.zeros((9, 9), dtype=np.int32)
    body = body_mask(x, mask)
    want = np.zeros((9, 9), dtype=bool)
    want[1:8, 1:8] = True
    np.testing.assert_array_equal(body, want)
    mask[0, 0] = 1  # a labelled pixel counts as body even on air
    assert body_mask(x, mask)[0, 0]
    with pytest.raises(ValueError, match="differ in shape"):
        body_mask(x, mask[:5])


def _tiny(dropout: float):
    from darkfield_nb.models import GeneratorConfig, ProgressiveGenerator

    torch.manual_seed(0)
    cfg = GeneratorConfig(n_stages=1, base_width=4, depth=2, dropout=dropout, residual=False)
    return ProgressiveGenerator(cfg).eval()


class _FakeSet:
    """Two 16 x 16 images with masks: a bright square "device" in the lung."""

    def __init__(self):
        g = torch.Generator().manual_seed(1)
        self.items, self.rows = [], []
        for i in range(2):
            x = 0.3 + 0.05 * torch.rand(1, 16, 16, generator=g)
            mask = torch.zeros(1, 16, 16, dtype=torch.int32)
            mask[0, 2:14, 2:14] = LUNG
            mask[0, 6:9, 6:9] |= PACEMAKER
            x[0, 6:9, 6:9] = 1.0
            self.items.append({"input": x, "mask": mask, "id": f"im{i}"})
            self.rows.append({"case": "pacemaker"})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_device_table_rows_match_scikit_learn_on_each_map():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    torch.set_num_threads(1)
    ds = _FakeSet()
    for dropout in (0.0, 0.3):
        model = _tiny(dropout)
        train = [0.3 + 0.05 * torch.rand(4, 1, 16, 16) for _ in range(3)]
        val = [0.3 + 0.05 * torch.rand(4, 1, 16, 16) for _ in range(3)]
        det = OODDetector(model, levels=(0, 1)).fit(train, val)
        rows = device_table(model, ds, det, samples=8, device="cpu", progress=False)
        assert len(rows) == 2 * (len(MAPS) - 1) * 2  # no foreign-body map without its term
        item = ds[0]
        mask = item["mask"][0].numpy()
        dev = (mask & PACEMAKER) > 0
        lung = ((mask & LUNG) > 0) & ~dev
        pred = det.predict(item["input"][None])
        mc = mc_dropout_predict(model, item["input"][None], samples=8, seed=0, stage=det.stage)
        combined = np.hypot(mc.epistemic[0, 0].double(), pred.epistemic[0, 0].double()).numpy()
        ref = {
            ("combined", "lung"): (combined, lung),
            ("density", "lung"): (pred.distance[0, 0].double().numpy(), lung),
            ("density_total", "body"): (
                pred.total[0, 0].double().numpy(),
                body_mask(item["input"][0].numpy(), mask) & ~dev,
            ),
        }
        for (name, refname), (m, neg) in ref.items():
            (row,) = [
                r
                for r in rows
                if r["id"] == "im0" and r["map"] == name and r["reference"] == refname
            ]
            sel = dev | neg
            want = sklearn_metrics.roc_auc_score(dev[sel], m[sel])
            assert row["auroc"] == pytest.approx(want, abs=1e-9)
        epi = [r["auroc"] for r in rows if r["map"] == "epistemic"]
        if dropout == 0.0:  # no dropout: a zero epistemic map, all ties, AUROC exactly 1/2
            assert epi == [0.5] * len(epi)
        summ = summarize_table(rows)
        mine = [r["auroc"] for r in rows if r["map"] == "total" and r["reference"] == "lung"]
        assert summ["pacemaker"]["total"]["lung"] == pytest.approx(np.mean(mine))


def test_ood_summary_image_auroc_flags_and_real_ranks():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    model = _tiny(0.0)
    det = OODDetector(model, levels=(0,))
    det.threshold = OODThreshold.calibrate(np.arange(20.0), 0.05)  # threshold 18.05
    in_s = np.array([1.0, 2.0, 3.0, 19.0])
    ood_s = np.array([2.0, 25.0, 30.0])
    out = ood_summary([], in_s, ood_s, det, {"a.png": 2.4, "b.png": 40.0})
    y = np.r_[np.zeros(4), np.ones(3)]
    assert out["image_auroc"] == pytest.approx(sklearn_metrics.roc_auc_score(y, np.r_[in_s, ood_s]))
    assert out["flagged"] == {"in_distribution": 0.25, "ood": pytest.approx(2 / 3)}
    assert out["in_distribution_median"] == 2.5
    assert out["real"]["a.png"]["above_median"] is False and out["real"]["a.png"]["flag"] is False
    assert out["real"]["b.png"]["above_median"] is True and out["real"]["b.png"]["flag"] is True


def test_real_dir_default_follows_the_package_not_the_cwd(tmp_path, monkeypatch):
    import darkfield_nb

    want = Path(darkfield_nb.__file__).resolve().parents[1].parent / "shared" / "real_cxr"
    monkeypatch.chdir(tmp_path)
    assert default_real_dir() == want
    with pytest.raises(FileNotFoundError, match="no_such"):
        load_real(tmp_path / "no_such")
    if not want.is_dir():
        pytest.skip(f"{want} not present")
    real = load_real(size=64)
    assert len(real) >= 1
    for name, x in real:
        assert x.shape == (1, 1, 64, 64) and torch.isfinite(x).all(), name


def test_score_radiograph_normalizes_like_synthesis_and_flags_by_the_threshold():
    from darkfield_nb.data import normalize_input
    from darkfield_nb.ood import score_radiograph

    model = _tiny(0.0)
    torch.manual_seed(2)
    det = OODDetector(model, levels=(0, 1)).fit(
        [torch.rand(4, 1, 16, 16)], [torch.rand(1, 1, 16, 16) for _ in range(10)]
    )
    raw = np.random.default_rng(0).random((16, 16)).astype(np.float32) * 4000 + 100
    got = score_radiograph(det, raw)
    x = normalize_input(torch.from_numpy(raw)[None, None])
    want = float(det.predict(x).score[0])
    assert got["ood_score"] == pytest.approx(want, rel=1e-12)
    assert got["ood_flag"] == (want > det.threshold.threshold)
    with pytest.raises(ValueError, match="2-D"):
        score_radiograph(det, raw[None])
