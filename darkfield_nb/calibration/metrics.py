"""Calibration metrics for per-pixel predictive distributions, as flat functions on arrays.

Every function takes image-shaped arrays (any shape, NumPy or torch) of the target ``y``, the
predicted location ``mu`` and either a Gaussian standard deviation ``sigma`` or generalized-
Gaussian parameters ``alpha`` (scale) and ``beta`` (shape), plus an optional boolean ``mask``
selecting the pixels to use. The functions that take either kind receive them as keyword
arguments ``**dist`` typed by :class:`~darkfield_nb.calibration.PredictiveKw` (the keys and
their meaning; :class:`~darkfield_nb.calibration.DistributionKw` where there is no mask); a
misspelled key raises TypeError at once. Averages are over the selected pixels, pooled
(images count in proportion to their selected pixels), unless a function says "per image".

Distributions. GGD(mu, alpha, beta) as in :mod:`darkfield_nb.ggd`; Gaussian N(mu, sigma^2).
A moment-matched GGD for a total (aleatoric + epistemic) standard deviation is
:func:`predictive_alpha`.

Central PIT. With u = F(y) the probability integral transform, c = |2u - 1| is the smallest p
whose central p-interval [F^-1((1-p)/2), F^-1((1+p)/2)] contains y. It is computed without
cancellation as c = P(1/beta, (|y - mu| / alpha)^beta) (GGD) or erf(|y - mu| / (sigma sqrt 2))
(Gaussian). Observed coverage of the central p-interval = mean(c <= p); calibrated: = p.

Cross-checked in tests against ``uncertainty_toolbox`` (Gaussian case, same arrays) and
``scipy.stats.gennorm`` / ``scipy.stats.norm`` (GGD and Gaussian). Definitions match
uncertainty-toolbox 0.1.1 exactly where it has the metric: the level grid linspace(0, 1, 100),
interval (not quantile) proportions counted with <=, the miscalibration area by trapezoids that
split where the curves cross, MACE / RMSCE as plain means over the grid, NLL as a mean (its
``scaled=True``), sharpness as the root mean variance. It has no ENCE or UCE: those follow
Levi et al. 2019 and Laves et al. 2020 (see :func:`ence`, :func:`uce`) and are tested on a case
computed by hand.
"""

from __future__ import annotations

import numpy as np
from scipy import special
from typing_extensions import TypedDict, Unpack

from ._arrays import ArrayLike, DistributionKw, PredictiveKw, as_numpy, check_distribution, pixels

DEFAULT_LEVELS = 100  # uncertainty-toolbox's num_bins: levels np.linspace(0, 1, 100)


# ----------------------------------------------------------------------------- distributions
def predictive_alpha(sigma: ArrayLike, beta: ArrayLike) -> np.ndarray:
    """The GGD scale whose standard deviation is ``sigma`` at shape ``beta``:
    alpha = sigma / sqrt(Gamma(3/beta) / Gamma(1/beta)). Used to put the total MC-dropout
    sigma (aleatoric^2 + epistemic^2) into a GGD with the predicted shape (moment matching:
    the mixture over dropout passes is approximated by one GGD with its variance)."""
    b = as_numpy(beta)
    ratio = np.exp(0.5 * (special.gammaln(3.0 / b) - special.gammaln(1.0 / b)))
    return as_numpy(sigma) / ratio


def ggd_halfwidth(p: float | np.ndarray, alpha: ArrayLike, beta: ArrayLike) -> np.ndarray:
    """Half-width h of the central p-interval of GGD(mu, alpha, beta), mu +- h:
    h = alpha [P^-1(1/beta, p)]^(1/beta) (P^-1 = ``scipy.special.gammaincinv``)."""
    b = as_numpy(beta)
    return as_numpy(alpha) * special.gammaincinv(1.0 / b, p) ** (1.0 / b)


def pit(y: ArrayLike, mu: ArrayLike, **dist: Unpack[DistributionKw]) -> np.ndarray:
    """Probability integral transform u = F(y), image-shaped.

    GGD: u = 1/2 + sign(r)/2 P(1/beta, (|r|/alpha)^beta), r = y - mu; Gaussian:
    u = Phi((y - mu) / sigma). Calibrated predictions give u ~ Uniform(0, 1).
    ``dist``: ``sigma``, or ``alpha`` and ``beta`` (see DistributionKw).
    """
    d = check_distribution("pit", dist, DistributionKw)
    r = as_numpy(y) - as_numpy(mu)
    if "sigma" in d:
        return special.ndtr(r / as_numpy(d["sigma"]))
    b = as_numpy(d["beta"])
    z = (np.abs(r) / as_numpy(d["alpha"])) ** b
    return 0.5 + 0.5 * np.sign(r) * special.gammainc(1.0 / b, z)


