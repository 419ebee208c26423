"""Pixel AUROC against scipy's Mann-Whitney U and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from darkfield_nb.ood import pixel_auroc


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
