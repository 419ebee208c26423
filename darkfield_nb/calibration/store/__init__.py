"""Recalibration stored with a model: fit on the validation split, write it into a checkpoint,
apply it to each new image, and report the calibration figures before and after.

A checkpoint carries the fit under the key ``"recalibration"``, a strict-JSON dict whose
format :mod:`.entry` documents. The corrections and the RCPS guarantee hold only for images
exchangeable with the validation images they were fitted on; nothing here says anything about
a device or a scanner never seen.

Modules: :mod:`.entry` (the format, its check, reading and writing it), :mod:`.fit` (fit on
validation, ``darkfield-nb calibrate``), :mod:`.apply` (one image) and :mod:`.report` (before
/ after on a split). Every name is re-exported here.
"""

from .apply import apply_recalibration
from .entry import (
    KEY,
    METHODS,
    VERSION,
    check_entry,
    mean_factor,
    recalibration_of,
    strict_json,
    write_calibrated_checkpoint,
)
from .fit import LAMBDAS, calibrate_checkpoint, fit_recalibration
from .report import MIN_REGION_PIXELS, calibration_report

__all__ = [
    "KEY",
    "LAMBDAS",
    "METHODS",
    "MIN_REGION_PIXELS",
    "VERSION",
    "apply_recalibration",
    "calibrate_checkpoint",
    "calibration_report",
    "check_entry",
    "fit_recalibration",
    "mean_factor",
    "recalibration_of",
    "strict_json",
    "write_calibrated_checkpoint",
]
