"""One JSON-able table of calibration figures, pooled and per region: what notebook 08 prints
and what ``evaluate`` can store.

For the pixels of each region (and ``"all"``), with the predictive GGD(mu, alpha, beta) and
its standard deviation sigma = alpha sqrt(Gamma(3/beta) / Gamma(1/beta)):

    coverage_<p>         share inside the central p-interval (:func:`.metrics.coverage`)
    miscalibration_area  area between coverage curve and diagonal (100 levels)
    nll_ggd              mean GGD NLL (nats); nll_gaussian: N(mu, sigma^2) with the same sigma
    ence, uce            20 equal-count sigma bins
    sharpness            sqrt(mean sigma^2) (D); width_<p>: mean central p-interval width (D)
    spearman             pooled Spearman(sigma, |y - mu|) (at most ``max_pixels``, seeded)
    ause, aurg, ause_over_random   MAE sparsification, normalized curves (.sparsification)
    pixels               number of pixels
"""

from __future__ import annotations

import numpy as np

from darkfield_nb.ggd import ggd_std

from ._arrays import ArrayLike, as_numpy
from .metrics import (
    coverage,
    ence,
    interval_width,
    miscalibration_area,
    nll_gaussian,
    nll_ggd,
    sharpness,
    spearman,
    uce,
)
from .sparsification import sparsification


def calibration_summary(
    y: ArrayLike,
    mu: ArrayLike,
    alpha: ArrayLike,
    beta: ArrayLike,
    regions: dict[str, np.ndarray] | None = None,
    p: float = 0.9,
    max_pixels: int = 500_000,
    min_pixels: int = 100,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """``{"all": {...}, region: {...}}`` (module docstring); regions with fewer than
    ``min_pixels`` pixels are left out."""
    y, mu, alpha, beta = (as_numpy(a) for a in (y, mu, alpha, beta))
    sigma = as_numpy(ggd_std(alpha, beta))
    selections = {"all": None, **(regions or {})}
    out: dict[str, dict[str, float]] = {}
    key = f"{round(100 * p)}"
    for name, sel in selections.items():
        count = y.size if sel is None else int(np.sum(sel))
        if count < min_pixels:
            continue
        sp = sparsification(sigma, y, mu, mask=sel)
        out[name] = {
            "pixels": count,
            f"coverage_{key}": coverage(y, mu, p, alpha=alpha, beta=beta, mask=sel),
            "miscalibration_area": miscalibration_area(y, mu, alpha=alpha, beta=beta, mask=sel),
            "nll_ggd": nll_ggd(y, mu, alpha, beta, mask=sel),
            "nll_gaussian": nll_gaussian(y, mu, sigma, mask=sel),
            "ence": ence(y, mu, sigma, mask=sel),
            "uce": uce(y, mu, sigma, mask=sel),
            "sharpness": sharpness(sigma, mask=sel),
            f"width_{key}": interval_width(p, alpha=alpha, beta=beta, mask=sel),
            "spearman": spearman(sigma, y - mu, mask=sel, max_pixels=max_pixels, seed=seed),
            "ause": sp.ause,
            "aurg": sp.aurg,
            "ause_over_random": sp.ause_over_random,
        }
    return out