def central_pit(y: ArrayLike, mu: ArrayLike, **dist: Unpack[DistributionKw]) -> np.ndarray:
    """c = |2 F(y) - 1|, image-shaped: the level of the narrowest central interval holding y.

    GGD: c = P(1/beta, (|y - mu|/alpha)^beta); Gaussian: c = erf(|y - mu| / (sigma sqrt 2)).
    ``dist``: ``sigma``, or ``alpha`` and ``beta`` (see DistributionKw).
    """
    d = check_distribution("central_pit", dist, DistributionKw)
    r = np.abs(as_numpy(y) - as_numpy(mu))
    if "sigma" in d:
        return special.erf(r / (as_numpy(d["sigma"]) * np.sqrt(2.0)))
    b = as_numpy(d["beta"])
    return special.gammainc(1.0 / b, (r / as_numpy(d["alpha"])) ** b)


# ----------------------------------------------------------------------------- coverage
def coverage_curve(
    y: ArrayLike,
    mu: ArrayLike,
    *,
    levels: int | np.ndarray = DEFAULT_LEVELS,
    **dist: Unpack[PredictiveKw],
) -> tuple[np.ndarray, np.ndarray]:
    """Observed coverage of central p-intervals for a grid of nominal levels p.

    observed(p) = (1/N) sum_i [c_i <= p], c = :func:`central_pit`, over the N selected pixels.
    ``levels``: an int K gives p = linspace(0, 1, K) (uncertainty-toolbox's expected
    proportions, num_bins = K), or an array of levels. Returns (levels, observed).
    For the Gaussian this equals uncertainty-toolbox's ``get_proportion_lists_vectorized``
    (interval type): it counts |r|/sigma <= Phi^-1(1/2 + p/2).
    ``dist``: ``sigma``, or ``alpha`` and ``beta``, and ``mask`` (see PredictiveKw).
    """
    d = check_distribution("coverage_curve", dist)
    y_, m_, *params = pixels(y, mu, *d.values(), mask=dist.get("mask"), name="coverage_curve")
    c = central_pit(y_, m_, **dict(zip(d, params, strict=True)))
    return observed_coverage(c, levels=levels)


def observed_coverage(
    c: ArrayLike, mask: ArrayLike | None = None, levels: int | np.ndarray = DEFAULT_LEVELS
) -> tuple[np.ndarray, np.ndarray]:
    """(levels p, observed coverage (1/N) sum_i [c_i <= p]) from central PITs ``c`` (e.g.
    recalibrated ones, ``IsotonicRecalibration.central_pit``)."""
    (c,) = pixels(c, mask=mask, name="observed_coverage")
    p = np.linspace(0.0, 1.0, levels) if np.isscalar(levels) else np.asarray(levels, float)
    observed = np.searchsorted(np.sort(c), p, side="right") / c.size
    return p, observed


def coverage(y: ArrayLike, mu: ArrayLike, p: float = 0.9, **dist: Unpack[PredictiveKw]) -> float:
    """Fraction of selected pixels inside the central p-interval: (1/N) sum_i [c_i <= p].
    ``dist``: ``sigma``, or ``alpha`` and ``beta``, and ``mask`` (see PredictiveKw)."""
    check_distribution("coverage", dist)
    _, observed = coverage_curve(y, mu, levels=np.array([p]), **dist)
    return float(observed[0])


