"""Fitting the stored recalibration on the validation split (:func:`fit_recalibration`) and
``darkfield-nb calibrate`` (:func:`calibrate_checkpoint`): fit, then write the checkpoint.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from darkfield_nb.checkpoint_entry import open_source
from darkfield_nb.data import PairedDataset, require_splits
from darkfield_nb.hardware import pick_device
from darkfield_nb.labels import LUNG

from ..collect import Predictions, collect_predictions
from ..mean_scale import fit_mean_scale
from ..metrics import coverage, ggd_halfwidth, pit
from ..recalibrate import fit_isotonic, fit_sigma_scaling
from ..regions import LUNG_THRESHOLD
from ..risk import RCPSCalibration, needed_lambda, rcps_lambda, risk_curves
from .entry import VERSION, strict_json, write_calibrated_checkpoint

#: lambda grid of the RCPS search, in units of the central p half-width (1: uncalibrated).
LAMBDAS = np.linspace(0.0, 6.0, 601)


def _fit_coverage(
    raw: Predictions, preds: Predictions, regions: dict, sc, iso, rcps, p: float
) -> dict:
    """Coverage of the central p-interval on the fitting pixels: ``before`` any correction
    (the predictions ``raw``), ``mean_scale`` after the mean's factor alone (``preds``: the
    predictions with the scaled mean), and after each sigma fit on top of it."""
    y, mu, beta, a_t = preds.y, preds.mu, preds.beta, preds.alpha_total
    u = pit(y, mu, alpha=a_t, beta=beta)
    out = {
        "p": p,
        "before": coverage(y, raw.mu, p, alpha=a_t, beta=beta),
        "mean_scale": coverage(y, mu, p, alpha=a_t, beta=beta),
        "sigma_scaling": coverage(y, mu, p, alpha=sc.factor * a_t, beta=beta),
        "sigma_scaling_per_region": coverage(
            y, mu, p, alpha=sc.scale_map(regions) * a_t, beta=beta
        ),
        "sigma_scaling_per_field": (
            coverage(y, mu, p, alpha=sc.field_map(mu) * a_t, beta=beta) if sc.per_field else None
        ),
        "isotonic": float(np.mean(iso.central_pit(u) <= p)),
        "rcps": None,
    }
    if math.isfinite(rcps.lambda_hat):
        q = ggd_halfwidth(p, a_t, beta)
        need = needed_lambda(y, mu, q, q)
        out["rcps"] = float(np.mean(need <= rcps.lambda_hat))
    return out


def _apply_level(preds: Predictions, entry: dict, device) -> tuple[Predictions, dict]:
    """(``preds`` scaled by the lung level's factors g, the entry's record: its digest and the
    range of g on these images)."""
    from darkfield_nb.level.store import level_digest, level_from_entry

    level = level_from_entry(entry).to(pick_device(device))
    _, g = level.factors(torch.from_numpy(preds.x)[:, None], preds.mu)
    scaled = preds.scaled(g)
    record = {"digest": level_digest(entry), "factor_min": float(g.min()),
              "factor_max": float(g.max())}  # fmt: skip
    return scaled, record


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
    lung_threshold: float | None = LUNG_THRESHOLD,
    mean_scale: bool = True,
    cache: str | os.PathLike | None = None,
    level_entry: dict | None = None,
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
        min_pixels: regions (and fields) with fewer validation pixels keep the global factor.
        lung_threshold: t in D of the predicted lung field {mu > t} (mu: the MC mean): the
            factors predict / synthesize apply, s(x) = f_in if mu(x) > t else f_out, each fitted
            by ``scaling_method`` on its field's validation pixels and stored with t
            (``sigma_scaling.per_field``, ``lung_threshold``). None: no field factors (the
            entry is then applied with the global factor, as a version-1 entry is).
        mean_scale: fit the mean's factor c (:func:`..mean_scale.fit_mean_scale`, on the
            split's lung masks) first and every sigma fit on the scaled mean ``c mu``; stored
            as ``mean_scale`` {"factor": c, "lung_D_bias_before": mean lung D bias of mu,
            "skipped": None}. False, or a split where c cannot be fitted (no lung masks, a
            mean lung D <= 0: warned): c = 1, the bias None and "skipped" the reason.
        cache: optional .npz path for the predictions (:func:`.collect.collect_predictions`).
        level_entry: the checkpoint's lung-level entry (``level.store``), or None: each
            image's predictions are first scaled by its level factor g (as predict does) and
            every fit is on top of that; stored as ``lung_level`` {"digest", "factor_min",
            "factor_max"} ({"digest": None} without a level), which ``inference.load_model`` checks
            against the level the checkpoint carries.
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
    raw = preds
    level_record: dict = {"digest": None}
    if level_entry is not None:
        preds, level_record = _apply_level(preds, level_entry, device)
    lung = (preds.mask & LUNG) > 0
    c, bias_before, skipped = 1.0, None, "not asked (mean_scale=False)"
    if mean_scale:
        skipped = None
        try:
            c = fit_mean_scale(preds.y, preds.mu, lung)
            bias_before = 1.0 / c - 1.0  # the mean lung D of mu over the truth's, minus 1
        except ValueError as err:  # no lung in the split, or a model predicting D <= 0 there
            skipped = str(err)
            warnings.warn(f"calibrate: no mean factor fitted, c = 1 ({err})", stacklevel=2)
    preds = replace(preds, mu=(c * preds.mu).astype(preds.mu.dtype))
    y, mu, beta, a_t = preds.y, preds.mu, preds.beta, preds.alpha_total
    regions = preds.regions()
    sc = fit_sigma_scaling(
        y,
        mu,
        a_t,
        beta,
        method=scaling_method,
        p=p,
        regions=regions,
        min_pixels=min_pixels,
        lung_threshold=lung_threshold,
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
    return strict_json(
        {
            "version": VERSION,
            "method_default": "sigma_scaling",
            "lung_level": level_record,
            "mean_scale": {"factor": c, "lung_D_bias_before": bias_before, "skipped": skipped},
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
            "fit_coverage": _fit_coverage(raw, preds, regions, sc, iso, rcps, p),
            "guarantee": guarantee,
        }
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
    trained; on top of the lung level ``src`` carries, if any), write ``dst``
    (:func:`write_calibrated_checkpoint`). Returns (dst, entry).
    Refuses the test split: a calibration fitted there would be scored on the pixels it saw."""
    src, dst = Path(src), Path(dst)
    if fit_kw.get("split", "val") == "test":
        raise ValueError(
            f"{data_root}: refusing to calibrate on the 'test' split; fit on 'val' and keep "
            "'test' for evaluate"
        )
    require_splits(data_root, (fit_kw.get("split", "val"),), "calibration")
    device = pick_device(device)
    ckpt, model, last = open_source(src, dst, overwrite, device)
    fit_kw.setdefault("stage", last)
    from darkfield_nb.level.store import level_of

    fit_kw.setdefault("level_entry", level_of(ckpt, str(src)))
    recal = fit_recalibration(model, data_root, device=device, **fit_kw)
    return write_calibrated_checkpoint(src, dst, recal, overwrite=overwrite), recal
