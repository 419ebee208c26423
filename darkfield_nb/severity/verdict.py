"""The severity study's figures over a sweep (:func:`emphysema_summary`), its rows as strict
JSON, and its answer in words (:func:`severity_verdict`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats

# verdict thresholds (documented in :func:`severity_verdict`)
SEES_SLOPE = 0.5
SEES_SPEARMAN = 0.5
COVERAGE_TARGET = 0.85


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y on x: sum (x - xbar)(y - ybar) / sum (x - xbar)^2."""
    dx = x - x.mean()
    den = float(np.sum(dx * dx))
    return float(np.sum(dx * (y - y.mean())) / den) if den > 0 else math.nan


def emphysema_summary(rows: Sequence[dict]) -> dict:
    """Figures over all rows of a sweep.

    * coverage_lesion: pooled share of lesion pixels covered, sum_i n_i c_i / sum_i n_i over
      rows with lesion pixels (``n_i`` lesion pixels, ``c_i`` their coverage); coverage_lung
      likewise over lung pixels.
    * spearman_ratio (and its p value, n_ratio cases): scipy.stats.spearmanr of predicted
      against true lesion / rest ratio over the rows where both are finite.
    * slope_lung_D / intercept_lung_D: least squares of predicted on true mean lung D over all
      rows; slope_lung_D_within: the same after subtracting each patient's means (how much the
      prediction moves when only the disease changes); spearman_lung_D over all rows.
    * width_lesion / width_rest / epistemic_lesion / epistemic_rest: means over lesion rows.
    * bias_lung_D: mean of (predicted - true) / true lung D.
    * by_severity: for each severity (key ``f"{s:g}"``): the pooled lesion coverage and the
      means of width_lesion, width_rest, true and predicted lung D over its rows: whether the
      coverage holds, and the interval widens, as the disease grows.
    """
    if not rows:
        raise ValueError("emphysema_summary: no rows")
    t = np.array([r["true_lung_D"] for r in rows], float)
    p = np.array([r["pred_lung_D"] for r in rows], float)
    pid = np.array([r["patient_seed"] for r in rows])
    t_w, p_w = t.copy(), p.copy()
    for q in np.unique(pid):
        sel = pid == q
        t_w[sel] -= t[sel].mean()
        p_w[sel] -= p[sel].mean()
    les = [r for r in rows if r["lesion_pixels"] > 0]
    n_les = np.array([r["lesion_pixels"] for r in les], float)
    n_lung = np.array([r["lung_pixels"] for r in rows], float)
    rat = [(r["true_ratio"], r["pred_ratio"]) for r in rows]
    rat = np.array([v for v in rat if np.isfinite(v[0]) and np.isfinite(v[1])], float)
    rho, pval = (math.nan, math.nan)
    if len(rat) >= 3:
        res = stats.spearmanr(rat[:, 1], rat[:, 0])
        rho, pval = float(res.statistic), float(res.pvalue)

    def les_mean(key: str) -> float:
        return float(np.mean([r[key] for r in les])) if les else math.nan

    cov_les = [r["coverage_lesion"] for r in les]
    by_severity = {}
    for sev in sorted({r["severity"] for r in rows}):
        at = [r for r in rows if r["severity"] == sev]
        at_les = [r for r in at if r["lesion_pixels"] > 0]
        n = sum(r["lesion_pixels"] for r in at_les)
        by_severity[f"{sev:g}"] = {
            "coverage_lesion": (
                sum(r["lesion_pixels"] * r["coverage_lesion"] for r in at_les) / n
                if n
                else math.nan
            ),
            **{
                k: float(np.mean([r[k] for r in at]))
                for k in ("width_lesion", "width_rest", "true_lung_D", "pred_lung_D")
            },
        }
    return {
        "n_cases": len(rows),
        "n_lesion_cases": len(les),
        "n_ratio": int(len(rat)),
        "coverage_lesion": float(np.dot(n_les, cov_les) / n_les.sum()) if les else math.nan,
        "coverage_lung": float(np.dot(n_lung, [r["coverage_lung"] for r in rows]) / n_lung.sum()),
        "spearman_ratio": rho,
        "spearman_ratio_p": pval,
        "slope_lung_D": _slope(t, p),
        "intercept_lung_D": float(p.mean() - _slope(t, p) * t.mean()) if len(t) > 1 else math.nan,
        "slope_lung_D_within": _slope(t_w, p_w),
        "spearman_lung_D": float(stats.spearmanr(p, t).statistic) if len(t) >= 3 else math.nan,
        "bias_lung_D": float(np.mean((p - t) / t)),
        "width_lesion": les_mean("width_lesion"),
        "width_rest": les_mean("width_rest"),
        "epistemic_lesion": les_mean("epistemic_lesion"),
        "epistemic_rest": les_mean("epistemic_rest"),
        "by_severity": by_severity,
    }


