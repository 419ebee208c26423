"""Calibration of the predicted per-pixel distributions: metrics, recalibration, risk control.

Flat functions on arrays (image-shaped, optional boolean mask); see each module's docstring for
the formulas and normalizations:

* :mod:`.metrics`         PIT, coverage curves, miscalibration area, MACE / RMSCE, ENCE / UCE,
                          NLL (GGD, Gaussian), sharpness, interval width, Spearman
* :mod:`.sparsification`  sparsification curves, AUSE, AURG, AUSE / random
* :mod:`.regions`         lung / bone / soft tissue / air / device maps from the label masks;
                          the predicted lung field {mu > t} (needs no mask)
* :mod:`.recalibrate`     sigma scaling (global, per region, per predicted-lung field),
                          isotonic PIT recalibration
* :mod:`.risk`            risk-controlling prediction sets (Hoeffding-Bentkus bound)
* :mod:`.collect`         a model's MC-dropout predictions on a split, cached as .npz
* :mod:`.report`         :func:`calibration_summary`, the figures pooled and per region
* :mod:`.plots`           reliability, sparsification, coverage-per-region, risk, miss gallery
* :mod:`.store`           the recalibration fitted on validation, stored in a checkpoint,
                          applied per image, reported before / after (``darkfield-nb calibrate``)
"""

from ._arrays import DistributionKw, PredictiveKw
from .collect import Predictions, collect_predictions
from .metrics import (
    BinningKw,
    area_between,
    binned_rmse,
    calibration_errors,
    central_pit,
    coverage,
    coverage_curve,
    ence,
    ggd_halfwidth,
    interval_width,
    miscalibration_area,
    nll_gaussian,
    nll_ggd,
    observed_coverage,
    pit,
    predictive_alpha,
    sharpness,
    spearman,
    spearman_per_image,
    uce,
)
from .recalibrate import (
    IsotonicRecalibration,
    ScalingKw,
    SigmaScaling,
    fit_isotonic,
    fit_scale,
    fit_sigma_scaling,
    recalibrator_from_dict,
)
from .regions import FIELDS, LUNG_THRESHOLD, REGIONS, field_masks, region_masks, region_of_pixels
from .report import calibration_summary
from .risk import (
    RCPSCalibration,
    RCPSResult,
    bentkus_pvalue,
    bentkus_ucb,
    h1,
    hb_ucb,
    hoeffding_pvalue,
    hoeffding_ucb,
    needed_lambda,
    rcps_lambda,
    rcps_validity,
    risk_curves,
)
from .sparsification import Sparsification, sparsification
from .store import (
    apply_recalibration,
    calibrate_checkpoint,
    calibration_report,
    fit_recalibration,
    recalibration_of,
    write_calibrated_checkpoint,
)

__all__ = [
    "BinningKw",
    "DistributionKw",
    "FIELDS",
    "IsotonicRecalibration",
    "LUNG_THRESHOLD",
    "PredictiveKw",
    "Predictions",
    "RCPSCalibration",
    "RCPSResult",
    "REGIONS",
    "ScalingKw",
    "SigmaScaling",
    "Sparsification",
    "apply_recalibration",
    "area_between",
    "bentkus_pvalue",
    "bentkus_ucb",
    "binned_rmse",
    "calibrate_checkpoint",
    "calibration_errors",
    "calibration_report",
    "calibration_summary",
    "central_pit",
    "collect_predictions",
    "coverage",
    "coverage_curve",
    "ence",
    "field_masks",
    "fit_isotonic",
    "fit_recalibration",
    "fit_scale",
    "fit_sigma_scaling",
    "ggd_halfwidth",
    "h1",
    "hb_ucb",
    "hoeffding_pvalue",
    "hoeffding_ucb",
    "interval_width",
    "miscalibration_area",
    "needed_lambda",
    "nll_gaussian",
    "nll_ggd",
    "observed_coverage",
    "pit",
    "predictive_alpha",
    "rcps_lambda",
    "rcps_validity",
    "recalibration_of",
    "recalibrator_from_dict",
    "region_masks",
    "region_of_pixels",
    "risk_curves",
    "sharpness",
    "sparsification",
    "spearman",
    "spearman_per_image",
    "uce",
    "write_calibrated_checkpoint",
]
