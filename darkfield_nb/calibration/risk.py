"""Risk-controlling prediction sets for image-to-image regression (Angelopoulos, Kohli, Bates,
Jordan, Malik et al. 2022, "Image-to-image regression with distribution-free uncertainty
quantification and applications in imaging"; the bound from Bates et al. 2021, "Distribution-
free, risk-controlling prediction sets").

Interval per pixel: T_lambda(x) = [mu - lambda q_lo, mu + lambda q_hi], with q_lo, q_hi the
predicted lower / upper half-widths (here: the GGD's central 90 % half-widths, so lambda = 1 is
the uncalibrated 90 % interval). The loss of one image is the share of its (masked) pixels
outside the interval, L_i(lambda) in [0, 1], non-increasing in lambda. Given n calibration
images with mean loss R_hat(lambda), the Hoeffding-Bentkus upper confidence bound is

    R+(lambda) = min(R+_Hoeffding, R+_Bentkus), with
    R+_Hoeffding = sup{R >= R_hat: exp(-n h1(R_hat, R)) >= delta},
                   h1(a, b) = a log(a/b) + (1 - a) log((1 - a)/(1 - b)),
    R+_Bentkus   = sup{R >= R_hat: e P(Binom(n, R) <= ceil(n R_hat)) >= delta},

and lambda_hat = inf{lambda: R+(lambda') < alpha for every lambda' >= lambda} on the grid.
Then, with probability at least 1 - delta over the calibration set, the expected share of a
new image's pixels outside T_lambda_hat is at most alpha.

The guarantee holds only for images exchangeable with the calibration images (drawn from the
same distribution: same scanner, same population, same kinds of cases). It says nothing about
an image with a pacemaker, a cable or a scanner never seen in calibration; an out-of-
distribution score (``darkfield_nb.ood``) must say when it does not apply. (The reference code
of Bates et al. uses floor(n R_hat) in the Bentkus term; the paper's ceil is used here: it is
the more conservative of the two.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from ._arrays import ArrayLike, as_numpy

BISECTION_STEPS = 60


def h1(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """h1(a, b) = a log(a/b) + (1 - a) log((1 - a)/(1 - b)) (0 log 0 = 0): the Bernoulli KL."""
    a, b = as_numpy(a), as_numpy(b)
    return special.xlogy(a, a / b) + special.xlogy(1 - a, (1 - a) / (1 - b))


def hoeffding_pvalue(r_hat: ArrayLike, n: int, risk: ArrayLike) -> np.ndarray:
    """exp(-n h1(min(R_hat, R), R)): the Hoeffding tail bound on P(mean loss <= R_hat) when the
    true risk is R."""
    r_hat, risk = as_numpy(r_hat), as_numpy(risk)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.exp(-n * h1(np.minimum(r_hat, risk), risk))


def bentkus_pvalue(r_hat: ArrayLike, n: int, risk: ArrayLike) -> np.ndarray:
    """e P(Binom(n, R) <= ceil(n R_hat)): Bentkus's tail bound (at most 1)."""
    k = np.ceil(n * as_numpy(r_hat) - 1e-9)  # guard n R_hat = integer + rounding error
    from scipy import stats  # here: scipy.stats costs 0.3 s at every predict's start-up

    return np.minimum(math.e * stats.binom.cdf(k, n, as_numpy(risk)), 1.0)


def _ucb(pvalue, r_hat: ArrayLike, n: int, delta: float) -> np.ndarray:
    """sup{R in [R_hat, 1]: pvalue(R_hat, n, R) >= delta} by vectorized bisection (the p-values
    fall in R); 1 where even R -> 1 is not rejected."""
    if not 0 < delta < 1:
        raise ValueError(f"delta={delta} must be in (0, 1)")
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    r = np.clip(as_numpy(r_hat), 0.0, 1.0)
    lo, hi = r.copy(), np.ones_like(r)
    top = 1.0 - 1e-12
    out_top = pvalue(r, n, np.full_like(r, top)) >= delta
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        keep = pvalue(r, n, mid) >= delta
        lo = np.where(keep, mid, lo)
        hi = np.where(keep, hi, mid)
    return np.where(out_top | (r >= 1), 1.0, hi)


def hoeffding_ucb(r_hat: ArrayLike, n: int, delta: float) -> np.ndarray:
    """R+ with exp(-n h1(R_hat, R+)) = delta (1 - delta^(1/n) when R_hat = 0)."""
    return _ucb(hoeffding_pvalue, r_hat, n, delta)


def bentkus_ucb(r_hat: ArrayLike, n: int, delta: float) -> np.ndarray:
    """R+ with e P(Binom(n, R+) <= ceil(n R_hat)) = delta."""
    return _ucb(bentkus_pvalue, r_hat, n, delta)


def hb_ucb(r_hat: ArrayLike, n: int, delta: float) -> np.ndarray:
    """Hoeffding-Bentkus bound: min(hoeffding_ucb, bentkus_ucb)."""
    return np.minimum(hoeffding_ucb(r_hat, n, delta), bentkus_ucb(r_hat, n, delta))


# ----------------------------------------------------------------------------- losses
def needed_lambda(y: ArrayLike, mu: ArrayLike, q_lo: ArrayLike, q_hi: ArrayLike) -> np.ndarray:
    """Per pixel, the smallest lambda whose interval [mu - lambda q_lo, mu + lambda q_hi] holds
    y: (y - mu) / q_hi above mu, (mu - y) / q_lo below (0 where y = mu)."""
    r = as_numpy(y) - as_numpy(mu)
    return np.where(r > 0, r / as_numpy(q_hi), -r / as_numpy(q_lo))