def json_ready(obj):
    """``obj`` (rows, a summary) with every non-finite float replaced by None, for strict
    JSON (:func:`darkfield_nb.atomic.write_json` refuses NaN)."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    if isinstance(obj, float | np.floating) and not math.isfinite(float(obj)):
        return None
    return obj


def save_rows(path: str | os.PathLike, rows: Sequence[dict]) -> Path:
    """Write sweep rows as strict JSON (NaN as null, :func:`json_ready`), atomically."""
    from darkfield_nb.atomic import write_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, json_ready(list(rows)))
    return path


# what a row written before the study applied predict's level and mean factor was: the bare
# network's (no level, no mean factor)
OLD_ROW_DEFAULTS = {
    "as_written": False,
    "lung_level": math.nan,
    "level_factor": 1.0,
    "mean_factor": 1.0,
}


def load_rows(path: str | os.PathLike) -> list[dict]:
    """Rows written by :func:`save_rows`, with null figures back as NaN (``diffuse`` stays
    None where the pathology has no such property). A row written before the keys
    ``as_written`` / ``lung_level`` / ``level_factor`` / ``mean_factor`` existed was the bare
    network's, and gets them as such (False, NaN, 1, 1: ``OLD_ROW_DEFAULTS``)."""
    import json

    rows = json.loads(Path(path).read_text())
    return [
        {
            **OLD_ROW_DEFAULTS,
            **{k: math.nan if v is None and k != "diffuse" else v for k, v in r.items()},
        }
        for r in rows
    ]


def severity_verdict(summary: dict) -> str:
    """The study's answer in words, computed from :func:`emphysema_summary`'s figures.

    "sees the disease": the within-patient slope of predicted on true lung D is at least
    ``SEES_SLOPE`` (0.5) and Spearman of the lesion / rest ratios at least ``SEES_SPEARMAN``
    (0.5; when fewer than 3 cases have a ratio, the slope alone decides and the text says so).
    "says it cannot": the lesion coverage of the central 90 % interval is at least
    ``COVERAGE_TARGET`` (0.85, the issue's bar). Both, one or neither may hold. A slope of at
    least 0.5 with a lower ratio Spearman is said as it is: the model follows the disease's
    effect on the whole lung's D (as a lung level does) without placing the lesion.
    """
    s = summary
    rho = s["spearman_ratio"]
    has_rho = math.isfinite(rho)
    follows = s["slope_lung_D_within"] >= SEES_SLOPE  # the whole lung's D moves with it
    places = not has_rho or rho >= SEES_SPEARMAN  # the lesion is lower than the rest
    sees = follows and places
    rho_text = (
        f"{rho:.2f} over {s['n_ratio']} cases"
        if has_rho
        else f"not computed ({s['n_ratio']} cases with a ratio, fewer than 3)"
    )
    covers = s["coverage_lesion"] >= COVERAGE_TARGET
    facts = (
        f"Within a patient, the predicted lung D moves by {s['slope_lung_D_within']:.2f} per "
        f"unit of true lung D (slope over all cases {s['slope_lung_D']:.2f}, Spearman "
        f"{s['spearman_lung_D']:.2f}, mean relative bias {100 * s['bias_lung_D']:+.0f} %). "
        f"Spearman of predicted against true lesion/rest ratio: {rho_text}. "
        f"The central 90 % interval covers "
        f"{100 * s['coverage_lesion']:.0f} % of the emphysematous pixels (target >= "
        f"{100 * COVERAGE_TARGET:.0f} %) and {100 * s['coverage_lung']:.0f} % of all lung "
        f"pixels; it is {s['width_lesion']:.3f} wide "
        f"in the lesions against {s['width_rest']:.3f} in the rest of the lung."
    )
    levels = [
        (k, v)
        for k, v in s.get("by_severity", {}).items()
        if v["coverage_lesion"] is not None and math.isfinite(v["coverage_lesion"])  # None: JSON
    ]
    if len(levels) >= 2:
        (k0, v0), (k1, v1) = levels[0], levels[-1]
        facts += (
            f" From severity {k0} to {k1} the lesion coverage goes from "
            f"{100 * v0['coverage_lesion']:.0f} % to {100 * v1['coverage_lesion']:.0f} % and the "
            f"lesion interval width from {v0['width_lesion']:.3f} to {v1['width_lesion']:.3f}."
        )
    if sees and covers:
        answer = "The model sees the disease in the attenuation image, and its interval covers it."
    elif sees:
        answer = "The model sees the disease, but its interval is too narrow in the lesions."
    elif follows and covers:
        answer = (
            "The model follows the disease's effect on the whole lung's D but does not place "
            "the lesion; its interval is wide enough to cover the lesions."
        )
    elif follows:
        answer = (
            "The model follows the disease's effect on the whole lung's D but does not place "
            "the lesion, and its interval misses part of the lesions."
        )
    elif covers:
        answer = "The model does not follow the disease, but its interval is wide enough to say so."
    else:
        answer = (
            "The model neither follows the disease nor widens its interval enough to cover it: "
            "it misses emphysema silently."
        )
    return f"{answer} {facts}"
