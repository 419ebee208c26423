"""A multimodal feature density: distance to the nearest training patch (PatchCore).

A single Gaussian (:class:`~.density.GaussianDensity`) is one ellipsoid around the training
features. Patch features of radiographs are multimodal (air, bone, soft tissue, lung, edges,
burnt-in text): a patch can sit inside the ellipsoid and still be far from every real training
patch. PatchCore (Roth et al. 2022, "Towards Total Recall in Industrial Anomaly Detection")
scores a vector ``x`` by its distance to a memory bank ``M`` of training vectors instead:

    d(x) = (1/k) sum_{j=1..k} ||x - m_(j)(x)||_2,

with ``m_(1)(x), .., m_(k)(x)`` the ``k`` members of ``M`` nearest to ``x`` (``k = 1``: the
nearest-neighbour distance).

The memory bank is a greedy k-center coreset (Gonzalez 1985) of the ``n`` training vectors
``x_1 .. x_n``: from a seeded random start ``c_1``, with ``d_min(i)`` the distance of ``x_i``
to the nearest selected vector,

    d_min^(1)(i) = ||x_i - x_{c_1}||,
    c_{t+1}      = argmax_i d_min^(t)(i),
    d_min^(t+1)(i) = min(d_min^(t)(i), ||x_i - x_{c_{t+1}}||),

so each step adds the training vector worst covered so far. After ``s`` steps the covering
radius ``r_s = max_i d_min^(s)(i)`` is at most twice the smallest covering radius of any ``s``
training vectors (the k-center 2-approximation), and the coreset of size ``s`` is the first
``s`` picks of any longer run from the same start.

Optionally the vectors are first mapped by a seeded Gaussian random projection ``R`` (``p x
dim``, entries ``N(0, 1/dim)``): by Johnson-Lindenstrauss ``||(x - y) R|| = (1 +/- eps) ||x -
y||`` with high probability for ``dim ~ log(n) / eps^2``. ``projection="coreset"`` uses it only
to pick the coreset (PatchCore's choice: distances stay exact, in the ``p`` original
features); ``projection="all"`` also measures the distances in the projected space (cheaper
by ``p / dim`` per query, approximate).

``reference``: the median distance of the training vectors that did not enter the memory bank
(or, when all did, of each memory vector to its other members), so that ``d / reference`` is a
unitless map like the Gaussian's ``d / med``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

PROJECTIONS = ("coreset", "all")
BLOCK = 1 << 24  # elements of the (rows x memory) distance block computed at once: 64 MB
MAX_REFERENCE_ROWS = 20_000  # held-out training vectors the reference median is taken over


def _as_rows(x, where: str, p: int | None = None) -> torch.Tensor:
    """``x`` (n, p) as a float32 CPU-or-same-device tensor; ValueError naming ``where``."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"{where}: need (n >= 1, p >= 1) row vectors, got shape {tuple(t.shape)}")
    if p is not None and t.shape[1] != p:
        raise ValueError(f"{where}: rows of {p} features expected, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{where}: non-finite values in the rows")
    return t.float()


def random_projection(p: int, dim: int, seed: int = 0) -> np.ndarray:
    """A ``(p, dim)`` Gaussian random projection, entries ``N(0, 1/dim)`` (seeded), so that
    ``E ||v R||^2 = ||v||^2`` for every ``v`` (Johnson-Lindenstrauss)."""
    if p < 1 or dim < 1:
        raise ValueError(f"random_projection: need p >= 1 and dim >= 1, got p={p}, dim={dim}")
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((p, dim)) / np.sqrt(dim)).astype(np.float32)