def risk_curves(need: ArrayLike, lambdas: ArrayLike, mask: ArrayLike | None = None) -> np.ndarray:
    """Per image (leading axis) and lambda: the share of its (masked) pixels outside the
    interval, L_i(lambda) = mean over pixels of [need > lambda]. Shape (N, len(lambdas))."""
    need = as_numpy(need)
    lambdas = as_numpy(lambdas)
    m = None if mask is None else np.asarray(mask, bool)
    out = np.empty((need.shape[0], lambdas.size))
    for i in range(need.shape[0]):
        v = need[i][m[i]] if m is not None else need[i].ravel()
        if v.size == 0:
            raise ValueError(f"risk_curves: image {i} has no pixels in the mask")
        v = np.sort(v)
        out[i] = 1.0 - np.searchsorted(v, lambdas, side="right") / v.size
    return out


@dataclass
class RCPSResult:
    """lambda_hat (inf when no grid value qualifies), its grid index (-1 then), and per lambda
    the calibration mean loss r_hat and its upper confidence bound ucb."""

    lambda_hat: float
    index: int
    lambdas: np.ndarray
    r_hat: np.ndarray
    ucb: np.ndarray
    n: int
    alpha: float
    delta: float


def rcps_lambda(
    risks: ArrayLike, lambdas: ArrayLike, alpha: float = 0.1, delta: float = 0.1
) -> RCPSResult:
    """lambda_hat = inf{lambda: R+(lambda') < alpha for all lambda' >= lambda} (module docstring)
    from per-image losses ``risks`` (n, L) on the increasing grid ``lambdas`` (L,)."""
    risks, lambdas = as_numpy(risks), as_numpy(lambdas)
    if risks.ndim != 2 or risks.shape[1] != lambdas.size:
        raise ValueError(f"rcps_lambda: risks {risks.shape} must be (n, {lambdas.size})")
    if np.any(np.diff(lambdas) <= 0):
        raise ValueError("rcps_lambda: lambdas must increase")
    n = risks.shape[0]
    r_hat = risks.mean(0)
    ucb = hb_ucb(r_hat, n, delta)
    ok = ucb < alpha
    # the last grid index where the bound fails; every lambda above it qualifies
    bad = np.flatnonzero(~ok)
    index = 0 if bad.size == 0 else int(bad[-1]) + 1
    if index >= lambdas.size:
        return RCPSResult(math.inf, -1, lambdas, r_hat, ucb, n, alpha, delta)
    return RCPSResult(float(lambdas[index]), index, lambdas, r_hat, ucb, n, alpha, delta)


def rcps_validity(
    risks: ArrayLike,
    lambdas: ArrayLike,
    n_cal: int,
    alpha: float = 0.1,
    delta: float = 0.1,
    n_partitions: int = 200,
    seed: int = 0,
) -> dict:
    """Check the guarantee by resampling: ``n_partitions`` random splits of the images into
    ``n_cal`` calibration and the rest test; for each, lambda_hat from the calibration images and
    the test risk (mean loss of the test images at lambda_hat; 0 when lambda_hat is infinite).
    Returns the test risks, the lambdas and ``violation_rate`` = share of partitions with test
    risk > alpha (to compare with delta; the test mean is itself a finite-sample estimate)."""
    risks, lambdas = as_numpy(risks), as_numpy(lambdas)
    n = risks.shape[0]
    if not 1 <= n_cal < n:
        raise ValueError(f"rcps_validity: n_cal={n_cal} must be in [1, {n - 1}] for {n} images")
    rng = np.random.default_rng(seed)
    test_risk, lams = np.empty(n_partitions), np.empty(n_partitions)
    for k in range(n_partitions):
        perm = rng.permutation(n)
        cal, test = perm[:n_cal], perm[n_cal:]
        res = rcps_lambda(risks[cal], lambdas, alpha, delta)
        lams[k] = res.lambda_hat
        test_risk[k] = 0.0 if res.index < 0 else float(risks[test, res.index].mean())
    return {
        "violation_rate": float(np.mean(test_risk > alpha)),
        "test_risk": test_risk,
        "lambda_hat": lams,
        "n_cal": n_cal,
        "n_test": n - n_cal,
        "alpha": alpha,
        "delta": delta,
    }


@dataclass
class RCPSCalibration:
    """A chosen lambda and what it was chosen for; ``interval`` applies it. Valid only for images
    exchangeable with the ``n`` calibration images (module docstring)."""

    lambda_hat: float
    alpha: float
    delta: float
    n: int
    halfwidth_level: float = 0.9  # q_lo = q_hi = the GGD central half-width at this level

    def interval(
        self, mu: ArrayLike, q_lo: ArrayLike, q_hi: ArrayLike
    ) -> tuple[np.ndarray, np.ndarray]:
        """[mu - lambda_hat q_lo, mu + lambda_hat q_hi]."""
        m = as_numpy(mu)
        return m - self.lambda_hat * as_numpy(q_lo), m + self.lambda_hat * as_numpy(q_hi)

    def to_dict(self) -> dict:
        return {
            "kind": "rcps",
            "lambda_hat": None if math.isinf(self.lambda_hat) else float(self.lambda_hat),
            "alpha": float(self.alpha),
            "delta": float(self.delta),
            "n": int(self.n),
            "halfwidth_level": float(self.halfwidth_level),
        }

    @classmethod
    def from_dict(cls, d: dict) -> RCPSCalibration:
        if d.get("kind") != "rcps":
            raise ValueError(f"RCPSCalibration.from_dict: kind {d.get('kind')!r} != 'rcps'")
        lam = d["lambda_hat"]
        return cls(
            math.inf if lam is None else float(lam),
            float(d["alpha"]),
            float(d["delta"]),
            int(d["n"]),
            float(d.get("halfwidth_level", 0.9)),
        )
