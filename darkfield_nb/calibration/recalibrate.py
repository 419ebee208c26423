"""Post-hoc recalibration of the predicted generalized Gaussian, fitted on a validation split.

Fit on validation (or a dedicated calibration) images only and evaluate on the test split:
fitting and scoring on the same pixels reports a calibration that new images will not see.
Every recalibrator serializes to a plain JSON-able dict (``to_dict``) for a checkpoint's
metadata and comes back with ``from_dict`` (or :func:`recalibrator_from_dict`).

Sigma scaling multiplies the GGD scale alpha (hence sigma and every interval width) by s > 0,
keeping mu and beta. Two ways to choose s from validation pixels i (r_i = y_i - mu_i):

* ``method="nll"`` (default): minimize the mean GGD NLL over s. With z_i = (|r_i|/alpha_i)^beta_i
  the NLL is sum_i z_i s^-beta_i + N log s + const, stationary where
  (1/N) sum_i beta_i z_i s^-beta_i = 1 (solved for log s by Brent's method; the left side falls
  monotonically in s). For one shape beta this is s = (beta mean z)^(1/beta); for the Gaussian
  (beta = 2) s^2 = mean(r^2 / sigma^2).
* ``method="coverage"``: make the central p-interval (default p = 0.9) cover exactly the share
  p of the pixels: s = the p-quantile (inverted empirical CDF) of |r_i| / h_i(p), with
  h_i(p) = alpha_i [P^-1(1/beta_i, p)]^(1/beta_i) the predicted half-width.

Per-region scaling fits one s per anatomical region (:mod:`.regions`); regions with fewer than
``min_pixels`` validation pixels use the global factor. Those regions come from label masks,
which a radiograph does not have. Per-field scaling needs none: with mu the predicted (MC mean)
dark-field map and t the stored ``lung_threshold`` (:func:`.regions.field_masks`, 0.1 D),

    s(x) = f_in   if mu(x) > t        (the predicted lung field)
    s(x) = f_out  otherwise

with f_in and f_out fitted, by the same method, on the validation pixels of each field (a field
with fewer than ``min_pixels`` pixels gets the global factor). One global factor fitted by
coverage gives 90 % of all pixels but shrinks the lung's intervals, whose errors are larger
than the body's; two fields keep the lung's coverage near p.

Isotonic quantile recalibration (Kuleshov, Fenner & Ermon 2018, "Accurate uncertainties for deep
learning using calibrated regression"): with u_i = F_i(y_i) the validation PITs and
P_hat(p) = (1/N) #{i: u_i <= p} their empirical CDF, fit an isotonic (non-decreasing) R on the
pairs (u_i, P_hat(u_i)) (scikit-learn's IsotonicRegression); the recalibrated CDF is R(F(y)) and
the recalibrated central p-interval is [F^-1(R^-1((1-p)/2)), F^-1(R^-1((1+p)/2))]. R is stored
as its values on a uniform grid of ``grid_size`` levels (linear interpolation in between).

These corrections are only as good as the assumption that test images resemble the validation
images (exchangeability); they give no guarantee for a device or a scanner never seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import optimize
from typing_extensions import TypedDict, Unpack

from darkfield_nb.ggd import ggd_quantile

from ._arrays import ArrayLike, as_numpy, pixels
from .metrics import ggd_halfwidth
from .regions import FIELDS, REGIONS, field_masks

SCALING_METHODS = ("nll", "coverage")


# ----------------------------------------------------------------------------- sigma scaling
@dataclass
class SigmaScaling:
    """alpha -> s alpha, with ``factor`` s everywhere, ``per_region[name]`` in that (label)
    region, or, given a predicted mean mu, ``per_field`` (:meth:`field_map`): s(x) =
    per_field["predicted_lung"] if mu(x) > ``lung_threshold`` else per_field["outside"].
    ``method`` and ``p`` record how s was fitted (their defaults are :func:`fit_scale`'s)."""

    factor: float = 1.0
    per_region: dict[str, float] = field(default_factory=dict)
    method: str = "nll"
    p: float = 0.9
    per_field: dict[str, float] = field(default_factory=dict)
    lung_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.per_field and (set(self.per_field) != set(FIELDS) or self.lung_threshold is None):
            raise ValueError(
                f"SigmaScaling: per_field needs exactly {FIELDS} and a lung_threshold, got "
                f"{sorted(self.per_field)} and {self.lung_threshold!r}"
            )

    def scale_map(self, regions: dict[str, np.ndarray] | None = None, shape=None) -> np.ndarray:
        """The factor per pixel: ``per_region`` inside each region given, ``factor`` elsewhere."""
        if regions is None:
            return np.full(shape if shape is not None else (), self.factor)
        shape = next(iter(regions.values())).shape
        out = np.full(shape, self.factor)
        for name, s in self.per_region.items():
            if name in regions:
                out[regions[name]] = s
        return out

    def field_map(self, mu: ArrayLike) -> np.ndarray:
        """s(x) from the predicted mean ``mu`` (float64, ``mu``'s shape): f_in where
        mu(x) > t, f_out elsewhere; ``factor`` everywhere when no field factors were fitted."""
        m = as_numpy(mu)
        if not self.per_field:
            return np.full(m.shape, self.factor)
        fields = field_masks(m, float(self.lung_threshold))
        return np.where(
            fields["predicted_lung"], self.per_field["predicted_lung"], self.per_field["outside"]
        ).astype(np.float64)

    def apply(self, alpha: ArrayLike, regions: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Scaled alpha (same for sigma: it is proportional to alpha at fixed beta)."""
        a = as_numpy(alpha)
        if self.per_region and regions is None:
            raise ValueError("SigmaScaling.apply: per-region factors need the regions")
        return a * self.scale_map(regions, a.shape)

    def to_dict(self) -> dict:
        """Plain dict; ``per_field`` and ``lung_threshold`` only when field factors exist (a
        scaling without them writes the version-1 form)."""
        d = {
            "kind": "sigma_scaling",
            "factor": float(self.factor),
            "per_region": {k: float(v) for k, v in self.per_region.items()},
            "method": self.method,
            "p": float(self.p),
        }
        if self.per_field:
            d["per_field"] = {k: float(v) for k, v in self.per_field.items()}
            d["lung_threshold"] = float(self.lung_threshold)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SigmaScaling:
        if d.get("kind") != "sigma_scaling":
            raise ValueError(f"SigmaScaling.from_dict: kind {d.get('kind')!r} != 'sigma_scaling'")
        t = d.get("lung_threshold")
        return cls(
            float(d["factor"]),
            dict(d.get("per_region", {})),
            d["method"],
            float(d["p"]),
            {k: float(v) for k, v in (d.get("per_field") or {}).items()},
            None if t is None else float(t),
        )


class ScalingKw(TypedDict, total=False):
    """The options of :func:`fit_scale`, which :func:`fit_sigma_scaling` uses for every fit:
    ``mask`` (boolean, the target's shape; None: every pixel), ``method`` ("nll", the default,
    or "coverage") and ``p`` (the central interval's level for "coverage", default 0.9)."""

    mask: ArrayLike | None
    method: str
    p: float


def fit_scale(
    y: ArrayLike,
    mu: ArrayLike,
    alpha: ArrayLike,
    beta: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    method: str = SigmaScaling.method,
    p: float = SigmaScaling.p,
) -> float:
    """One factor s for alpha from the selected pixels (module docstring for the formulas)."""
    if method not in SCALING_METHODS:
        raise ValueError(f"fit_scale: method={method!r} must be one of {SCALING_METHODS}")
    y_, m_, a_, b_ = pixels(y, mu, alpha, beta, mask=mask, name="fit_scale")
    r = np.abs(y_ - m_)
    if method == "coverage":
        return float(np.quantile(r / ggd_halfwidth(p, a_, b_), p, method="inverted_cdf"))
    log_z = b_ * (np.log(np.maximum(r, np.finfo(float).tiny)) - np.log(a_))

    def g(log_s: float) -> float:  # log of (1/N) sum beta z s^-beta, minus log 1
        terms = np.log(b_) + log_z - b_ * log_s
        top = terms.max()
        return float(top + np.log(np.mean(np.exp(terms - top))))

    lo, hi = -1.0, 1.0
    while g(lo) < 0:
        lo *= 2
    while g(hi) > 0:
        hi *= 2
    return float(np.exp(optimize.brentq(g, lo, hi, xtol=1e-12)))


def fit_sigma_scaling(
    y: ArrayLike,
    mu: ArrayLike,
    alpha: ArrayLike,
    beta: ArrayLike,
    *,
    regions: dict[str, np.ndarray] | None = None,
    min_pixels: int = 1000,
    lung_threshold: float | None = None,
    **options: Unpack[ScalingKw],
) -> SigmaScaling:
    """Fit the global factor (and, given ``regions``, one per region with at least
    ``min_pixels`` selected pixels) on validation pixels. ``options``: ``mask``, ``method``,
    ``p`` of :func:`fit_scale` (see :class:`ScalingKw`); ``mask`` restricts every fit (e.g. to
    pixels inside the images, not padding).

    ``lung_threshold`` t (None: none): also fit the field factors f_in on the selected pixels
    with mu > t and f_out on those with mu <= t (module docstring; a field with fewer than
    ``min_pixels`` pixels gets the global factor), so that s(x) = f_in if mu(x) > t else f_out.
    """
    factor = fit_scale(y, mu, alpha, beta, **options)
    mask = options.pop("mask", None)
    per_region = {}
    base = np.ones(np.shape(as_numpy(y)), bool) if mask is None else np.asarray(mask, bool)
    for name in REGIONS:
        if regions is None or name not in regions:
            continue
        sel = base & regions[name]
        if sel.sum() >= min_pixels:
            per_region[name] = fit_scale(y, mu, alpha, beta, mask=sel, **options)
    per_field = {}
    if lung_threshold is not None:
        for name, where in field_masks(as_numpy(mu), lung_threshold).items():
            sel = base & where
            enough = sel.sum() >= min_pixels
            per_field[name] = (
                fit_scale(y, mu, alpha, beta, mask=sel, **options) if enough else factor
            )
    return SigmaScaling(factor, per_region, **options, per_field=per_field,
                        lung_threshold=lung_threshold if per_field else None)  # fmt: skip


# ----------------------------------------------------------------------------- isotonic
@dataclass
class IsotonicRecalibration:
    """R: [0, 1] -> [0, 1], non-decreasing, as values ``table`` on a uniform grid of levels."""

    table: np.ndarray

    @property
    def grid(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, self.table.size)

    def __call__(self, u: ArrayLike) -> np.ndarray:
        """Recalibrated PIT R(u)."""
        return np.interp(as_numpy(u), self.grid, self.table)

    def inverse(self, q: ArrayLike) -> np.ndarray:
        """R^-1(q) = the level u with R(u) = q (smallest on a flat stretch, to grid precision)."""
        strict = self.table + np.arange(self.table.size) * 1e-12  # strictly increasing for interp
        return np.interp(as_numpy(q), strict, self.grid)

    def central_pit(self, u: ArrayLike) -> np.ndarray:
        """|2 R(u) - 1|: y lies in the recalibrated central p-interval iff this is <= p."""
        return np.abs(2.0 * self(u) - 1.0)

    def interval(
        self, p: float, mu: ArrayLike, alpha: ArrayLike, beta: ArrayLike, eps: float = 1e-9
    ) -> tuple[np.ndarray, np.ndarray]:
        """Recalibrated central p-interval [F^-1(R^-1((1-p)/2)), F^-1(R^-1((1+p)/2))] of the GGD
        (levels clipped to [eps, 1 - eps] so that the bounds stay finite)."""
        lo_q, hi_q = np.clip(self.inverse(np.array([(1 - p) / 2, (1 + p) / 2])), eps, 1 - eps)
        m, a, b = as_numpy(mu), as_numpy(alpha), as_numpy(beta)
        return ggd_quantile(lo_q, m, a, b), ggd_quantile(hi_q, m, a, b)

    def to_dict(self) -> dict:
        return {"kind": "isotonic", "table": [float(v) for v in self.table]}

    @classmethod
    def from_dict(cls, d: dict) -> IsotonicRecalibration:
        if d.get("kind") != "isotonic":
            raise ValueError(f"IsotonicRecalibration.from_dict: kind {d.get('kind')!r}")
        return cls(np.asarray(d["table"], dtype=np.float64))


def fit_isotonic(
    u: ArrayLike,
    mask: ArrayLike | None = None,
    max_pixels: int = 200_000,
    grid_size: int = 1001,
    seed: int = 0,
) -> IsotonicRecalibration:
    """Kuleshov et al.'s recalibration map from validation PITs ``u`` (module docstring);
    at most ``max_pixels`` seeded random pixels are used."""
    (u_,) = pixels(u, mask=mask, name="fit_isotonic")
    if u_.size > max_pixels:
        u_ = np.random.default_rng(seed).choice(u_, max_pixels, replace=False)
    u_ = np.sort(u_)
    p_hat = np.searchsorted(u_, u_, side="right") / u_.size
    from sklearn.isotonic import IsotonicRegression  # here: scikit-learn costs 0.4 s to import

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(u_, p_hat)
    grid = np.linspace(0.0, 1.0, grid_size)
    table = iso.predict(grid)
    table[0], table[-1] = 0.0, 1.0
    return IsotonicRecalibration(np.maximum.accumulate(np.clip(table, 0.0, 1.0)))


def recalibrator_from_dict(d: dict):
    """Rebuild any recalibrator of this package from its ``to_dict`` output."""
    from .risk import RCPSCalibration

    kinds = {
        "sigma_scaling": SigmaScaling,
        "isotonic": IsotonicRecalibration,
        "rcps": RCPSCalibration,
    }
    if d.get("kind") not in kinds:
        raise ValueError(f"recalibrator_from_dict: unknown kind {d.get('kind')!r}")
    return kinds[d["kind"]].from_dict(d)
