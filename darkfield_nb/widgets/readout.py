"""The numbers behind the uncertainty threshold explorer: flag the most uncertain pixels, and
ask what the flag catches and what is left.

For one image with predicted mean ``mu``, a standard-deviation map ``sigma`` (aleatoric,
epistemic, total or recalibrated, D units) and a threshold ``t`` (D units), a pixel is *flagged*
when ``sigma > t`` and *kept* otherwise. With the absolute error ``e = |y - mu|`` (only when a
target ``y`` is known) and ``F``, ``K`` the flagged and kept pixels:

    percentile      100 * #{sigma <= t} / N          (the threshold's rank among the pixels)
    flagged         #F / N
    error_share     sum_F e / sum_all e               (share of the absolute error flagged)
    mae_kept        mean_K e
    coverage_kept   #{k in K : |y_k - mu_k| <= z_k sigma_k} / #K
    device_caught   #(F and device) / #device         (only when a mask holds device pixels)

The interval behind ``coverage_kept`` is the central ``level`` interval (90 % by default) of a
generalized Gaussian with the pixel's shape ``beta`` scaled to standard deviation ``sigma``:
half-width ``z(beta) sigma`` with

    z(beta) = [P^-1(1/beta, level)]^(1/beta) / sqrt(Gamma(3/beta) / Gamma(1/beta)),

P^-1 the inverse regularized lower incomplete gamma function (z = 1.645 for beta = 2; without
a beta map the Gaussian value is used). For the aleatoric kind this is the model's own GGD
interval; for epistemic and total sigmas it keeps the model's tail shape at the wider scale.

Sparsification (DESIGN section 6): remove the fraction ``f`` of pixels with the largest sigma
and report the MAE of the rest; the oracle removes the largest errors first. Not normalized.

These are deliberately small local definitions: when ``darkfield_nb.calibration`` exists,
its coverage and sparsification functions can replace ``threshold_stats``' interval and
:func:`sparsification` (the tests here pin the numbers either must give).

The readout text is ``key=value`` pairs separated by single spaces, numbers with a fixed number
of significant digits and ``n/a`` where a figure does not apply (no target, no device pixels);
:func:`parse_readout` reads it back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import gammaincinv, gammaln
from scipy.stats import norm

READOUT_KEYS = (
    "kind",
    "threshold",
    "percentile",
    "flagged",
    "error_share",
    "mae_kept",
    "coverage_kept",
    "device_caught",
)
SIG_DIGITS = 6  # significant digits of every number in the readout


@dataclass
class ThresholdStats:
    """The readout of one threshold on one image (None where a figure does not apply)."""

    kind: str
    threshold: float
    percentile: float
    flagged: float
    error_share: float | None = None
    mae_kept: float | None = None
    coverage_kept: float | None = None
    device_caught: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def interval_factor(level: float = 0.9, beta=None) -> np.ndarray | float:
    """z(beta): half-width of the central ``level`` interval of a unit-variance GGD of shape
    ``beta`` (array or scalar); the Gaussian ``norm.ppf((1 + level) / 2)`` when beta is None."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval_factor: level={level} must be in (0, 1)")
    if beta is None:
        return float(norm.ppf(0.5 + level / 2))
    b = np.asarray(beta, dtype=np.float64)
    if np.any(b <= 0):
        raise ValueError("interval_factor: beta must be > 0")
    q = gammaincinv(1.0 / b, level) ** (1.0 / b)  # quantile of |r| / alpha
    return q / np.exp(0.5 * (gammaln(3.0 / b) - gammaln(1.0 / b)))


