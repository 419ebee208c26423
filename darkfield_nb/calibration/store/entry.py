"""The recalibration entry of a checkpoint: its format, its check, reading it from a checkpoint
and writing a checkpoint that carries it.

Every recalibrator is fitted to the same predictive distribution, GGD(mu, alpha_t, beta) with

    alpha_t = total / sqrt(Gamma(3/beta) / Gamma(1/beta))      (:func:`.metrics.predictive_alpha`)

the GGD of the predicted shape beta whose standard deviation is the total MC-dropout sigma
(total^2 = aleatoric^2 + epistemic^2). A checkpoint carries the fit under the key
``"recalibration"``, a strict-JSON dict (it survives ``torch.load(weights_only=True)``)::

    version          4 (3: written before the lung level, read as fitted without one; 2:
                     before the mean's factor, 1: before the field factors; both still read
                     and applied as before, with c = 1)
    method_default   "sigma_scaling": the interval predict / synthesize write unless told
    lung_level       {"digest": d, "factor_min", "factor_max"} from version 4: d the
                     ``level.store.level_digest`` of the checkpoint's lung level the fit was
                     made on top of (predictions scaled by each image's g first), None without
                     one; ``inference.load_model`` refuses a checkpoint whose level differs
    mean_scale       {"factor": c, "lung_D_bias_before": b} from version 3: predict and
                     synthesize write the dark-field c mu (:mod:`..mean_scale`: the mean lung D
                     over the fitting images made right; b the relative bias of mu there, None
                     when no factor was fitted, c = 1); every fit below is on the scaled mean
    sigma_scaling    SigmaScaling.to_dict(): global factor s, one factor per (label) region,
                     method, p and, from version 2, ``per_field`` {"predicted_lung": f_in,
                     "outside": f_out} with ``lung_threshold`` t (D): the factors predict and
                     synthesize apply, s(x) = f_in if mu(x) > t else f_out, mu the image's own
                     predicted mean. An entry without ``per_field`` is applied with the global
                     factor s everywhere.
    isotonic         IsotonicRecalibration.to_dict(): Kuleshov's R on a grid of PIT levels
    rcps             RCPSCalibration.to_dict(): lambda_hat (None: no lambda certified), alpha,
                     delta, n, halfwidth_level
    fitted_on        {"data", "split", "n_images", "samples", "seed", "stage"}
    fit_coverage     coverage of the central p-interval on the fitting split, before and after
                     (``sigma_scaling_per_field`` from version 2; ``mean_scale``, after the
                     mean's factor alone, from version 3: ``before`` is without it)
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

from darkfield_nb.checkpoint_entry import write_checkpoint_entry

KEY = "recalibration"
VERSION = 4
METHODS = ("sigma_scaling", "isotonic", "rcps")


def strict_json(value):
    """``value`` as strict JSON data: NumPy scalars to Python, NaN / +-inf to None."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def check_entry(recal: dict, where: str) -> dict:
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
        mean_factor(recal)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from err
    try:
        json.dumps(recal, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: recalibration entry is not strict JSON ({err})") from err
    return recal


def recalibration_of(ckpt: dict) -> dict | None:
    """The recalibration stored in a raw checkpoint dict (:func:`checkpoint.load_checkpoint`),
    or None when it has none. Raises ValueError when the entry is malformed."""
    recal = ckpt.get(KEY)
    return None if recal is None else check_entry(recal, "checkpoint")


def mean_factor(recal: dict) -> float:
    """The mean's factor c of an entry (1.0 for an entry written before version 3)."""
    got = recal.get("mean_scale") or {}
    c = float(got.get("factor", 1.0))
    if not math.isfinite(c) or c <= 0:
        raise ValueError(f"recalibration entry: mean_scale factor {c!r} is not a positive number")
    return c


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
    check_entry(recalibration, str(dst))
    plain = json.loads(json.dumps(recalibration))  # a plain copy
    return write_checkpoint_entry(
        src, dst, KEY, plain, read_back=recalibration_of, overwrite=overwrite
    )
