"""Display processing: from a line-integral image to a clinical-looking radiograph.

Vendors do not archive raw line integrals. They log-transform (the line integral ``A`` already
is the log), window, apply a tone curve (look-up table), compress the large-scale dynamic range
and sharpen edges, then store 12-bit grey values. :func:`to_radiograph` does the same, so the
simulated attenuation images live in the same domain as real chest X-rays (bone and soft tissue
bright, lungs dark, air black):

1. window: ``w = clip((A - lo) / (hi - lo), 0, 1)`` with ``lo = low_value`` (or the
   ``low_percentile`` of ``A``) and ``hi = min(P_high(A), metal_cap * P_95(A))`` (``P_q`` the
   q-th percentile over the exposed field, ``window_mask``), so opaque metal and shutters
   saturate instead of darkening the whole image;
2. latitude compression: ``w <- w - k_eq (G_big * w - mean(w))`` (``G_big`` a wide Gaussian);
3. tone curve (look-up table): ``v = w^gamma`` (``lut="gamma"``) or the normalized logistic
   ``v = (S(k (w^gamma - c)) - S(-k c)) / (S(k (1 - c)) - S(-k c))`` (``lut="sigmoid"``,
   ``S`` the logistic function, slope ``k``, centre ``c``), the S-shaped film-like curve;
4. unsharp mask: ``v <- v + k_us (v - G_small * v)``;
5. photometry: ``v <- 1 - v`` when ``invert`` (a MONOCHROME1 image read as MONOCHROME2);
6. quantize: ``round(clip(v, 0, 1) (2^bits - 1))`` as uint16 (8-bit archives: ``bits=8``).

Gaussian radii are fractions of the image width, so the result looks the same at every size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from darkfield_nb.physics.geometry import linear_resample


@dataclass
class RadiographConfig:
    """Parameters of :func:`to_radiograph`; the defaults look like a routine PA chest film."""

    low_value: float = 0.0  # line integral mapped to black (0 = unattenuated air)
    high_percentile: float = 99.7  # line-integral percentile mapped to white
    metal_cap: float = 1.3  # white at most this times the 95th percentile (metal saturates)
    gamma: float = 1.8  # tone curve exponent (> 1 darkens the lungs)
    equalize_amount: float = 0.15  # latitude compression strength
    equalize_radius: float = 0.1  # wide Gaussian sigma, fraction of image width
    unsharp_amount: float = 0.6  # edge enhancement strength
    unsharp_radius: float = 0.006  # small Gaussian sigma, fraction of image width
    bits: int = 12  # stored bit depth (values 0 .. 2^bits - 1)
    lut: str = "gamma"  # tone curve: "gamma" or "sigmoid"
    sigmoid_slope: float = 8.0  # k of the sigmoid look-up table
    sigmoid_center: float = 0.45  # c of the sigmoid look-up table
    low_percentile: float | None = None  # window low end from a percentile instead of low_value
    invert: bool = False  # MONOCHROME1 read as MONOCHROME2 (a reader error): v -> 1 - v


def wide_blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur with a large ``sigma_px``, computed on a block-averaged copy.

    Blocks of ``f = sigma/4`` pixels are averaged, blurred with ``sigma/f`` and interpolated
    back: the same low-pass up to a few percent, at a fraction of the cost.
    """
    f = max(1, int(sigma_px // 4))
    if f == 1:
        return gaussian_filter(image, sigma_px, mode="nearest")
    h, w = image.shape
    hs, ws = -(-h // f), -(-w // f)
    padded = np.pad(image, ((0, hs * f - h), (0, ws * f - w)), mode="edge")
    small = padded.reshape(hs, f, ws, f).mean(axis=(1, 3))
    small = gaussian_filter(small, sigma_px / f, mode="nearest")
    return linear_resample(small, (h, w), 1.0 / f, 0.5)


def tone_curve(w: np.ndarray, cfg: RadiographConfig) -> np.ndarray:
    """Step 3 of the module docstring: the look-up table applied to the window ``w``."""
    v = w**cfg.gamma
    if cfg.lut == "gamma":
        return v
    if cfg.lut == "sigmoid":
        k, c = cfg.sigmoid_slope, cfg.sigmoid_center

        def S(x):  # noqa: N802 (the logistic function of the formula)
            return 0.5 * (1.0 + np.tanh(0.5 * x))

        lo, hi = S(-k * c), S(k * (1.0 - c))
        return (S(k * (v - c)) - lo) / (hi - lo)
    raise ValueError(f"lut must be 'gamma' or 'sigmoid', got {cfg.lut!r}")


def to_radiograph(
    line_integral: np.ndarray,
    config: RadiographConfig | None = None,
    window_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Turn a line-integral image ``A = integral mu dl`` into a processed radiograph (uint16).

    See the module docstring for the six steps and their formulas. ``window_mask`` (bool)
    limits the window percentiles to the exposed field (behind collimator shutters excluded).
    Returns values in ``0 .. 2^bits - 1`` (12 bits by default), bone bright and lungs dark
    (the reverse when ``invert``).
    """
    cfg = config or RadiographConfig()
    a = np.asarray(line_integral, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"line_integral: expected a 2-D image, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("line_integral: contains NaN or Inf")
    if not 1 <= cfg.bits <= 16:
        raise ValueError(f"bits must be in 1..16, got {cfg.bits}")
    n = max(a.shape)
    field = a if window_mask is None or not np.any(window_mask) else a[window_mask]
    p_hi, p95 = np.percentile(field, [cfg.high_percentile, 95.0])
    hi = float(min(p_hi, cfg.metal_cap * p95)) if cfg.metal_cap > 0 else float(p_hi)
    lo = float(cfg.low_value)
    if cfg.low_percentile is not None:
        lo = float(np.percentile(field, cfg.low_percentile))
    if hi <= lo:
        hi = lo + 1.0
    w = np.clip((a - lo) / (hi - lo), 0.0, 1.0)
    if cfg.equalize_amount:
        big = wide_blur(w, cfg.equalize_radius * n)
        w = np.clip(w - cfg.equalize_amount * (big - big.mean()), 0.0, 1.0)
    v = tone_curve(w, cfg)
    if cfg.unsharp_amount and cfg.unsharp_radius * n >= 0.3:
        v = v + cfg.unsharp_amount * (
            v - gaussian_filter(v, cfg.unsharp_radius * n, mode="nearest")
        )
    v = np.clip(v, 0.0, 1.0)
    if cfg.invert:
        v = 1.0 - v
    top = (1 << cfg.bits) - 1
    return np.round(np.clip(v, 0.0, 1.0) * top).astype(np.uint16)
