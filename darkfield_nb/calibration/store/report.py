"""The calibration figures of a split (the test split) before and after the stored
recalibration: what ``evaluate --json`` adds (:func:`calibration_report`)."""

from __future__ import annotations

import math

import numpy as np

from ..collect import Predictions
from ..metrics import area_between, ggd_halfwidth, observed_coverage, pit
from ..recalibrate import IsotonicRecalibration, SigmaScaling
from ..report import calibration_summary
from ..risk import RCPSCalibration, needed_lambda
from .entry import check_entry, mean_factor, strict_json

MIN_REGION_PIXELS = 100  # as calibration_summary: smaller regions are left out of the report


def _selections(regions: dict[str, np.ndarray], min_pixels: int) -> dict:
    """``{"all": None, region: mask}`` for the regions with at least ``min_pixels`` pixels."""
    sel: dict[str, np.ndarray | None] = {"all": None}
    sel.update({k: m for k, m in regions.items() if int(m.sum()) >= min_pixels})
    return sel


def calibration_report(preds: Predictions, recal: dict, level_factor=None, **summary_kw) -> dict:
    """Every figure of :func:`.report.calibration_summary`, pooled and per region, on ``preds``
    (the test split) before and after the stored recalibration: what ``evaluate --json`` adds.

    ``before`` is the network's mean mu and total sigma as they are. ``level_factor``: the lung
    level's factors g (N,) of these images (``level.LungLevel.factors``), None without a level:
    every ``after`` figure is then on g mu and g total. Every ``after`` figure is on the scaled
    mean c mu (c the entry's mean factor, 1 before version 3; ``after.mean_scale``:
    that alone, sigma unchanged), as predict writes it. ``after.sigma_scaling`` uses the global
    factor, ``after.sigma_scaling_per_region`` the
    (label-mask) region factors and, for an entry with field factors (version 2),
    ``after.sigma_scaling_per_field`` s(x) = f_in if mu(x) > t else f_out: what predict and
    synthesize apply to radiographs without masks (the global factor for older entries).
    Isotonic recalibration maps F to R(F), no longer a GGD: its entry gives coverage_<p>,
    miscalibration_area (from the recalibrated central PITs |2 R(u) - 1|) and width_<p>
    (mean of hi - lo). RCPS gives, at lambda_hat, the coverage and mean width of
    mu -+ lambda_hat h_p and ``risk``, the mean over images of their share of missed pixels
    (the quantity it controls; None when no lambda was certified). Strict JSON.
    """
    recal = check_entry(recal, "calibration_report")
    raw, a_raw = preds.mu, preds.alpha_total
    if level_factor is not None:
        preds = preds.scaled(level_factor)
    y, beta, a_t = preds.y, preds.beta, preds.alpha_total
    mu = mean_factor(recal) * preds.mu
    regions = preds.regions()
    sc = SigmaScaling.from_dict(recal["sigma_scaling"])
    p = float(summary_kw.pop("p", sc.p))
    selections = _selections(regions, summary_kw.get("min_pixels", MIN_REGION_PIXELS))
    key = f"{round(100 * p)}"

    def summary(a, mean=mu):
        return calibration_summary(y, mean, a, beta, regions, p=p, **summary_kw)

    iso = IsotonicRecalibration.from_dict(recal["isotonic"])
    c_iso = iso.central_pit(pit(y, mu, alpha=a_t, beta=beta))
    lo, hi = iso.interval(p, mu, a_t, beta)
    iso_out = {}
    for name, sel in selections.items():
        levels, observed = observed_coverage(c_iso, mask=sel, levels=100)
        iso_out[name] = {
            "pixels": int(y.size if sel is None else sel.sum()),
            f"coverage_{key}": float(np.mean(c_iso[sel] <= p if sel is not None else c_iso <= p)),
            "miscalibration_area": area_between(levels, observed),
            f"width_{key}": float(np.mean((hi - lo)[sel] if sel is not None else hi - lo)),
        }
    rc = RCPSCalibration.from_dict(recal["rcps"])
    rcps_out: dict = {"lambda_hat": recal["rcps"]["lambda_hat"], "alpha": rc.alpha, "risk": None}
    if math.isfinite(rc.lambda_hat):
        h = ggd_halfwidth(rc.halfwidth_level, a_t, beta)
        inside = needed_lambda(y, mu, h, h) <= rc.lambda_hat
        rcps_out["risk"] = float(np.mean(1.0 - inside.mean(axis=(1, 2))))
        for name, sel in selections.items():
            rcps_out[name] = {
                "pixels": int(y.size if sel is None else sel.sum()),
                "coverage": float(inside.mean() if sel is None else inside[sel].mean()),
                "width": float(2 * rc.lambda_hat * (h.mean() if sel is None else h[sel].mean())),
            }
    after = {
        "mean_scale": summary(a_t),
        "sigma_scaling": summary(sc.factor * a_t),
        "sigma_scaling_per_region": summary(sc.scale_map(regions) * a_t),
    }
    if sc.per_field:
        after["sigma_scaling_per_field"] = summary(sc.field_map(mu) * a_t)
    return strict_json(
        {
            "method_default": recal["method_default"],
            "n_images": len(y),
            "level": p,
            "fitted_on": recal.get("fitted_on"),
            "before": summary(a_raw, raw),
            "after": {**after, "isotonic": iso_out, "rcps": rcps_out},
        }
    )
