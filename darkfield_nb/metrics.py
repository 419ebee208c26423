"""Image-quality metrics: MSE, PSNR and SSIM, each optionally inside a mask.

Every function takes a reference ``target`` and a ``prediction`` of the same shape ``(..., H, W)``
(NumPy arrays or torch tensors) and returns one value per image: a float for a 2-D input, an array
or tensor of the leading shape otherwise. PSNR and SSIM need an explicit ``data_range`` (the
span of values the images can take), as in scikit-image; nothing is guessed from the data.

Conventions follow ``skimage.metrics`` (tests compare against it to 1e-4):

- ``mse = mean((target - prediction)^2)``
- ``psnr = 10 log10(data_range^2 / mse)``
- ``ssim``: Wang et al. (2004) with scikit-image's defaults: a 7x7 uniform window, K1 = 0.01,
  K2 = 0.03, sample covariances (N / (N - 1)), and the mean of the SSIM map over the pixels at
  least 3 pixels from the border (where the window lies inside the image)::

      SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)),
      C1 = (K1 R)^2, C2 = (K2 R)^2

With a ``mask`` (same spatial shape, broadcastable), MSE and PSNR average over the masked pixels
only, and SSIM averages its map over masked pixels of that interior region.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

SSIM_WINDOW = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_tensor(a) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().to(dtype=torch.float64)
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


def _check(target, prediction, mask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    t, p = _as_tensor(target), _as_tensor(prediction)
    if t.shape != p.shape:
        raise ValueError(f"target shape {tuple(t.shape)} != prediction shape {tuple(p.shape)}")
    if t.ndim < 2:
        raise ValueError(f"images must have shape (..., H, W); got {tuple(t.shape)}")
    m = None
    if mask is not None:
        m = torch.broadcast_to(_as_tensor(mask) > 0, t.shape).to(torch.float64)
        if (m.sum(dim=(-2, -1)) == 0).any():
            raise ValueError("mask selects no pixel in at least one image")
    return t, p, m


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean(dim=(-2, -1))
    return (values * mask).sum(dim=(-2, -1)) / mask.sum(dim=(-2, -1))


def _like_input(value: torch.Tensor, reference):
    if isinstance(reference, torch.Tensor):
        return value.to(dtype=torch.float32)
    out = value.numpy()
    return float(out) if out.ndim == 0 else out


def mse(target, prediction, mask=None):
    """Mean squared error ``mean((target - prediction)^2)`` per image (inside ``mask``)."""
    t, p, m = _check(target, prediction, mask)
    return _like_input(_masked_mean((t - p) ** 2, m), target)


def psnr(target, prediction, data_range: float, mask=None):
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB, per image."""
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    t, p, m = _check(target, prediction, mask)
    err = _masked_mean((t - p) ** 2, m)
    return _like_input(10.0 * torch.log10(data_range**2 / err), target)


def ssim_map(target, prediction, data_range: float) -> torch.Tensor:
    """The SSIM map over the interior ``(..., H - 6, W - 6)`` (scikit-image conventions)."""
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    t, p, _ = _check(target, prediction, None)
    if min(t.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels")
    lead = t.shape[:-2]
    x = t.reshape(-1, 1, *t.shape[-2:])
    y = p.reshape(-1, 1, *p.shape[-2:])

    def window_mean(z: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(z, SSIM_WINDOW, stride=1)

    n = SSIM_WINDOW**2
    cov_norm = n / (n - 1)
    ux, uy = window_mean(x), window_mean(y)
    vx = cov_norm * (window_mean(x * x) - ux * ux)
    vy = cov_norm * (window_mean(y * y) - uy * uy)
    vxy = cov_norm * (window_mean(x * y) - ux * uy)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.reshape(*lead, *s.shape[-2:])


def ssim(target, prediction, data_range: float, mask=None):
    """Structural similarity per image (see the module docstring for the formula)."""
    s = ssim_map(target, prediction, data_range)
    m = None
    if mask is not None:
        t = _as_tensor(target)
        full = torch.broadcast_to(_as_tensor(mask) > 0, t.shape)
        r = SSIM_WINDOW // 2
        m = full[..., r:-r, r:-r].to(torch.float64)
        if (m.sum(dim=(-2, -1)) == 0).any():
            raise ValueError("mask selects no pixel of the SSIM interior in at least one image")
    return _like_input(_masked_mean(s, m), target)


# The span of dark-field values D = -ln(V/V0) used as ``data_range`` for PSNR and SSIM of
# dark-field images throughout the package (training validation, evaluation, notebooks). Simulated
# chest D lies in about 0..0.6, so 1.0 D-unit bounds it with room for devices and noise. The
# paper's figures are on images scaled to [0, 1]; ours are in physical units, so compare trends
# (stage 1 -> 3), not absolute values.
DARKFIELD_DATA_RANGE = 1.0


def bootstrap_ci(
    values, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``values`` with a percentile-bootstrap confidence interval.

    Resample the n values with replacement ``n_boot`` times, take each resample's mean, and
    return ``(mean, q_low, q_high)`` with q the ``(1 -+ confidence) / 2`` quantiles of those means
    (``scipy.stats.bootstrap(method="percentile")``). Seeded, so the interval is reproducible.
    scipy refuses a single value; its interval is that value (every resample equals it).
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    res = stats.bootstrap(
        (x,),
        np.mean,
        n_resamples=n_boot,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)
