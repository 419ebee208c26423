"""Display processing: from a line-integral image to a clinical-looking radiograph.

Vendors do not archive raw line integrals. They log-transform (the line integral ``A`` already
is the log), window, apply a tone curve (look-up table), compress the large-scale dynamic range
and sharpen edges, then store 12-bit grey values. :func:`to_radiograph` does the same, so the
simulated attenuation images live in the same domain as real chest X-rays (bone and soft tissue
bright, lungs dark, air black):

1. window: ``w = clip((A - lo) / (hi - lo), 0, 1)`` with ``lo = low_value`` and
   ``hi = min(P_high(A), metal_cap * P_95(A))`` (``P_q`` the q-th percentile), so opaque
   metal saturates instead of darkening the whole image;
2. latitude compression: ``w <- w - k_eq (G_big * w - mean(w))`` (``G_big`` a wide Gaussian);
3. tone curve: ``v = w^gamma``;
4. unsharp mask: ``v <- v + k_us (v - G_small * v)``;
5. quantize: ``round(clip(v, 0, 1) (2^bits - 1))`` as uint16.

Gaussian radii are fractions of the image width, so the result looks the same at every size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter


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


def _upsample(small: np.ndarray, shape: tuple[int, int], factor: int) -> np.ndarray:
    """Linear interpolation from block centres (``factor`` pixels each) back to pixels."""
    out = small
    for axis, n_out in enumerate(shape):
        n_in = small.shape[axis]
        pos = np.clip((np.arange(n_out) + 0.5) / factor - 0.5, 0, n_in - 1)
        i0 = np.minimum(np.floor(pos).astype(int), max(n_in - 2, 0))
        i1 = np.minimum(i0 + 1, n_in - 1)
        w = pos - i0
        a, b = np.take(out, i0, axis=axis), np.take(out, i1, axis=axis)
        w = w[:, None] if axis == 0 else w[None, :]
        out = a * (1 - w) + b * w
    return out


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
    return _upsample(small, (h, w), f)


def to_radiograph(line_integral: np.ndarray, config: RadiographConfig | None = None) -> np.ndarray:
    """Turn a line-integral image ``A = integral mu dl`` into a processed radiograph (uint16).

    See the module docstring for the five steps and their formulas. Returns values in
    ``0 .. 2^bits - 1`` (12 bits by default), bone bright and lungs dark.
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
    p_hi, p95 = np.percentile(a, [cfg.high_percentile, 95.0])
    hi = float(min(p_hi, cfg.metal_cap * p95)) if cfg.metal_cap > 0 else float(p_hi)
    lo = float(cfg.low_value)
    if hi <= lo:
        hi = lo + 1.0
    w = np.clip((a - lo) / (hi - lo), 0.0, 1.0)
    if cfg.equalize_amount:
        big = wide_blur(w, cfg.equalize_radius * n)
        w = np.clip(w - cfg.equalize_amount * (big - big.mean()), 0.0, 1.0)
    v = w**cfg.gamma
    if cfg.unsharp_amount and cfg.unsharp_radius * n >= 0.3:
        v = v + cfg.unsharp_amount * (
            v - gaussian_filter(v, cfg.unsharp_radius * n, mode="nearest")
        )
    top = (1 << cfg.bits) - 1
    return np.round(np.clip(v, 0.0, 1.0) * top).astype(np.uint16)
