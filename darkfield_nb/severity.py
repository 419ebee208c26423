"""Disease-severity study: sweep a pathology's severity on fixed patients and ask whether the
model's prediction follows the true dark-field, or its interval says that it cannot.

For each patient seed and severity ``s`` the simulator makes the pair
``simulate(make_patient(seed, 0, case, severity=s), size)``: the same anatomy, framing, display
and noise draws at every severity (``s = 0`` is the healthy pair bit for bit), so along a sweep
only the disease changes. The model sees the processed attenuation radiograph, normalized by
:func:`darkfield_nb.data.normalize_input` as in training, and predicts with MC dropout
(:func:`darkfield_nb.uncertainty.mc_dropout_predict`, ``samples`` passes).

The "true D" is the measured dark-field target (noise, blur, stripes: what a test set holds and
what the predicted distribution is a distribution of); the noise-free D is reported beside it.

Interval. The predictive distribution of a pixel is GGD(mu, alpha_t, beta) with mu the MC mean,
beta the mean shape over the passes and alpha_t = sigma_tot / sqrt(Gamma(3/beta)/Gamma(1/beta))
(:func:`darkfield_nb.calibration.predictive_alpha`, sigma_tot^2 = aleatoric^2 + epistemic^2).
Its central p-interval is mu +- h with h = alpha_t [P^-1(1/beta, p)]^(1/beta)
(:func:`darkfield_nb.calibration.ggd_halfwidth`); a pixel is covered when |y - mu| <= h.

Regions. lung = the lung bit of the mask; lesion = the pathology's bit (emphysema: where the
lesion holds at least 80 % of the lung path, or the whole lung of a diffuse emphysema);
rest = lung and not lesion. The lesion / rest ratio is mean(D | lesion) / mean(D | rest), for
truth and prediction alike; it is NaN when either region has fewer than ``min_pixels`` pixels
or the disease is diffuse (no rest of lung to compare with).

The band of the predicted mean lung D is [mean_lung(mu - h), mean_lung(mu + h)]: the mean of
the per-pixel bounds, i.e. the interval of the lung mean if all pixel errors moved together
(an upper bound on its width: independent errors would average out).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from darkfield_nb import checkpoint as ckpt_io
from darkfield_nb import labels
from darkfield_nb.calibration import ggd_halfwidth, predictive_alpha
from darkfield_nb.data import normalize_input
from darkfield_nb.hardware import pick_device
from darkfield_nb.paths import pretrained_checkpoint
from darkfield_nb.physics import DisplayRanges, FramingRanges, make_patient, simulate
from darkfield_nb.physics.pathology import PATHOLOGY_CASES
from darkfield_nb.uncertainty import mc_dropout_predict

LEVEL = 0.9  # nominal level of the central interval studied
CASE_BITS = {
    "emphysema": labels.EMPHYSEMA,
    "pneumonia": labels.CONSOLIDATION,
    "pneumothorax": labels.PNEUMOTHORAX,
    "effusion": labels.EFFUSION,
    "nodule": labels.NODULE,
}
# verdict thresholds (documented in :func:`severity_verdict`)
SEES_SLOPE = 0.5
SEES_SPEARMAN = 0.5
COVERAGE_TARGET = 0.85


@dataclass
class SweepCase:
    """Maps of one patient at one severity, each (H, W) float32 (``mask``: uint16 label bits).

    ``y`` measured D (the target), ``y_clean`` noise-free D, ``x`` normalized input, ``mu`` MC
    mean, ``aleatoric`` / ``epistemic`` / ``total`` standard deviations, ``beta`` mean shape,
    ``half`` the half-width of the central ``level`` interval (mu +- half).
    """

    patient_seed: int
    severity: float
    case: str
    diffuse: bool | None
    level: float
    y: np.ndarray
    y_clean: np.ndarray
    x: np.ndarray
    mask: np.ndarray
    mu: np.ndarray
    aleatoric: np.ndarray
    epistemic: np.ndarray
    total: np.ndarray
    beta: np.ndarray
    half: np.ndarray

    @property
    def lung(self) -> np.ndarray:
        return labels.has_label(self.mask, labels.LUNG)

    @property
    def lesion(self) -> np.ndarray:
        return labels.has_label(self.mask, CASE_BITS[self.case])

    @property
    def rest(self) -> np.ndarray:
        return self.lung & ~self.lesion


def load_model(
    checkpoint: str | os.PathLike | None = None, device: str | torch.device = "auto"
) -> tuple[torch.nn.Module, int, Path]:
    """(generator, last trained stage (0-based), path) of ``checkpoint`` (None: the shipped
    model, ``data_samples/pretrained.pt``)."""
    path = Path(checkpoint) if checkpoint else pretrained_checkpoint()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    ck = ckpt_io.load_checkpoint(path)
    model = ckpt_io.generator_from_checkpoint(ck, pick_device(device))
    return model, int(ck["stages_trained"]) - 1, path


@torch.no_grad()
def predict_case(
    model: torch.nn.Module,
    patient_seed: int,
    severity: float,
    *,
    case: str = "emphysema",
    size: int = 256,
    samples: int = 20,
    device: str | torch.device = "auto",
    stage: int = -1,
    level: float = LEVEL,
    mc_seed: int = 0,
    framing: FramingRanges | None = None,
    display: DisplayRanges | None = None,
) -> SweepCase:
    """Simulate patient ``patient_seed`` (index 0) with ``case`` at ``severity`` and predict it
    with ``samples`` MC-dropout passes (masks seeded with ``mc_seed``, so a case is repeatable).
    ``framing`` / ``display``: the simulator's ranges (None: its defaults, the varied framing
    and vendor looks; ``FramingRanges.fixed()`` / ``DisplayRanges.fixed()`` the first
    simulator's single framing and look)."""
    if case not in PATHOLOGY_CASES:
        raise ValueError(f"case must be a pathology, one of {', '.join(PATHOLOGY_CASES)}")
    if not 0.0 <= float(severity) <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")
    patient = make_patient(
        int(patient_seed), 0, case, severity=float(severity), framing=framing, display=display
    )
    pair = simulate(patient, int(size))
    x = normalize_input(pair.attenuation.astype(np.float32))
    dev = pick_device(device)
    model = model.to(dev).eval()
    xt = torch.from_numpy(x)[None, None].to(dev)
    mc = mc_dropout_predict(model, xt, samples=samples, seed=mc_seed, stage=stage)
    mu, ale, epi, tot, beta = (
        t[0, 0].float().cpu().numpy()
        for t in (mc.mean, mc.aleatoric, mc.epistemic, mc.total, mc.beta)
    )
    half = ggd_halfwidth(level, predictive_alpha(tot, beta), beta).astype(np.float32)
    diffuse = getattr(patient.pathology, "diffuse", None)
    return SweepCase(
        patient_seed=int(patient_seed),
        severity=float(severity),
        case=case,
        diffuse=None if diffuse is None else bool(diffuse),
        level=float(level),
        y=pair.darkfield.astype(np.float32),
        y_clean=pair.darkfield_clean.astype(np.float32),
        x=x,
        mask=pair.mask,
        mu=mu,
        aleatoric=ale,
        epistemic=epi,
        total=tot,
        beta=beta,
        half=half,
    )


