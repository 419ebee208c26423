"""Applying the stored recalibration to one image: the recalibrated sigmas and the central
interval of the chosen method (what predict and synthesize call per image)."""

from __future__ import annotations

import math

import numpy as np

from .._arrays import ArrayLike, as_numpy
from ..metrics import ggd_halfwidth, predictive_alpha
from ..recalibrate import IsotonicRecalibration, SigmaScaling
from ..risk import RCPSCalibration
from .entry import METHODS, check_entry, mean_factor


def apply_recalibration(
    recal: dict,
    mean: ArrayLike,
    alpha: ArrayLike,
    beta: ArrayLike,
    total: ArrayLike,
    regions: dict[str, np.ndarray] | None = None,
    method: str | None = None,
) -> dict[str, np.ndarray]:
    """The recalibrated maps of one image (NumPy arrays of one shape, e.g. (H, W)): what
    predict / synthesize call per image with the MC-dropout mean, alpha, beta and total sigma.

    The mean first: ``mean`` is the network's MC mean, mu = c mean with c the entry's
    ``mean_scale`` factor (1 before version 3); everything below uses mu. With s the
    sigma-scaling factor map: given ``regions`` (label-mask boolean maps,
    :func:`.regions.region_masks`), s(x) = per_region[r] for a pixel x of region r when that
    region has a factor, else the global factor; without ``regions`` (a radiograph has no
    masks) s(x) = f_in if mean(x) > t else f_out, the entry's field factors and lung
    threshold (version 2, :meth:`.recalibrate.SigmaScaling.field_map`), or the global factor
    everywhere for an entry without them; alpha_t = total / sqrt(Gamma(3/beta) /
    Gamma(1/beta)), h_p(a, b) = a [P^-1(1/b, p)]^(1/b) and p the stored level (0.9):

        mean         c mean                  (the dark-field written)
        scale        s
        total        s total                 (the recalibrated total sigma)
        alpha        s alpha                 (the GGD scale, scaled alike)
        alpha_total  s alpha_t               (scale of the recalibrated predictive GGD)
        lo, hi       the central p-interval of ``method`` (default: ``method_default``):
            sigma_scaling  mu -+ h_p(s alpha_t, beta)
            isotonic       [F^-1(R^-1((1-p)/2)), F^-1(R^-1((1+p)/2))], F = GGD(mu, alpha_t, beta)
            rcps           mu -+ lambda_hat h_p(alpha_t, beta)   (its level is set by alpha)

    Raises ValueError for an unknown method, or "rcps" when no lambda was certified.
    """
    recal = check_entry(recal, "apply_recalibration")
    method = method or recal["method_default"]
    if method not in METHODS:
        raise ValueError(f"apply_recalibration: method {method!r} not in {METHODS}")
    mu, a, b, tot = (as_numpy(v) for v in (mean, alpha, beta, total))
    mu = mean_factor(recal) * mu
    sc = SigmaScaling.from_dict(recal["sigma_scaling"])
    p = sc.p
    for name, m in (regions or {}).items():
        if np.shape(m) != tot.shape:
            raise ValueError(f"apply_recalibration: region {name!r} {np.shape(m)} != {tot.shape}")
    s = sc.scale_map(regions, tot.shape) if regions else sc.field_map(mu)
    if s.shape != tot.shape:
        raise ValueError(f"apply_recalibration: mean {mu.shape} != total {tot.shape}")
    a_t = predictive_alpha(tot, b)
    if method == "sigma_scaling":
        h = ggd_halfwidth(p, s * a_t, b)
        lo, hi = mu - h, mu + h
    elif method == "isotonic":
        lo, hi = IsotonicRecalibration.from_dict(recal["isotonic"]).interval(p, mu, a_t, b)
    else:
        rc = RCPSCalibration.from_dict(recal["rcps"])
        if not math.isfinite(rc.lambda_hat):
            raise ValueError(
                f"apply_recalibration: no RCPS lambda was certified with {rc.n} calibration "
                "images; use method 'sigma_scaling' or 'isotonic'"
            )
        h = ggd_halfwidth(rc.halfwidth_level, a_t, b)
        lo, hi = rc.interval(mu, h, h)
    return {
        "mean": mu,
        "scale": s,
        "total": s * tot,
        "alpha": s * a,
        "alpha_total": s * a_t,
        "lo": np.asarray(lo, float),
        "hi": np.asarray(hi, float),
    }
