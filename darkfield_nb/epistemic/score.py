"""A per-image out-of-distribution score and its threshold, calibrated on validation images.

Score of one image from a per-pixel map ``u`` (an epistemic sigma, or a feature distance) over
the image's pixels ``P`` (all pixels, or a body mask):

    s = Q_q({u_p : p in P}),    q = 0.99 by default,

the ``q``-quantile of the map (NumPy's linear interpolation): a small region that the model has
never seen (a pacemaker covers about 1 % of a chest image) moves a high quantile, where the mean
would average it away. Feature densities also give a per-image distance directly
(:meth:`darkfield_nb.epistemic.density.FeatureDensity.image_distance`).

Calibration (:class:`OODThreshold`): with in-distribution validation scores ``v_1 .. v_n``, the
threshold is their ``1 - level`` quantile (the 95th percentile for ``level = 0.05``, NumPy's
linear interpolation), and an image is flagged when ``s > threshold``. For scores exchangeable
with the validation ones the expected flagged fraction of new in-distribution images is
``level`` up to O(1/n); its sampling standard deviation over ``m`` held-out images is
about ``sqrt(level (1 - level) / m)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch


def image_score(
    u: np.ndarray | torch.Tensor, mask: np.ndarray | None = None, q: float = 0.99
) -> float:
    """``q``-quantile of the map ``u`` (H, W) over ``mask`` (boolean, same shape; all pixels
    when None)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"image_score: q={q} must be in [0, 1]")
    a = u.detach().cpu().double().numpy() if isinstance(u, torch.Tensor) else np.asarray(u)
    a = np.asarray(a, dtype=np.float64).squeeze()
    if mask is not None:
        m = np.asarray(mask, dtype=bool).squeeze()
        if m.shape != a.shape:
            raise ValueError(f"image_score: map {a.shape} and mask {m.shape} differ in shape")
        a = a[m]
    if a.size == 0:
        raise ValueError("image_score: no pixel to score (empty mask)")
    return float(np.quantile(a, q))


@dataclass
class OODThreshold:
    """Threshold on a per-image OOD score: flag when ``score > threshold``.

    Build with :meth:`calibrate` from in-distribution validation scores.
    """

    threshold: float
    level: float
    n_calibration: int
    score: str = "q99 epistemic"

    @classmethod
    def calibrate(cls, scores, level: float = 0.05, score: str = "q99 epistemic") -> OODThreshold:
        """Threshold at the ``1 - level`` quantile of ``scores`` (in-distribution validation)."""
        v = np.asarray(scores, dtype=np.float64).ravel()
        if not 0.0 < level < 1.0:
            raise ValueError(f"OODThreshold.calibrate: level={level} must be in (0, 1)")
        if v.size < 2 or not np.all(np.isfinite(v)):
            raise ValueError(
                f"OODThreshold.calibrate: need >= 2 finite validation scores, got {v.size}"
            )
        return cls(float(np.quantile(v, 1.0 - level)), float(level), int(v.size), score)

    def flag(self, scores) -> np.ndarray:
        """Boolean array: ``scores > threshold``."""
        return np.asarray(scores, dtype=np.float64) > self.threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OODThreshold:
        return cls(**d)


def image_auroc(ood_scores, in_scores) -> float:
    """Per-image AUROC, P(score of an OOD image > score of an in-distribution image) + ties/2,
    as the Mann-Whitney U / (n_ood n_in) with ranks averaged over ties (the same statistic as
    ``darkfield_nb.ood.pixel_auroc``; not imported from there so that ``ood`` can import this
    module)."""
    o = np.asarray(ood_scores, dtype=np.float64).ravel()
    i = np.asarray(in_scores, dtype=np.float64).ravel()
    if o.size == 0 or i.size == 0:
        raise ValueError(f"image_auroc: {o.size} OOD and {i.size} in-distribution scores")
    from scipy.stats import rankdata  # here: scipy.stats costs 0.3 s at every predict's start-up

    ranks = rankdata(np.concatenate([o, i]))
    u = ranks[: o.size].sum() - o.size * (o.size + 1) / 2
    return float(u / (o.size * i.size))


def rank_vs_median(score: float, in_scores) -> dict[str, float]:
    """Where ``score`` lies among in-distribution scores: its ratio to their median and the
    fraction of them it exceeds (its percentile)."""
    v = np.asarray(in_scores, dtype=np.float64).ravel()
    med = float(np.median(v))
    return {
        "over_median": float(score / med) if med != 0 else float("inf"),
        "percentile": float((v < score).mean() + 0.5 * (v == score).mean()),
        "above_median": bool(score > med),
    }