def _mean(a: np.ndarray, region: np.ndarray) -> float:
    return float(a[region].mean()) if region.any() else math.nan


def case_row(c: SweepCase, min_pixels: int = 20) -> dict:
    """The figures of one case (see the module docstring for regions, interval and ratio).

    Keys: patient_seed, severity, case, diffuse, lung_pixels, lesion_pixels, true_lung_D,
    true_lung_D_clean, pred_lung_D, pred_lung_D_lo / _hi (band), true_ratio, pred_ratio,
    coverage_lesion, coverage_lung (share of pixels with |y - mu| <= half), width_lesion,
    width_rest, width_lung (mean 2 half), aleatoric_lesion / _rest, epistemic_lesion / _rest
    (mean sigma). Lesion figures are NaN without lesion pixels (severity 0).
    """
    lung, lesion, rest = c.lung, c.lesion, c.rest
    covered = np.abs(c.y - c.mu) <= c.half
    n_les, n_rest = int(lesion.sum()), int(rest.sum())
    ratio_ok = n_les >= min_pixels and n_rest >= min_pixels and not c.diffuse

    def ratio(a: np.ndarray) -> float:
        return _mean(a, lesion) / _mean(a, rest) if ratio_ok else math.nan

    return {
        "patient_seed": c.patient_seed,
        "severity": c.severity,
        "case": c.case,
        "diffuse": c.diffuse,
        "lung_pixels": int(lung.sum()),
        "lesion_pixels": n_les,
        "true_lung_D": _mean(c.y, lung),
        "true_lung_D_clean": _mean(c.y_clean, lung),
        "pred_lung_D": _mean(c.mu, lung),
        "pred_lung_D_lo": _mean(c.mu - c.half, lung),
        "pred_lung_D_hi": _mean(c.mu + c.half, lung),
        "true_ratio": ratio(c.y),
        "pred_ratio": ratio(c.mu),
        "coverage_lesion": _mean(covered, lesion),
        "coverage_lung": _mean(covered, lung),
        "width_lesion": _mean(2 * c.half, lesion),
        "width_rest": _mean(2 * c.half, rest),
        "width_lung": _mean(2 * c.half, lung),
        "aleatoric_lesion": _mean(c.aleatoric, lesion),
        "aleatoric_rest": _mean(c.aleatoric, rest),
        "epistemic_lesion": _mean(c.epistemic, lesion),
        "epistemic_rest": _mean(c.epistemic, rest),
    }


