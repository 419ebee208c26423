"""darkfield_nb.epistemic.knn: nearest-neighbour distances against scipy's cKDTree and
scikit-learn's NearestNeighbors, the greedy k-center coreset against a hand-computed case and a
brute-forced optimum (the 2-approximation), seeded determinism, errors."""

from itertools import combinations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist, pdist
from sklearn.neighbors import NearestNeighbors

from darkfield_nb.epistemic import knn
from darkfield_nb.epistemic.knn import KNNDensity, greedy_coreset, random_projection


def _data(n=400, p=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, p)) * 3.0 + 5.0


def test_distance_equals_ckdtree_when_every_vector_is_kept():
    train, query = _data(300), _data(500, seed=1)
    d = KNNDensity(size=10_000).fit(train)  # size > n: the bank is the training set
    assert d.memory.shape == (300, 12)
    ref, _ = cKDTree(train).query(query, k=1)
    np.testing.assert_allclose(d.distance(query).numpy(), ref, rtol=2e-5, atol=1e-5)
    # a training vector is at distance 0 from itself
    np.testing.assert_allclose(d.distance(train[:20]).numpy(), 0.0, atol=1e-6)


def test_mean_of_k_nearest_matches_sklearn_and_chunking_does_not_change_it(monkeypatch):
    train, query = _data(300, p=20), _data(257, p=20, seed=2)
    d = KNNDensity(size=300, k=3).fit(train)
    nn = NearestNeighbors(n_neighbors=3).fit(train)
    ref = nn.kneighbors(query)[0].mean(1)
    np.testing.assert_allclose(d.distance(query).numpy(), ref, rtol=2e-5, atol=1e-5)
    full = nn.kneighbors(query)[0]
    np.testing.assert_allclose(d.neighbours(query, 1)[:, 0].numpy(), full[:, 0], rtol=2e-5)
    np.testing.assert_allclose(d.neighbours(query).numpy(), full, rtol=2e-5, atol=1e-5)
    monkeypatch.setattr(knn, "BLOCK", 300 * 7)  # 7 rows per chunk, a ragged last chunk
    np.testing.assert_allclose(d.distance(query).numpy(), ref, rtol=2e-5, atol=1e-5)


def test_distance_to_a_coreset_is_the_distance_to_its_rows():
    train, query = _data(400), _data(100, seed=3)
    d = KNNDensity(size=50, seed=4).fit(train)
    assert d.index.shape == (50,) and len(set(d.index.tolist())) == 50
    np.testing.assert_array_equal(d.memory, train[d.index].astype(np.float32))
    ref, _ = cKDTree(train[d.index]).query(query, k=1)
    np.testing.assert_allclose(d.distance(query).numpy(), ref, rtol=2e-5, atol=1e-5)
    # the reference: median distance of the 350 vectors left out of the bank
    rest = np.setdiff1d(np.arange(400), d.index)
    held, _ = cKDTree(train[d.index]).query(train[rest], k=1)
    assert d.reference == pytest.approx(np.median(held), rel=1e-5)
    # the covering radius is the largest of those distances
    assert d.radius == pytest.approx(held.max(), rel=1e-4)


def test_reference_when_the_bank_holds_every_vector_is_the_leave_one_out_median():
    train = _data(60)
    d = KNNDensity(size=100, k=2).fit(train)
    nn = NearestNeighbors(n_neighbors=3).fit(train)
    loo = nn.kneighbors(train)[0][:, 1:].mean(1)  # column 0 is the vector itself
    assert d.reference == pytest.approx(np.median(loo), rel=1e-4)


def test_greedy_coreset_on_points_of_a_line_by_hand():
    # points 0, 1, 2, 3, 10, 11, 20 from the first: d_min = |x - 0| -> pick 20 (radius 20);
    # d_min = 0 1 2 3 10 9 0 -> pick 10 (radius 10); d_min = 0 1 2 3 0 1 0 -> pick 3
    # (radius 3); d_min = 0 1 1 0 0 1 0: radius 1
    x = np.array([0, 1, 2, 3, 10, 11, 20], dtype=float)[:, None]
    idx, radius = greedy_coreset(x, 4, start=0)
    assert idx.tolist() == [0, 6, 4, 3]
    np.testing.assert_allclose(radius, [20, 10, 3, 1], atol=1e-5)
    # a shorter run is a prefix of a longer one from the same start
    idx2, radius2 = greedy_coreset(x, 2, start=0)
    assert idx2.tolist() == [0, 6] and radius2.tolist() == pytest.approx([20, 10])
    # size >= n: every row, radius 0
    idx_all, radius_all = greedy_coreset(x, 50, start=2)
    assert sorted(idx_all.tolist()) == list(range(7)) and radius_all[-1] == pytest.approx(0)