def greedy_coreset(x, size: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center selection of ``size`` rows of ``x`` (n, p) from row ``start`` (module
    docstring: ``c_{t+1} = argmax_i d_min(i)``, ``d_min(i) <- min(d_min(i), ||x_i -
    x_{c_{t+1}}||)``; ties go to the lowest index). Returns (the selected row indices in the
    order picked, (size,); the covering radius ``max_i d_min(i)`` after each pick, (size,)).
    ``size`` at least ``n`` selects every row. Distances in float32 as ``||x_i||^2 - 2 x_i .
    c + ||c||^2`` (one matrix-vector product per pick), clamped at 0."""
    t = _as_rows(x, "greedy_coreset")
    n = t.shape[0]
    if size < 1:
        raise ValueError(f"greedy_coreset: size must be >= 1, got {size}")
    if not 0 <= start < n:
        raise ValueError(f"greedy_coreset: start {start} is not a row of the {n} rows")
    size = min(int(size), n)
    t = t - t.mean(0)  # centred: smaller norms, less cancellation in the expansion
    sq = (t * t).sum(1)

    def dist(i: int) -> torch.Tensor:
        return (sq - 2.0 * (t @ t[i]) + sq[i]).clamp_min_(0.0).sqrt_()

    picked = np.empty(size, dtype=np.int64)
    radius = np.empty(size, dtype=np.float64)
    picked[0] = start
    d_min = dist(start)
    d_min[start] = 0.0
    for s in range(1, size + 1):
        i = int(torch.argmax(d_min))
        radius[s - 1] = float(d_min[i])
        if s == size:
            break
        picked[s] = i
        d_min = torch.minimum(d_min, dist(i))
        d_min[i] = 0.0
    return picked, radius


@dataclass
class KNNDensity:
    """Distance to the ``k`` nearest members of a greedy k-center coreset of the training
    vectors (module docstring).

    ``size``: memory bank size (at most the number of training vectors); ``dim``: random
    projection width (None: no projection); ``projection``: ``"coreset"`` (project only to
    select) or ``"all"`` (memory and queries projected); ``k``: neighbours averaged; ``seed``:
    the projection and the coreset's start. Fitted state: ``memory`` (m, q) float32,
    ``matrix`` (p, dim) or None, ``index`` (the coreset's rows of the fitted ``x``),
    ``radius`` (covering radius of the coreset over the fitted vectors, in the space it was
    selected in: projected when ``dim`` is set), ``reference``."""

    size: int = 10_000
    dim: int | None = None
    k: int = 1
    projection: str = "coreset"
    seed: int = 0
    memory: np.ndarray | None = field(default=None, repr=False)
    matrix: np.ndarray | None = field(default=None, repr=False)
    index: np.ndarray | None = field(default=None, repr=False)
    radius: float | None = None
    reference: float | None = None

    def __post_init__(self) -> None:
        if self.size < 1 or self.k < 1:
            raise ValueError(f"KNNDensity: size and k must be >= 1, got {self.size}, {self.k}")
        if self.dim is not None and self.dim < 1:
            raise ValueError(f"KNNDensity: dim must be None or >= 1, got {self.dim}")
        if self.projection not in PROJECTIONS:
            raise ValueError(
                f"KNNDensity: projection {self.projection!r} is not one of {PROJECTIONS}"
            )

    @property
    def n_features(self) -> int:
        """``p``, the width of the vectors :meth:`distance` takes."""
        self._check()
        return self.memory.shape[1] if self.matrix is None else self.matrix.shape[0]

    def fit(self, x) -> KNNDensity:
        """Select the memory bank from the training vectors ``x`` (n, p) and set
        ``reference``; returns self. Needs ``n > k``."""
        t = _as_rows(x, "KNNDensity.fit")
        n, p = t.shape
        if n <= self.k:
            raise ValueError(f"KNNDensity.fit: {n} training vectors, need more than k={self.k}")
        rng = np.random.default_rng(self.seed)
        matrix = None if self.dim is None else random_projection(p, self.dim, self.seed + 1)
        sel = t if matrix is None else t @ torch.from_numpy(matrix).to(t.device)
        start = int(rng.integers(n))
        index, radius = greedy_coreset(sel, self.size, start)
        bank = sel if (matrix is not None and self.projection == "all") else t
        self.memory = bank[torch.from_numpy(index).to(t.device)].cpu().numpy()
        self.matrix = matrix if self.projection == "all" else None
        self.index, self.radius = index, float(radius[-1])
        rest = np.setdiff1d(np.arange(n), index)
        if rest.size:
            if rest.size > MAX_REFERENCE_ROWS:
                rest = np.sort(rng.choice(rest, MAX_REFERENCE_ROWS, replace=False))
            d = self.distance(t[torch.from_numpy(rest).to(t.device)])
        else:  # every vector is in the bank: distance to the other members
            d = self._neighbours(torch.from_numpy(self.memory), self.k + 1)[:, 1:].mean(1)
        self.reference = float(np.median(d.double().cpu().numpy()))
        return self

    def _check(self) -> None:
        if self.memory is None:
            raise RuntimeError("KNNDensity: call fit(training vectors) first")

    def _neighbours(self, q: torch.Tensor, k: int) -> torch.Tensor:
        """(n, k) ascending distances of the rows ``q`` (already projected) to the memory,
        in chunks of ``BLOCK // m`` rows: the ``k`` nearest found by torch.cdist (float32,
        the expansion ``||q||^2 - 2 q.m + ||m||^2``, whose absolute error near 0 is about
        ``sqrt(eps) ||q||``), their distances recomputed as ``||q - m||``."""
        mem = torch.from_numpy(self.memory).to(q.device)
        if k > mem.shape[0]:
            raise ValueError(f"KNNDensity: k={k} exceeds the memory bank of {mem.shape[0]}")
        centre = mem.mean(0)  # distances do not move; cdist's expansion cancels less
        mem, q = mem - centre, q - centre
        rows = max(1, BLOCK // mem.shape[0])
        out = []
        for i in range(0, q.shape[0], rows):
            qi = q[i : i + rows]
            idx = torch.cdist(qi, mem).topk(k, dim=1, largest=False).indices
            # the k found again as differences: exact near 0, where the expansion is not
            exact = torch.linalg.vector_norm(qi[:, None, :] - mem[idx], dim=-1)
            out.append(exact.sort(dim=1).values)
        return torch.cat(out)

    def neighbours(self, x, k: int | None = None) -> torch.Tensor:
        """Ascending distances (n, k) of each row of ``x`` (n, p) to its ``k`` (default
        ``self.k``) nearest memory vectors: float32 on x's device (CPU for NumPy input).
        Memory stays bounded by ``BLOCK`` distances at a time, whatever ``n`` (a 256 px image
        is 65,536 rows)."""
        self._check()
        with torch.no_grad():
            q = _as_rows(x, "KNNDensity.distance", self.n_features)
            if self.matrix is not None:
                q = q @ torch.from_numpy(self.matrix).to(q.device)
            return self._neighbours(q, self.k if k is None else int(k))

    def distance(self, x) -> torch.Tensor:
        """``d(x) = (1/k) sum_j ||x - m_(j)(x)||`` of each row of ``x`` (n, p), (n,) float32
        (:meth:`neighbours`)."""
        return self.neighbours(x).mean(1)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """Plain data (numbers, NumPy arrays) that :meth:`from_dict` reads back."""
        self._check()
        return {
            "kind": "knn",
            "size": int(self.size),
            "dim": None if self.dim is None else int(self.dim),
            "k": int(self.k),
            "projection": self.projection,
            "seed": int(self.seed),
            "memory": np.asarray(self.memory, dtype=np.float32),
            "matrix": None if self.matrix is None else np.asarray(self.matrix, np.float32),
            "index": np.asarray(self.index, dtype=np.int64),
            "radius": float(self.radius),
            "reference": float(self.reference),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KNNDensity:
        if d.get("kind", "knn") != "knn":
            raise ValueError(f"KNNDensity.from_dict: kind {d.get('kind')!r} is not 'knn'")

        def arr(v, dtype):
            if v is None:
                return None
            v = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
            return np.asarray(v, dtype=dtype)

        return cls(
            size=int(d["size"]),
            dim=None if d["dim"] is None else int(d["dim"]),
            k=int(d["k"]),
            projection=str(d["projection"]),
            seed=int(d["seed"]),
            memory=arr(d["memory"], np.float32),
            matrix=arr(d["matrix"], np.float32),
            index=arr(d["index"], np.int64),
            radius=float(d["radius"]),
            reference=float(d["reference"]),
        )
