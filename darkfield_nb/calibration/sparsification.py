"""Sparsification curves, AUSE and AURG (Ilg et al. 2018, "Uncertainty estimates and
multi-hypotheses networks for optical flow").

Sort the selected pixels by predicted sigma, most uncertain first; remove the fraction f and
compute the error of the rest, E(f), for f on a grid 0 = f_0 < ... < f_K-1 < 1:

    MAE:   E(f) = mean over the kept pixels of |y - mu|
    RMSE:  E(f) = sqrt(mean over the kept pixels of (y - mu)^2)

The *oracle* removes pixels in order of their true |error| (the best any sigma can do); the
*random* curve is the expectation of removing pixels at random, a constant E(0).

Normalization (Ilg et al.): every curve is divided by E(0), the error of all pixels, so the
curves start at 1 and the random curve is 1 everywhere (``normalize=False`` keeps D units).
Areas are trapezoid integrals over f in [0, f_K-1] (default grid f = 0, 0.01, ..., 0.99):

    AUSE = int (E_model(f) - E_oracle(f)) df      (0 for a perfect ranking; lower is better)
    AURG = int (E_random(f) - E_model(f)) df      (> 0 when sigma ranks better than chance)
    AUSE / random = AUSE / int E_random(f) df     (scale free, the same with or without
                                                   normalization; 0 perfect, about
                                                   1 - (oracle area / random area) at chance)

Ties in sigma are broken by a stable sort (pixel order), so sigma = |error| gives AUSE = 0
exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.integrate import trapezoid

from ._arrays import ArrayLike, pixels

METRICS = ("mae", "rmse")


@dataclass
class Sparsification:
    """Curves on ``fractions`` (removed share) and their areas (see the module docstring)."""

    fractions: np.ndarray
    model: np.ndarray
    oracle: np.ndarray
    random: np.ndarray
    ause: float
    aurg: float
    ause_over_random: float
    metric: str
    normalized: bool

    def to_dict(self) -> dict:
        """Areas and curves as plain lists and floats (JSON-able)."""
        return {
            "metric": self.metric,
            "normalized": self.normalized,
            "ause": self.ause,
            "aurg": self.aurg,
            "ause_over_random": self.ause_over_random,
            "fractions": self.fractions.tolist(),
            "model": self.model.tolist(),
            "oracle": self.oracle.tolist(),
        }


def _curve(order_key: np.ndarray, loss: np.ndarray, keep_counts: np.ndarray) -> np.ndarray:
    """Mean ``loss`` over the pixels left after removing those with the largest keys: for each
    kept count m, the m pixels with the smallest ``order_key``."""
    order = np.argsort(-order_key, kind="stable")  # most uncertain first
    tail = np.concatenate([np.cumsum(loss[order][::-1])[::-1], [0.0]])  # tail[k] = sum k..n-1
    n = loss.size
    removed = n - keep_counts
    return tail[removed] / keep_counts


def sparsification(
    sigma: ArrayLike,
    y: ArrayLike,
    mu: ArrayLike,
    mask: ArrayLike | None = None,
    fractions: np.ndarray | None = None,
    metric: str = "mae",
    normalize: bool = True,
) -> Sparsification:
    """Sparsification curves of ``sigma`` against the oracle and random (module docstring).

    Removing the fraction f keeps m = n - floor(f n) pixels (at least 1).
    """
    if metric not in METRICS:
        raise ValueError(f"sparsification: metric={metric!r} must be one of {METRICS}")
    s_, y_, m_ = pixels(sigma, y, mu, mask=mask, name="sparsification")
    f = np.arange(0.0, 1.0, 0.01) if fractions is None else np.asarray(fractions, float)
    if f.size < 2 or np.any(np.diff(f) <= 0) or f[0] < 0 or f[-1] >= 1:
        raise ValueError("sparsification: fractions must increase within [0, 1)")
    err = np.abs(y_ - m_)
    loss = err if metric == "mae" else err**2
    n = loss.size
    keep = np.maximum(n - np.floor(f * n).astype(np.int64), 1)
    model, oracle = _curve(s_, loss, keep), _curve(err, loss, keep)
    full = loss.mean()
    random = np.full_like(f, full)
    if metric == "rmse":
        model, oracle, random = np.sqrt(model), np.sqrt(oracle), np.sqrt(random)
    if normalize:
        scale = random[0] if random[0] > 0 else 1.0
        model, oracle, random = model / scale, oracle / scale, random / scale
    ause = float(trapezoid(model - oracle, f))
    aurg = float(trapezoid(random - model, f))
    area_random = float(trapezoid(random, f))
    return Sparsification(
        fractions=f,
        model=model,
        oracle=oracle,
        random=random,
        ause=ause,
        aurg=aurg,
        ause_over_random=ause / area_random if area_random > 0 else float("nan"),
        metric=metric,
        normalized=normalize,
    )