def _as_2d(name: str, a, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
    if a is None:
        return None
    arr = np.asarray(a)
    arr = (
        arr.reshape(arr.shape[-2:]) if arr.ndim > 2 and arr.size == np.prod(arr.shape[-2:]) else arr
    )
    if arr.ndim != 2:
        raise ValueError(f"threshold_stats: {name} must be one 2-D map, got shape {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise ValueError(f"threshold_stats: {name} shape {arr.shape} differs from sigma {shape}")
    return arr


def threshold_stats(
    sigma,
    threshold: float,
    *,
    mean=None,
    target=None,
    beta=None,
    device=None,
    level: float = 0.9,
    kind: str = "sigma",
) -> ThresholdStats:
    """The readout of the module docstring for one 2-D ``sigma`` map and ``threshold`` (D).

    ``mean``/``target``: predicted and true dark-field (both needed for the error figures);
    ``beta``: GGD shape map for the coverage interval (None: Gaussian); ``device``: boolean map
    of device pixels (``device_caught`` is None when it holds none).
    """
    s = _as_2d("sigma", sigma).astype(np.float64)
    flag = s > threshold
    n = s.size
    out = ThresholdStats(
        kind=kind,
        threshold=float(threshold),
        percentile=100.0 * float(np.count_nonzero(~flag)) / n,
        flagged=float(np.count_nonzero(flag)) / n,
    )
    y, mu = _as_2d("target", target, s.shape), _as_2d("mean", mean, s.shape)
    if y is not None and mu is not None:
        r = np.abs(y.astype(np.float64) - mu.astype(np.float64))
        keep = ~flag
        total = r.sum()
        out.error_share = float(r[flag].sum() / total) if total > 0 else 0.0
        if keep.any():
            b = _as_2d("beta", beta, s.shape)
            z = interval_factor(level, None if b is None else b[keep])
            out.mae_kept = float(r[keep].mean())
            out.coverage_kept = float(np.mean(r[keep] <= z * s[keep]))
    d = _as_2d("device", device, s.shape)
    if d is not None and d.astype(bool).any():
        d = d.astype(bool)
        out.device_caught = float(np.count_nonzero(flag & d)) / float(np.count_nonzero(d))
    return out


def threshold_at_percentile(sigma, percentile: float) -> float:
    """The sigma value below which ``percentile`` % of the pixels lie (``np.percentile``,
    linear interpolation); flagging ``sigma > t`` then flags about 100 - percentile %."""
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"threshold_at_percentile: percentile={percentile} must be in [0, 100]")
    return float(np.percentile(np.asarray(sigma, dtype=np.float64), percentile))


def sparsification(sigma, error, fractions=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fractions, MAE of the rest ordered by sigma, MAE of the rest ordered by the error).

    ``fractions`` in [0, 1) (default 0, 0.02, ..., 0.98): the share of pixels removed, largest
    first. Ties in sigma are broken by the stable sort order of the flattened map.
    """
    s = np.asarray(sigma, dtype=np.float64).ravel()
    e = np.asarray(error, dtype=np.float64).ravel()
    if s.shape != e.shape:
        raise ValueError(f"sparsification: sigma {s.shape} and error {e.shape} differ")
    f = np.arange(0.0, 1.0, 0.02) if fractions is None else np.asarray(fractions, dtype=float)
    n = s.size

    def curve(order: np.ndarray) -> np.ndarray:
        kept_sorted = e[order]  # ascending score: the kept pixels are a prefix
        csum = np.concatenate([[0.0], np.cumsum(kept_sorted)])
        keep = np.maximum(1, n - np.floor(f * n).astype(int))
        return csum[keep] / keep

    return f, curve(np.argsort(s, kind="stable")), curve(np.argsort(e, kind="stable"))


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    return f"{v:.{SIG_DIGITS}g}"


def format_readout(stats: ThresholdStats) -> str:
    """``kind=total threshold=0.0123 percentile=90 flagged=0.1 ...`` (keys of READOUT_KEYS)."""
    d = stats.as_dict()
    return " ".join(f"{k}={_fmt(d[k])}" for k in READOUT_KEYS)


def parse_readout(text: str) -> dict:
    """The inverse of :func:`format_readout`: numbers as floats, ``n/a`` as None."""
    out: dict = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if not sep or key not in READOUT_KEYS:
            raise ValueError(f"parse_readout: unexpected token {token!r} in {text!r}")
        out[key] = None if value == "n/a" else (value if key == "kind" else float(value))
    return out