def severity_sweep(
    model: torch.nn.Module,
    *,
    patient_seeds: Sequence[int],
    severities: Sequence[float],
    case: str = "emphysema",
    size: int = 256,
    samples: int = 20,
    device: str | torch.device = "auto",
    progress: bool = True,
    stage: int = -1,
    level: float = LEVEL,
    framing: FramingRanges | None = None,
    display: DisplayRanges | None = None,
    keep: list | None = None,
) -> list[dict]:
    """One row (:func:`case_row`) per patient x severity, patients outer, severities in the
    given order. Every case uses MC seed 0 (:func:`predict_case`). ``keep``: a list that
    receives each :class:`SweepCase` (the maps), for pictures."""
    if not patient_seeds or not severities:
        raise ValueError("severity_sweep: give at least one patient seed and one severity")
    dev = pick_device(device)
    rows = []
    grid = [(p, s) for p in patient_seeds for s in severities]
    for p, s in tqdm(grid, desc="severity sweep", disable=not progress):
        c = predict_case(
            model,
            p,
            s,
            case=case,
            size=size,
            samples=samples,
            device=dev,
            stage=stage,
            level=level,
            framing=framing,
            display=display,
        )
        rows.append(case_row(c))
        if keep is not None:
            keep.append(c)
    return rows


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


def load_rows(path: str | os.PathLike) -> list[dict]:
    """Rows written by :func:`save_rows`, with null figures back as NaN (``diffuse`` stays
    None where the pathology has no such property)."""
    import json

    rows = json.loads(Path(path).read_text())
    return [
        {k: math.nan if v is None and k != "diffuse" else v for k, v in r.items()} for r in rows
    ]


def severity_verdict(summary: dict) -> str:
    """The study's answer in words, computed from :func:`emphysema_summary`'s figures.

    "sees the disease": the within-patient slope of predicted on true lung D is at least
    ``SEES_SLOPE`` (0.5) and Spearman of the lesion / rest ratios at least ``SEES_SPEARMAN``
    (0.5; when fewer than 3 cases have a ratio, the slope alone decides and the text says so).
    "says it cannot": the lesion coverage of the central 90 % interval is at least
    ``COVERAGE_TARGET`` (0.85, the issue's bar). Both, one or neither may hold.
    """
    s = summary
    rho = s["spearman_ratio"]
    has_rho = math.isfinite(rho)
    sees = s["slope_lung_D_within"] >= SEES_SLOPE and (not has_rho or rho >= SEES_SPEARMAN)
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
    elif covers:
        answer = "The model does not follow the disease, but its interval is wide enough to say so."
    else:
        answer = (
            "The model neither follows the disease nor widens its interval enough to cover it: "
            "it misses emphysema silently."
        )
    return f"{answer} {facts}"
