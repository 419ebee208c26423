"""Disease-severity study: sweep a pathology's severity on fixed patients and ask whether the
model's prediction follows the true dark-field, or its interval says that it cannot.

For each patient seed and severity ``s`` the simulator makes the pair
``simulate(make_patient(seed, 0, case, severity=s), size)``: the same anatomy, framing, display
and noise draws at every severity (``s = 0`` is the healthy pair bit for bit), so along a sweep
only the disease changes. The model sees the processed attenuation radiograph, normalized by
:func:`darkfield_nb.data.normalize_input` as in training, and predicts with MC dropout
(:func:`darkfield_nb.uncertainty.mc_dropout_predict`, ``samples`` passes).

What is studied. By default (``as_written=True``) a case's maps are what ``predict`` writes
for the level and the mean: with the checkpoint's lung level (factor g = L / mean of mu over
the predicted lung field, ``level.LungLevel.factors``) and its recalibration's mean factor c
(``calibration.store.mean_factor``), mu' = c g mu and aleatoric' = g aleatoric, epistemic' =
g epistemic, total' = g total (:mod:`.written`; g = 1 without a level, c = 1 without a
recalibration). The recalibration's sigma factors are left out: the interval below is the
uncalibrated one of the level-scaled maps. ``as_written=False`` studies the bare network.
Unlike ``predict``, the study does not resample: the simulator draws the pair at ``size`` and
the model (and g) see it there.

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

Modules: :mod:`.written` (the model with its level and recalibration, the maps as predict
writes them), :mod:`.sweep` (simulate and predict each case, :func:`case_row`) and
:mod:`.verdict` (the summary over a sweep, the rows as strict JSON, the answer in words).
"""

from darkfield_nb.severity.sweep import (
    CASE_BITS,
    LEVEL,
    SweepCase,
    case_row,
    predict_case,
    severity_sweep,
)
from darkfield_nb.severity.verdict import (
    COVERAGE_TARGET,
    SEES_SLOPE,
    SEES_SPEARMAN,
    emphysema_summary,
    json_ready,
    load_rows,
    save_rows,
    severity_verdict,
)
from darkfield_nb.severity.written import load_model, scale_maps, written_factors

__all__ = [
    "CASE_BITS",
    "COVERAGE_TARGET",
    "LEVEL",
    "SEES_SLOPE",
    "SEES_SPEARMAN",
    "SweepCase",
    "case_row",
    "emphysema_summary",
    "json_ready",
    "load_model",
    "load_rows",
    "predict_case",
    "save_rows",
    "scale_maps",
    "severity_sweep",
    "severity_verdict",
    "written_factors",
]
