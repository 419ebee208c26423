"""From a feature distance to an epistemic sigma in dark-field units, for the total map.

The density gives a unitless distance ``u`` (a normalized Mahalanobis distance); the total
uncertainty a user sees needs a sigma in D units. :class:`DistanceSigma` is a continuous,
monotone conversion calibrated on in-distribution validation images:

    sigma_epi(u) = sigma_ref * gain * max(u / u_ref - offset, 0) ** power,

    u_ref     = Q_q(u over the validation pixels)
    sigma_ref = median aleatoric sigma of the validation pixels,

``sigma_total = sqrt(sigma_ale^2 + sigma_epi^2)``. Two shapes:

* ``offset = 0`` (a power law, ``gain = 1``): a pixel as unusual as the validation
  ``q``-quantile gets an epistemic sigma equal to the typical aleatoric one, pixels below it a
  smaller, nonzero one;
* ``offset = 1`` (a hinge): zero for ``u <= u_ref``, then rising by ``gain * sigma_ref`` per
  ``u_ref`` (for ``power = 1``), so most in-distribution pixels keep their aleatoric sigma.

The default (chosen in ``bench/ood_targets.py`` on half of the simulated device cases: the best
worst-case device AUROC of the total map among the settings whose validation ``inflation``,
mean total / aleatoric sigma, is at most 1.2) is the hinge with ``q = 0.75``, ``gain = 3``,
``power = 1``. A dict written before ``offset`` / ``gain`` existed reads as the power law
(offset 0, gain 1), as it was written. (The first rule, ``sigma_ref * max(u / d_ref - 1, 0)``
with ``d_ref`` the 95th percentile, :func:`.density.distance_to_sigma`, is the hinge with
``q = 0.95``, ``gain = 1``.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch


def validation_references(values, aleatoric, quantile: float, who: str) -> tuple[float, float]:
    """(the ``quantile`` of the validation ``values`` (NumPy's linear interpolation), the median
    of the validation aleatoric sigmas); ValueError naming ``who`` for empty or non-finite
    input or a quantile outside (0, 1)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    a = np.asarray(aleatoric, dtype=np.float64).ravel()
    if v.size == 0 or a.size == 0 or not (np.isfinite(v).all() and np.isfinite(a).all()):
        raise ValueError(
            f"{who}.calibrate: need finite validation values ({v.size} map values, {a.size} sigmas)"
        )
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"{who}.calibrate: quantile={quantile} must be in (0, 1)")
    return float(np.quantile(v, quantile)), float(np.median(a))


@dataclass
class DistanceSigma:
    """``sigma_epi(u) = sigma_ref * gain * max(u / u_ref - offset, 0) ** power`` (module
    docstring)."""

    u_ref: float
    sigma_ref: float
    power: float = 2.0
    quantile: float = 0.9
    offset: float = 0.0
    gain: float = 1.0

    def __post_init__(self) -> None:
        ok = self.u_ref > 0 and self.sigma_ref >= 0 and self.power > 0 and self.gain > 0
        if not (ok and self.offset >= 0):
            raise ValueError(
                f"DistanceSigma: need u_ref > 0, sigma_ref >= 0, power > 0, gain > 0, "
                f"offset >= 0 (got {self.u_ref}, {self.sigma_ref}, {self.power}, {self.gain}, "
                f"{self.offset})"
            )

    @classmethod
    def calibrate(
        cls,
        u,
        aleatoric,
        quantile: float = 0.9,
        power: float = 2.0,
        *,
        offset: float = 0.0,
        gain: float = 1.0,
    ) -> DistanceSigma:
        """``u_ref`` = the ``quantile`` of the validation distances ``u`` (NumPy's linear
        interpolation), ``sigma_ref`` = the median of the validation aleatoric sigmas."""
        u_ref, s_ref = validation_references(u, aleatoric, quantile, "DistanceSigma")
        return cls(u_ref, s_ref, float(power), float(quantile), float(offset), float(gain))

    def __call__(self, u):
        """The epistemic sigma of the distances ``u`` (tensor or array)."""
        scale = self.sigma_ref * self.gain
        if isinstance(u, torch.Tensor):
            return scale * (u / self.u_ref - self.offset).clamp_min(0.0) ** self.power
        r = np.asarray(u, dtype=np.float64) / self.u_ref - self.offset
        return scale * np.maximum(r, 0.0) ** self.power

    def inflation(self, u, aleatoric) -> float:
        """Mean of ``sigma_total / sigma_ale`` over pixels: how much wider the total map is
        than the aleatoric one (1 when the epistemic part adds nothing)."""
        a = np.asarray(aleatoric, dtype=np.float64)
        e = self(np.asarray(u, dtype=np.float64))
        return float(np.mean(np.sqrt(a**2 + e**2) / a))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistanceSigma:
        return cls(**{k: float(v) for k, v in d.items()})


@dataclass
class MapSigma:
    """Epistemic sigma of an anomaly map ``m`` in [0, 1] (the foreign-body map,
    :mod:`.foreign_body`), a hinge at the validation quantile ``m_ref``:

        sigma(m) = sigma_ref * gain * clip((m - m_ref) / (1 - m_ref), 0, 1) ** power,

        m_ref     = Q_q(m over the validation pixels),
        sigma_ref = median aleatoric sigma of the validation pixels,

    zero for the ``q`` most ordinary validation pixels, ``gain * sigma_ref`` where the map is
    certain (``m = 1``); ``power`` < 1 raises the sigma of a map value just above ``m_ref``."""

    m_ref: float
    sigma_ref: float
    quantile: float = 0.99
    gain: float = 3.0
    power: float = 1.0

    def __post_init__(self) -> None:
        if not (
            0.0 <= self.m_ref < 1.0 and self.sigma_ref >= 0 and self.gain > 0 and self.power > 0
        ):
            raise ValueError(
                f"MapSigma: need 0 <= m_ref < 1, sigma_ref >= 0, gain > 0, power > 0 (got "
                f"{self.m_ref}, {self.sigma_ref}, {self.gain}, {self.power})"
            )

    @classmethod
    def calibrate(
        cls, m, aleatoric, quantile: float = 0.99, gain: float = 3.0, power: float = 1.0
    ) -> MapSigma:
        """``m_ref`` = the ``quantile`` of the validation map values ``m`` (NumPy's linear
        interpolation, at most 0.999 so the hinge has room), ``sigma_ref`` = the median of the
        validation aleatoric sigmas."""
        m_ref, s_ref = validation_references(m, aleatoric, quantile, "MapSigma")
        return cls(min(m_ref, 0.999), s_ref, float(quantile), float(gain), float(power))

    def __call__(self, m):
        """The epistemic sigma of the map values ``m`` (tensor or array)."""
        scale, span = self.sigma_ref * self.gain, 1.0 - self.m_ref
        if isinstance(m, torch.Tensor):
            return scale * ((m - self.m_ref) / span).clamp(0.0, 1.0) ** self.power
        r = np.clip((np.asarray(m, dtype=np.float64) - self.m_ref) / span, 0.0, 1.0)
        return scale * r**self.power

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MapSigma:
        return cls(**{k: float(v) for k, v in d.items()})
