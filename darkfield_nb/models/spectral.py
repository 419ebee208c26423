"""Image diagnostics for upsampling and border artifacts: Nyquist power and edge contrast.

A transposed convolution with kernel 2 and stride 2 makes each of the four pixel parities with
its own kernel tap, so its artifacts repeat every 2 pixels: the "checkerboard". In the 2-D DFT
of an H x W image (H, W even) a period-2 pattern lives on the Nyquist row ``u = H/2`` and the
Nyquist column ``v = W/2``, so their share of the image's power measures it:

    F(u, v) = sum_{y, x} (I(y, x) - mean I) exp(-2 pi i (u y / H + v x / W))
    N = {(u, v): u = H/2 or v = W/2}
    nyquist_power_ratio(I) = sum_{(u, v) in N} |F(u, v)|^2 / sum_{all (u, v)} |F(u, v)|^2

The mean is removed first (the DC term says nothing about texture). A pure checkerboard
``(-1)^(y + x)`` puts all its power at (H/2, W/2): ratio 1. Stripes ``(-1)^y`` also give 1.
A smooth image gives ~0. White noise gives about (H + W - 1) / (H W), the Nyquist lines' share
of the frequency plane. Compare a prediction's ratio with its target's: a decoder that adds a
grid pushes the prediction's ratio above the target's.

Edge contrast (for the bottom-edge sigma band):

    border_ratio(M, k) = mean of M over the outer k rows and columns / mean of M over the rest
"""

from __future__ import annotations

import numpy as np
import torch


def _as_array(image) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    a = np.asarray(image, dtype=np.float64)
    if a.ndim < 2:
        raise ValueError(f"expected an image (..., H, W), got shape {a.shape}")
    return a


def nyquist_power_ratio(image) -> np.ndarray | float:
    """Share of an image's AC power on the Nyquist row and column of its 2-D DFT.

    Args:
        image: (H, W) or (..., H, W) array or tensor with H and W even.

    Returns:
        A float for one image, else an array of shape ``image.shape[:-2]``; 0 for a constant
        image (no AC power).
    """
    a = _as_array(image)
    h, w = a.shape[-2:]
    if h % 2 or w % 2:
        raise ValueError(f"nyquist_power_ratio: H and W must be even, got {h} x {w}")
    a = a - a.mean(axis=(-2, -1), keepdims=True)
    p = np.abs(np.fft.fft2(a)) ** 2
    total = p.sum(axis=(-2, -1))
    nyq = p[..., h // 2, :].sum(axis=-1) + p[..., :, w // 2].sum(axis=-1)
    nyq = nyq - p[..., h // 2, w // 2]  # the corner lies on both lines
    ratio = np.where(total > 0, nyq / np.where(total > 0, total, 1.0), 0.0)
    return float(ratio) if ratio.ndim == 0 else ratio


def border_ratio(image, width: int = 4) -> np.ndarray | float:
    """Mean over the outer ``width`` rows and columns divided by the mean over the interior.

    1 when the border does not differ from the interior on average. Shape as in
    :func:`nyquist_power_ratio`.
    """
    a = _as_array(image)
    h, w = a.shape[-2:]
    if width < 1 or 2 * width >= min(h, w):
        raise ValueError(f"border_ratio: width={width} does not fit an image of {h} x {w}")
    inner = np.zeros((h, w), dtype=bool)
    inner[width : h - width, width : w - width] = True
    ratio = a[..., ~inner].mean(axis=-1) / a[..., inner].mean(axis=-1)
    return float(ratio) if np.ndim(ratio) == 0 else ratio


def edge_profile(image, width: int = 4) -> dict[str, float]:
    """Mean of a single (H, W) map over its top, bottom, left and right ``width`` lines and its
    interior (outside a ``width`` frame), for reports of which edge is off."""
    a = _as_array(image)
    if a.ndim != 2:
        raise ValueError(f"edge_profile: expected one (H, W) map, got shape {a.shape}")
    k = width
    return {
        "top": float(a[:k].mean()),
        "bottom": float(a[-k:].mean()),
        "left": float(a[:, :k].mean()),
        "right": float(a[:, -k:].mean()),
        "interior": float(a[k:-k, k:-k].mean()),
    }