@pytest.mark.parametrize("seed", range(4))
def test_greedy_coreset_is_within_twice_the_optimal_covering_radius(seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 10, (10, 2))
    dist = cdist(x, x)
    for size in (2, 3, 4):
        opt = min(dist[:, list(c)].min(1).max() for c in combinations(range(10), size))
        for start in range(10):
            idx, radius = greedy_coreset(x, size, start=start)
            covering = dist[:, idx].min(1).max()
            assert radius[-1] == pytest.approx(covering, rel=1e-4, abs=1e-4)
            assert covering <= 2 * opt + 1e-6


def test_random_projection_preserves_distances_roughly_and_is_seeded():
    x = _data(40, p=300)
    r = random_projection(300, 256, seed=7)
    assert r.shape == (300, 256) and r.dtype == np.float32
    np.testing.assert_array_equal(r, random_projection(300, 256, seed=7))
    assert not np.array_equal(r, random_projection(300, 256, seed=8))
    ratio = pdist(x @ r) / pdist(x)
    assert 0.97 < ratio.mean() < 1.03 and ratio.min() > 0.75 and ratio.max() < 1.25
    assert abs(r.var() * 256 - 1.0) < 0.02  # entries N(0, 1/dim)


def test_projection_modes():
    train, query = _data(300, p=40), _data(80, p=40, seed=5)
    full = KNNDensity(size=60, dim=8, projection="coreset", seed=1).fit(train)
    proj = KNNDensity(size=60, dim=8, projection="all", seed=1).fit(train)
    # the same coreset (selected in the same projected space), kept in different spaces
    np.testing.assert_array_equal(full.index, proj.index)
    assert full.memory.shape == (60, 40) and proj.memory.shape == (60, 8)
    assert full.matrix is None and proj.matrix.shape == (40, 8)
    ref, _ = cKDTree(train[full.index]).query(query, k=1)
    np.testing.assert_allclose(full.distance(query).numpy(), ref, rtol=2e-5, atol=1e-5)
    r = proj.matrix.astype(np.float64)
    ref_p, _ = cKDTree(train[proj.index] @ r).query(query @ r, k=1)
    np.testing.assert_allclose(proj.distance(query).numpy(), ref_p, rtol=1e-4, atol=1e-4)
    # the coreset chosen in 8 projected dimensions differs from the one in 40
    assert not np.array_equal(KNNDensity(size=60, seed=1).fit(train).index, full.index)


def test_seeded_determinism():
    train = _data(500)
    a = KNNDensity(size=40, dim=6, seed=3).fit(train)
    b = KNNDensity(size=40, dim=6, seed=3).fit(train)
    np.testing.assert_array_equal(a.index, b.index)
    np.testing.assert_array_equal(a.memory, b.memory)
    assert a.reference == b.reference
    c = KNNDensity(size=40, dim=6, seed=9).fit(train)
    assert not np.array_equal(a.index, c.index)


def test_tensor_input_and_round_trip():
    train, query = _data(200), _data(30, seed=6)
    d = KNNDensity(size=25, dim=5, projection="all", k=2, seed=2).fit(torch.from_numpy(train))
    out = d.distance(torch.from_numpy(query))
    assert out.dtype == torch.float32 and out.shape == (30,)
    state = d.to_dict()
    state_t = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}
    e = KNNDensity.from_dict(state_t)  # as a checkpoint stores it: arrays as tensors
    np.testing.assert_array_equal(e.distance(query).numpy(), d.distance(query).numpy())
    assert (e.size, e.dim, e.k, e.projection, e.seed) == (25, 5, 2, "all", 2)
    assert e.reference == d.reference and e.radius == d.radius


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="size and k"):
        KNNDensity(size=0)
    with pytest.raises(ValueError, match="dim"):
        KNNDensity(dim=0)
    with pytest.raises(ValueError, match="projection"):
        KNNDensity(projection="queries")
    d = KNNDensity(size=10)
    with pytest.raises(RuntimeError, match="fit"):
        d.distance(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"KNNDensity.fit.*shape \(5,\)"):
        d.fit(np.zeros(5))
    with pytest.raises(ValueError, match="more than k"):
        KNNDensity(k=3).fit(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        d.fit(np.full((5, 2), np.nan))
    d.fit(_data(50, p=4))
    with pytest.raises(ValueError, match=r"rows of 4 features.*\(3, 5\)"):
        d.distance(np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4\)"):
        d.distance(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="exceeds the memory bank"):
        KNNDensity(size=2, k=1).fit(_data(50, p=4))._neighbours(torch.zeros(1, 4), 3)
    with pytest.raises(ValueError, match="start"):
        greedy_coreset(np.zeros((4, 2)), 2, start=4)
    with pytest.raises(ValueError, match="kind"):
        KNNDensity.from_dict({"kind": "gaussian"})
