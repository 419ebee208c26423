"""Recalibration stored with a model: fit on the validation split, write it into a checkpoint,
apply it to each new image, and report the calibration figures before and after.

Every recalibrator is fitted to the same predictive distribution, GGD(mu, alpha_t, beta) with

    alpha_t = total / sqrt(Gamma(3/beta) / Gamma(1/beta))      (:func:`.metrics.predictive_alpha`)

the GGD of the predicted shape beta whose standard deviation is the total MC-dropout sigma
(total^2 = aleatoric^2 + epistemic^2). A checkpoint carries the fit under the key
``"recalibration"``, a strict-JSON dict (it survives ``torch.load(weights_only=True)``)::

    version          1
    method_default   "sigma_scaling": the interval predict / synthesize write unless told
    sigma_scaling    SigmaScaling.to_dict(): global factor s, one factor per region, method, p
    isotonic         IsotonicRecalibration.to_dict(): Kuleshov's R on a grid of PIT levels
    rcps             RCPSCalibration.to_dict(): lambda_hat (None: no lambda certified), alpha,
                     delta, n, halfwidth_level
    fitted_on        {"data", "split", "n_images", "samples", "seed", "stage"}
    fit_coverage     coverage of the central p-interval on the fitting split, before and after
    guarantee        one sentence: what the fit promises and for which images

The corrections and the RCPS guarantee hold only for images exchangeable with the validation
images they were fitted on; nothing here says anything about a device or a scanner never seen.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from darkfield_nb import checkpoint
from darkfield_nb.checkpoint_entry import check_destination, write_checkpoint_entry
from darkfield_nb.data import PairedDataset, require_splits
from darkfield_nb.hardware import pick_device

from ._arrays import ArrayLike, as_numpy
from .collect import Predictions, collect_predictions
from .metrics import (
    area_between,
    coverage,
    ggd_halfwidth,
    observed_coverage,
    pit,
    predictive_alpha,
)
from .recalibrate import IsotonicRecalibration, SigmaScaling, fit_isotonic, fit_sigma_scaling
from .report import calibration_summary
from .risk import RCPSCalibration, needed_lambda, rcps_lambda, risk_curves

KEY = "recalibration"
VERSION = 1
METHODS = ("sigma_scaling", "isotonic", "rcps")
#: lambda grid of the RCPS search, in units of the central p half-width (1: uncalibrated).
LAMBDAS = np.linspace(0.0, 6.0, 601)
MIN_REGION_PIXELS = 100  # as calibration_summary: smaller regions are left out of the report


def _strict(value):
    """``value`` as strict JSON data: NumPy scalars to Python, NaN / +-inf to None."""
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


# ----------------------------------------------------------------------------- fit
def _fit_coverage(preds: Predictions, regions: dict, sc, iso, rcps, p: float) -> dict:
    """Coverage of the central p-interval on the fitting pixels, before and after each fit."""
    y, mu, beta, a_t = preds.y, preds.mu, preds.beta, preds.alpha_total
    u = pit(y, mu, alpha=a_t, beta=beta)
    out = {
        "p": p,
        "before": coverage(y, mu, p, alpha=a_t, beta=beta),
        "sigma_scaling": coverage(y, mu, p, alpha=sc.factor * a_t, beta=beta),
        "sigma_scaling_per_region": coverage(
            y, mu, p, alpha=sc.scale_map(regions) * a_t, beta=beta
        ),
        "isotonic": float(np.mean(iso.central_pit(u) <= p)),
        "rcps": None,
    }
    if math.isfinite(rcps.lambda_hat):
        q = ggd_halfwidth(p, a_t, beta)
        need = needed_lambda(y, mu, q, q)
        out["rcps"] = float(np.mean(need <= rcps.lambda_hat))
    return out


def fit_recalibration(
    model: torch.nn.Module,
    data_root: str | os.PathLike,
    *,
    split: str = "val",
    samples: int = 20,
    device: str | torch.device = "auto",
    alpha: float = 0.1,
    delta: float = 0.1,
    progress: bool = True,
    stage: int = -1,
    seed: int = 0,
    p: float = 0.9,
    scaling_method: str = "coverage",
    min_pixels: int = 1000,
    cache: str | os.PathLike | None = None,
) -> dict:
    """Fit every recalibrator on the MC-dropout predictions of ``split`` (the validation split:
    never the test split) and return the strict-JSON entry described in the module docstring.

    Args:
        model: the generator; ``stage`` (0-based, -1 the last) is the stage predicted.
        data_root: paired data folder with a non-empty ``split``.
        samples, seed: MC-dropout passes, and the seed of image i's masks (``seed + i``).
        alpha, delta: RCPS risk level and failure probability: lambda_hat is such that, with
            probability >= 1 - delta over the calibration images, a new exchangeable image has
            an expected share <= alpha of its pixels outside mu -+ lambda_hat h_p.
        p: level of the central interval (sigma scaling's coverage target, RCPS half-width).
        scaling_method: "coverage" (the p-interval covers the share p of the validation
            pixels, globally and in each region) or "nll" (the GGD NLL is smallest).
        min_pixels: regions with fewer validation pixels keep the global factor.
        cache: optional .npz path for the predictions (:func:`.collect.collect_predictions`).
    """
    require_splits(data_root, (split,), "calibration")
    dataset = PairedDataset(data_root, split=split, pad_multiple=1)
    preds = collect_predictions(
        model,
        dataset,
        samples=samples,
        seed=seed,
        device=pick_device(device),
        stage=stage,
        cache=cache,
        progress=progress,
    )
    y, mu, beta, a_t = preds.y, preds.mu, preds.beta, preds.alpha_total
    regions = preds.regions()
    sc = fit_sigma_scaling(
        y, mu, a_t, beta, method=scaling_method, p=p, regions=regions, min_pixels=min_pixels
    )
    iso = fit_isotonic(pit(y, mu, alpha=a_t, beta=beta), seed=seed)
    q = ggd_halfwidth(p, a_t, beta)
    res = rcps_lambda(risk_curves(needed_lambda(y, mu, q, q), LAMBDAS), LAMBDAS, alpha, delta)
    rcps = RCPSCalibration(res.lambda_hat, alpha, delta, res.n, halfwidth_level=p)
    n = len(preds.y)
    guarantee = (
        f"These corrections, and the RCPS promise (with probability >= {1 - delta:g} the "
        f"expected share of a new image's pixels outside mu +- lambda_hat x the {100 * p:g} % "
        f"half-width is <= {alpha:g}), hold only for images exchangeable with the {n} "
        f"'{split}' images of {data_root}; they are not valid for devices, pathologies or "
        "scanners never seen in that set."
    )
    return _strict(
        {
            "version": VERSION,
            "method_default": "sigma_scaling",
            "sigma_scaling": sc.to_dict(),
            "isotonic": iso.to_dict(),
            "rcps": rcps.to_dict(),
            "fitted_on": {
                "data": str(data_root),
                "split": split,
                "n_images": n,
                "samples": int(samples),
                "seed": int(seed),
                "stage": int(stage),
            },
            "fit_coverage": _fit_coverage(preds, regions, sc, iso, rcps, p),
            "guarantee": guarantee,
        }
    )


# ----------------------------------------------------------------------------- storage
def _check_destination(src: Path, dst: Path, overwrite: bool) -> None:
    """Refuse an existing ``dst`` unless ``overwrite``; make sure its folder is writable."""
    check_destination(src, dst, overwrite)


def _check_entry(recal: dict, where: str) -> dict:
    """``recal`` if it is a usable recalibration entry, else ValueError naming ``where``."""
    if not isinstance(recal, dict):
        raise ValueError(f"{where}: recalibration entry is a {type(recal).__name__}, not a dict")
    missing = [k for k in ("method_default", *METHODS) if k not in recal]
    if missing:
        raise ValueError(f"{where}: recalibration entry lacks {missing}")
    if recal["method_default"] not in METHODS:
        raise ValueError(f"{where}: method_default {recal['method_default']!r} not in {METHODS}")
    if int(recal.get("version", 1)) > VERSION:
        raise ValueError(f"{where}: recalibration version {recal['version']} is newer than this")
    try:
        json.dumps(recal, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: recalibration entry is not strict JSON ({err})") from err
    return recal


def recalibration_of(ckpt: dict) -> dict | None:
    """The recalibration stored in a raw checkpoint dict (:func:`checkpoint.load_checkpoint`),
    or None when it has none. Raises ValueError when the entry is malformed."""
    recal = ckpt.get(KEY)
    return None if recal is None else _check_entry(recal, "checkpoint")


def write_calibrated_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    recalibration: dict,
    *,
    overwrite: bool = False,
) -> Path:
    """Copy checkpoint ``src`` to ``dst`` with ``recalibration`` stored under ``"recalibration"``
    (replacing one ``src`` may carry), atomically; return ``dst``.

    An existing ``dst`` (``src`` itself included) is replaced only with ``overwrite=True``. The
    file is checked before it takes the name ``dst``: it must load with
    :func:`checkpoint.load_checkpoint`, rebuild with :func:`checkpoint.generator_from_checkpoint`
    and give back the same entry.

    Raises:
        FileNotFoundError / CheckpointError: ``src`` is missing or not a checkpoint.
        FileExistsError: ``dst`` exists and ``overwrite`` is False (naming it).
        WriteError: ``dst`` cannot be written (naming it).
        ValueError: ``recalibration`` is not a strict-JSON recalibration entry.
    """
    _check_entry(recalibration, str(dst))
    plain = json.loads(json.dumps(recalibration))  # a plain copy
    return write_checkpoint_entry(
        src, dst, KEY, plain, read_back=recalibration_of, overwrite=overwrite
    )


def calibrate_checkpoint(
    src: str | os.PathLike,
    data_root: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    overwrite: bool = False,
    device: str | torch.device = "auto",
    **fit_kw,
) -> tuple[Path, dict]:
    """``darkfield-nb calibrate``: check the inputs and the output first, fit on the validation
    split (:func:`fit_recalibration`, keyword arguments passed on; the stage is the last one
    trained), write ``dst`` (:func:`write_calibrated_checkpoint`). Returns (dst, entry).
    Refuses the test split: a calibration fitted there would be scored on the pixels it saw."""
    src, dst = Path(src), Path(dst)
    if fit_kw.get("split", "val") == "test":
        raise ValueError(
            f"{data_root}: refusing to calibrate on the 'test' split; fit on 'val' and keep "
            "'test' for evaluate"
        )
    ckpt = checkpoint.load_checkpoint(src)
    _check_destination(src, dst, overwrite)
    require_splits(data_root, (fit_kw.get("split", "val"),), "calibration")
    device = pick_device(device)
    try:
        model = checkpoint.generator_from_checkpoint(ckpt, device)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise checkpoint.CheckpointError(f"{src}: cannot rebuild the generator ({exc})") from exc
    fit_kw.setdefault("stage", int(ckpt["stages_trained"]) - 1)
    recal = fit_recalibration(model, data_root, device=device, **fit_kw)
    return write_calibrated_checkpoint(src, dst, recal, overwrite=overwrite), recal


# ----------------------------------------------------------------------------- apply
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

    With s the sigma-scaling factor map, s(x) = per_region[r] for a pixel x of region r of
    ``regions`` (boolean maps, :func:`.regions.region_masks`) when that region has a factor,
    else the global factor (everywhere when ``regions`` is None, as for radiographs without
    masks), alpha_t = total / sqrt(Gamma(3/beta) / Gamma(1/beta)), h_p(a, b) =
    a [P^-1(1/b, p)]^(1/b) and p the stored level (0.9):

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
    recal = _check_entry(recal, "apply_recalibration")
    method = method or recal["method_default"]
    if method not in METHODS:
        raise ValueError(f"apply_recalibration: method {method!r} not in {METHODS}")
    mu, a, b, tot = (as_numpy(v) for v in (mean, alpha, beta, total))
    sc = SigmaScaling.from_dict(recal["sigma_scaling"])
    p = sc.p
    for name, m in (regions or {}).items():
        if np.shape(m) != tot.shape:
            raise ValueError(f"apply_recalibration: region {name!r} {np.shape(m)} != {tot.shape}")
    s = sc.scale_map(regions or None, tot.shape)
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
        "scale": s,
        "total": s * tot,
        "alpha": s * a,
        "alpha_total": s * a_t,
        "lo": np.asarray(lo, float),
        "hi": np.asarray(hi, float),
    }


# ----------------------------------------------------------------------------- report
def _selections(regions: dict[str, np.ndarray], min_pixels: int) -> dict:
    """``{"all": None, region: mask}`` for the regions with at least ``min_pixels`` pixels."""
    sel: dict[str, np.ndarray | None] = {"all": None}
    sel.update({k: m for k, m in regions.items() if int(m.sum()) >= min_pixels})
    return sel


def calibration_report(preds: Predictions, recal: dict, **summary_kw) -> dict:
    """Every figure of :func:`.report.calibration_summary`, pooled and per region, on ``preds``
    (the test split) before and after the stored recalibration: what ``evaluate --json`` adds.

    ``after.sigma_scaling`` uses the global factor (what predict applies to radiographs without
    masks), ``after.sigma_scaling_per_region`` the region factors. Isotonic recalibration maps
    F to R(F), no longer a GGD: its entry gives coverage_<p>, miscalibration_area (from the
    recalibrated central PITs |2 R(u) - 1|) and width_<p> (mean of hi - lo). RCPS gives, at
    lambda_hat, the coverage and mean width of mu -+ lambda_hat h_p and ``risk``, the mean over
    images of their share of missed pixels (the quantity it controls; None when no lambda was
    certified). Strict JSON.
    """
    recal = _check_entry(recal, "calibration_report")
    y, mu, beta, a_t = preds.y, preds.mu, preds.beta, preds.alpha_total
    regions = preds.regions()
    sc = SigmaScaling.from_dict(recal["sigma_scaling"])
    p = float(summary_kw.pop("p", sc.p))
    selections = _selections(regions, summary_kw.get("min_pixels", MIN_REGION_PIXELS))
    key = f"{round(100 * p)}"

    def summary(a):
        return calibration_summary(y, mu, a, beta, regions, p=p, **summary_kw)

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
    return _strict(
        {
            "method_default": recal["method_default"],
            "n_images": len(y),
            "level": p,
            "fitted_on": recal.get("fitted_on"),
            "before": summary(a_t),
            "after": {
                "sigma_scaling": summary(sc.factor * a_t),
                "sigma_scaling_per_region": summary(sc.scale_map(regions) * a_t),
                "isotonic": iso_out,
                "rcps": rcps_out,
            },
        }
    )


__all__ = [
    "apply_recalibration",
    "calibrate_checkpoint",
    "calibration_report",
    "fit_recalibration",
    "recalibration_of",
    "write_calibrated_checkpoint",
]