def area_between(levels: np.ndarray, observed: np.ndarray) -> float:
    """Area between the piecewise-linear curves (p, observed) and (p, p):
    sum over segments of the integral of |observed(p) - p|, exact for linear interpolation
    (where the curves cross inside a segment, the two triangles are added). This is
    uncertainty-toolbox's ``miscalibration_area_from_proportions`` (its trapezoid_area)."""
    p, o = np.asarray(levels, float), np.asarray(observed, float)
    d0, d1, w = o[:-1] - p[:-1], o[1:] - p[1:], np.diff(p)
    same = d0 * d1 >= 0
    trap = 0.5 * w * np.abs(d0 + d1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = 0.5 * w * (d0**2 + d1**2) / (np.abs(d0) + np.abs(d1))
    return float(np.sum(np.where(same, trap, np.nan_to_num(cross))))


def miscalibration_area(
    y: ArrayLike,
    mu: ArrayLike,
    *,
    levels: int | np.ndarray = DEFAULT_LEVELS,
    **dist: Unpack[PredictiveKw],
) -> float:
    """Area between the observed coverage curve and the diagonal, integrated over p in [0, 1]
    (:func:`coverage_curve`, :func:`area_between`); 0 when calibrated, at most 0.5.
    ``dist``: ``sigma``, or ``alpha`` and ``beta``, and ``mask`` (see PredictiveKw)."""
    check_distribution("miscalibration_area", dist)
    p, o = coverage_curve(y, mu, levels=levels, **dist)
    return area_between(p, o)


def calibration_errors(
    y: ArrayLike,
    mu: ArrayLike,
    *,
    levels: int | np.ndarray = DEFAULT_LEVELS,
    **dist: Unpack[PredictiveKw],
) -> dict[str, float]:
    """Mean absolute and root-mean-square calibration errors over the level grid p_k:
    MACE = (1/K) sum_k |observed(p_k) - p_k|,  RMSCE = sqrt((1/K) sum_k (observed(p_k) - p_k)^2)
    (uncertainty-toolbox's ``mean_absolute_calibration_error`` and
    ``root_mean_squared_calibration_error``, interval type), plus the miscalibration area.
    ``dist``: ``sigma``, or ``alpha`` and ``beta``, and ``mask`` (see PredictiveKw)."""
    check_distribution("calibration_errors", dist)
    p, o = coverage_curve(y, mu, levels=levels, **dist)
    return {
        "mace": float(np.mean(np.abs(o - p))),
        "rmsce": float(np.sqrt(np.mean((o - p) ** 2))),
        "miscalibration_area": area_between(p, o),
    }


# ----------------------------------------------------------------------------- binned errors
def _bins(sigma: np.ndarray, n_bins: int, binning: str) -> list[np.ndarray]:
    if binning == "quantile":  # equal counts: sort by sigma, split into n_bins chunks
        return [b for b in np.array_split(np.argsort(sigma, kind="stable"), n_bins) if b.size]
    if binning == "uniform":  # equal widths between min and max sigma
        edges = np.linspace(sigma.min(), sigma.max(), n_bins + 1)
        idx = np.clip(np.searchsorted(edges, sigma, side="right") - 1, 0, n_bins - 1)
        return [np.flatnonzero(idx == k) for k in range(n_bins) if np.any(idx == k)]
    raise ValueError(f"binning={binning!r} must be 'quantile' or 'uniform'")


class BinningKw(TypedDict, total=False):
    """The options of :func:`binned_rmse`, which :func:`ence` and :func:`uce` pass on to it:
    ``mask`` (boolean, the target's shape; None: every pixel), ``n_bins`` (default 20) and
    ``binning`` ("quantile", the default, or "uniform")."""

    mask: ArrayLike | None
    n_bins: int
    binning: str


def binned_rmse(
    y: ArrayLike,
    mu: ArrayLike,
    sigma: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    n_bins: int = 20,
    binning: str = "quantile",
) -> dict[str, np.ndarray]:
    """Per bin of predicted sigma: RMV_k = sqrt(mean sigma_i^2), RMSE_k = sqrt(mean (y_i -
    mu_i)^2), and counts n_k. ``binning="quantile"``: equal-count bins of the pixels sorted by
    sigma (np.array_split); ``"uniform"``: equal-width bins between min and max sigma (empty
    bins dropped). Calibrated: RMSE_k = RMV_k."""
    y_, m_, s_ = pixels(y, mu, sigma, mask=mask, name="binned_rmse")
    err2, var = (y_ - m_) ** 2, s_**2
    bins = _bins(s_, n_bins, binning)
    return {
        "rmv": np.array([np.sqrt(var[b].mean()) for b in bins]),
        "rmse": np.array([np.sqrt(err2[b].mean()) for b in bins]),
        "mv": np.array([var[b].mean() for b in bins]),
        "mse": np.array([err2[b].mean() for b in bins]),
        "count": np.array([b.size for b in bins]),
    }


def ence(y: ArrayLike, mu: ArrayLike, sigma: ArrayLike, **options: Unpack[BinningKw]) -> float:
    """Expected normalized calibration error (Levi et al. 2019):
    ENCE = (1/K) sum_k |RMV_k - RMSE_k| / RMV_k over the K bins of :func:`binned_rmse`
    (unweighted; dimensionless; 0 when calibrated). ``options``: ``mask``, ``n_bins``,
    ``binning``, passed on to :func:`binned_rmse` (see :class:`BinningKw`)."""
    b = binned_rmse(y, mu, sigma, **options)
    return float(np.mean(np.abs(b["rmv"] - b["rmse"]) / b["rmv"]))


def uce(y: ArrayLike, mu: ArrayLike, sigma: ArrayLike, **options: Unpack[BinningKw]) -> float:
    """Uncertainty calibration error (Laves et al. 2020) in variance units (D^2):
    UCE = sum_k (n_k / N) |MSE_k - MV_k| with MV_k = mean sigma^2 and MSE_k = mean (y - mu)^2
    in bin k of :func:`binned_rmse` (Laves et al. bin uniformly: pass binning="uniform").
    ``options``: ``mask``, ``n_bins``, ``binning``, passed on to :func:`binned_rmse`."""
    b = binned_rmse(y, mu, sigma, **options)
    return float(np.sum(b["count"] / b["count"].sum() * np.abs(b["mse"] - b["mv"])))


# ----------------------------------------------------------------------------- scores
def nll_ggd(
    y: ArrayLike, mu: ArrayLike, alpha: ArrayLike, beta: ArrayLike, mask: ArrayLike | None = None
) -> float:
    """Mean GGD negative log-likelihood over the selected pixels (nats):
    (1/N) sum_i [(|y_i - mu_i|/alpha_i)^beta_i - log beta_i + log(2 alpha_i) + lgamma(1/beta_i)]
    (= -mean ``scipy.stats.gennorm(beta, mu, alpha).logpdf(y)``)."""
    y_, m_, a_, b_ = pixels(y, mu, alpha, beta, mask=mask, name="nll_ggd")
    z = (np.abs(y_ - m_) / a_) ** b_
    return float(np.mean(z - np.log(b_) + np.log(2 * a_) + special.gammaln(1 / b_)))


def nll_gaussian(
    y: ArrayLike, mu: ArrayLike, sigma: ArrayLike, mask: ArrayLike | None = None
) -> float:
    """Mean Gaussian negative log-likelihood (nats):
    (1/N) sum_i [(y_i - mu_i)^2 / (2 sigma_i^2) + log sigma_i + log(2 pi)/2]
    (uncertainty-toolbox's ``nll_gaussian`` with scaled=True)."""
    y_, m_, s_ = pixels(y, mu, sigma, mask=mask, name="nll_gaussian")
    return float(np.mean(0.5 * ((y_ - m_) / s_) ** 2 + np.log(s_) + 0.5 * np.log(2 * np.pi)))


def sharpness(sigma: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Root mean predicted variance sqrt((1/N) sum_i sigma_i^2) (uncertainty-toolbox's
    ``sharpness``); lower is sharper."""
    (s_,) = pixels(sigma, mask=mask, name="sharpness")
    return float(np.sqrt(np.mean(s_**2)))


def interval_width(p: float = 0.9, **dist: Unpack[PredictiveKw]) -> float:
    """Mean width of the central p-interval (D units): GGD 2 alpha [P^-1(1/beta, p)]^(1/beta),
    Gaussian 2 sigma Phi^-1(1/2 + p/2).
    ``dist``: ``sigma``, or ``alpha`` and ``beta``, and ``mask`` (see PredictiveKw)."""
    d = check_distribution("interval_width", dist)
    params = pixels(*d.values(), mask=dist.get("mask"), name="interval_width")
    if "sigma" in d:
        from scipy import stats  # here: scipy.stats costs 0.3 s at every predict's start-up

        return float(2 * stats.norm.ppf(0.5 + p / 2) * params[0].mean())
    return float(2 * np.mean(ggd_halfwidth(p, *params)))


# ----------------------------------------------------------------------------- rank agreement
def spearman(
    sigma: ArrayLike,
    error: ArrayLike,
    mask: ArrayLike | None = None,
    max_pixels: int | None = None,
    seed: int = 0,
) -> float:
    """Pooled Spearman rank correlation of sigma and |error| over the selected pixels:
    the Pearson correlation of their (average-tie) ranks, ``scipy.stats.spearmanr``.
    ``max_pixels``: a seeded uniform subsample without replacement when there are more.
    NaN when either is constant."""
    s_, e_ = pixels(sigma, error, mask=mask, name="spearman")
    if max_pixels is not None and s_.size > max_pixels:
        take = np.random.default_rng(seed).choice(s_.size, max_pixels, replace=False)
        s_, e_ = s_[take], e_[take]
    if np.ptp(s_) == 0 or np.ptp(e_) == 0:
        return float("nan")
    from scipy import stats  # here: scipy.stats costs 0.3 s at every predict's start-up

    return float(stats.spearmanr(s_, np.abs(e_)).statistic)


def spearman_per_image(
    sigma: ArrayLike, error: ArrayLike, mask: ArrayLike | None = None, min_pixels: int = 10
) -> np.ndarray:
    """Spearman correlation of sigma and |error| within each image of (N, ...) stacks: one value
    per image (NaN where fewer than ``min_pixels`` are selected or either is constant)."""
    s, e = as_numpy(sigma), as_numpy(error)
    m = None if mask is None else np.asarray(mask, bool)
    out = np.full(s.shape[0], np.nan)
    for i in range(s.shape[0]):
        mi = None if m is None else m[i]
        if mi is not None and mi.sum() < min_pixels:
            continue
        out[i] = spearman(s[i], e[i], mi)
    return out
