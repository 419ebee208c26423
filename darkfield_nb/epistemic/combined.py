"""A per-image out-of-distribution score that sees a global shift and a local anomaly.

An image can be unusual as a whole (a real radiograph from another scanner: every feature moves
a little, and the pooled feature distance grows) or in one small place (a pacemaker, ECG cables,
clips: the pooled features hardly move, but a few pixels lie far from the training features).
One statistic misses one of the two, so the score combines two, each measured against the
in-distribution validation images:

* global, ``pooled``: ``s(x) = (1/|L|) sum_l d_l(pool f_l(x)) / med_l`` (the multi-level pooled
  Mahalanobis distance, :class:`~.density.MultiLevelDensity`);
* local, ``lung_contrast``: inside the predicted lung field ``R = erode(mu > t, e)`` (``mu`` the
  predicted dark-field, ``t = 0.15`` in D units, ``e = 5`` px of erosion that keeps the
  body outline and burnt-in corner markers out of it), the contrast of the pixel distance map
  ``u``, ``c(x) = Q_0.99(u over R) / Q_0.5(u over R)``: a device makes a small part of the lung
  field far more unusual than the rest. Fewer than ``min_pixels`` pixels in ``R`` (no lung
  predicted): ``c = 1``, its lowest possible value, so the global statistic decides alone.

Each statistic ``t_k`` becomes a z-score of its logarithm against the ``n`` validation
images, and the score is the largest:

    z_k = (log t_k - m_k) / s_k,    m_k, s_k = mean and standard deviation (ddof 1) of
                                    log t_k over the validation images,
    score = max_k z_k.

With a log-normal tail for each statistic, ``p_k = 1 - Phi(z_k)`` is its p-value and ``score``
is a monotone function of ``min_k p_k`` (``K min_k p_k`` is the Bonferroni-adjusted p-value of
"either statistic is unusual"); the z-score keeps the score continuous beyond the largest
validation value, where an empirical p-value would tie every image at ``1/(n+1)``.

The validation images' own scores (for the threshold, :class:`~.score.OODThreshold`, the 95th
percentile) are computed leave-one-out: image ``i`` against ``m_k, s_k`` of the other ``n - 1``,
so that they are distributed like the score of a new in-distribution image.
Chosen in ``bench/ood_targets.py`` on half of the simulated device cases.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage

FLOOR = 1e-12  # statistics are positive; the floor keeps log finite for a zero


@dataclass
class LungContrast:
    """``c = Q_hi(u over R) / Q_lo(u over R)``, ``R = erode(mu > mu_threshold, erosion)``
    (module docstring); ``c = 1`` when ``R`` has fewer than ``min_pixels`` pixels."""

    mu_threshold: float = 0.15
    erosion: int = 5
    q_hi: float = 0.99
    q_lo: float = 0.5
    min_pixels: int = 64

    def __call__(self, u, mu) -> np.ndarray:
        """Per image (B,) from the distance map ``u`` and predicted mean ``mu``, (B, 1, H, W)
        tensors or arrays of one shape (or a single 2-D map each)."""
        u, mu = _as_batch(u), _as_batch(mu)
        if u.shape != mu.shape:
            raise ValueError(f"LungContrast: u {u.shape} and mu {mu.shape} differ in shape")
        out = np.ones(u.shape[0])
        for i, (ui, mi) in enumerate(zip(u, mu, strict=True)):
            out[i] = self.contrast(ui[self.region(mi)])
        return out

    def region(self, mu) -> np.ndarray:
        """The lung field ``R = erode(mu > mu_threshold, erosion)`` (bool, the shape of the
        2-D map ``mu``): the pixels :meth:`contrast` reads."""
        region = np.asarray(mu, dtype=np.float64) > self.mu_threshold
        if self.erosion > 0:
            region = ndimage.binary_erosion(region, iterations=self.erosion)
        return region

    def contrast(self, values) -> float:
        """``Q_hi(values) / Q_lo(values)`` of the distances at the pixels of ``R`` (any
        order); 1 for fewer than ``min_pixels`` values or a zero ``Q_lo``."""
        values = np.asarray(values, dtype=np.float64).ravel()
        if values.size < self.min_pixels:
            return 1.0
        lo, hi = np.quantile(values, [self.q_lo, self.q_hi])
        return float(hi / lo) if lo > 0 else 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LungContrast:
        return cls(
            **{k: int(v) if k in ("erosion", "min_pixels") else float(v) for k, v in d.items()}
        )


def _as_batch(a) -> np.ndarray:
    a = a.detach().double().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 2:
        return a[None]
    if a.ndim == 4 and a.shape[1] == 1:
        return a[:, 0]
    raise ValueError(f"LungContrast: expected (H, W) or (B, 1, H, W) maps, got shape {a.shape}")


@dataclass
class MaxZScore:
    """``score = max_k (log t_k - mean_k) / std_k`` over the statistics ``names`` (module
    docstring); ``mean``, ``std`` of the log statistics of the validation images. Statistics
    are passed as a dict ``{name: values (n,)}``; names not in ``names`` are ignored."""

    names: list[str]
    mean: list[float]
    std: list[float]
    local: LungContrast = field(default_factory=LungContrast)

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.mean) == len(self.std)) or not self.names:
            raise ValueError(
                f"MaxZScore: {len(self.names)} names, {len(self.mean)} means, "
                f"{len(self.std)} standard deviations"
            )
        if not all(s > 0 for s in self.std):
            raise ValueError(f"MaxZScore: standard deviations must be > 0, got {self.std}")

    @staticmethod
    def _log(stats: dict, names) -> np.ndarray:
        """(n, K) log statistics, columns in the order of ``names``."""
        missing = [k for k in names if k not in stats]
        if missing:
            raise ValueError(f"MaxZScore: statistics {missing} missing (got {sorted(stats)})")
        t = np.stack([np.asarray(stats[k], dtype=np.float64).ravel() for k in names], 1)
        if not np.isfinite(t).all():
            raise ValueError(f"MaxZScore: non-finite statistics {names}")
        return np.log(np.maximum(t, FLOOR))

    @classmethod
    def calibrate(cls, stats: dict, local: LungContrast | None = None):
        """From the validation statistics ``{name: (n,)}``; returns (the score, the validation
        images' leave-one-out scores (n,)). A statistic with no spread over the validation
        images (e.g. no lung predicted in any: every contrast 1) cannot be standardized and is
        left out; ValueError when none is left or fewer than 3 images are given."""
        names = list(stats)
        lt = cls._log(stats, names)
        n = lt.shape[0]
        if n < 3:
            raise ValueError(f"MaxZScore.calibrate: need >= 3 validation images, got {n}")
        keep = lt.std(0, ddof=1) > 0
        if not keep.any():
            raise ValueError(f"MaxZScore.calibrate: no statistic of {names} varies over validation")
        lt, names = lt[:, keep], [k for k, ok in zip(names, keep, strict=True) if ok]
        score = cls(names, lt.mean(0).tolist(), lt.std(0, ddof=1).tolist(), local or LungContrast())
        loo = np.empty(n)
        for i in range(n):
            rest = np.delete(lt, i, axis=0)
            loo[i] = np.max((lt[i] - rest.mean(0)) / np.maximum(rest.std(0, ddof=1), FLOOR))
        return score, loo

    def z(self, stats: dict) -> np.ndarray:
        """The z-scores (n, K) of statistics ``{name: (n,)}``, columns in the order of
        ``names``."""
        return (self._log(stats, self.names) - np.asarray(self.mean)) / np.asarray(self.std)

    def __call__(self, stats: dict) -> np.ndarray:
        """The score (n,) of statistics ``{name: (n,)}``: the largest z-score."""
        return self.z(stats).max(1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "max_z",
            "names": list(self.names),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "local": self.local.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MaxZScore:
        if d.get("kind", "max_z") != "max_z":
            raise ValueError(f"MaxZScore: unknown per-image score kind {d.get('kind')!r}")
        return cls(
            [str(n) for n in d["names"]],
            [float(v) for v in d["mean"]],
            [float(v) for v in d["std"]],
            LungContrast.from_dict(d["local"]),
        )
