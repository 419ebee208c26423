"""Value transforms: the one input normalization, dark-field units, padding to a stride.

Everything here is deterministic and works on single images or stacks whose last two axes are
(H, W).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from darkfield_nb.contract import DARKFIELD_UNITS


def normalize_input(image, low: float = 1.0, high: float = 99.0):
    """Normalize an attenuation radiograph with robust per-image percentiles.

    This is the ONE place where network inputs are normalized::

        x_norm = (x - p_low) / (p_high - p_low)

    with ``p_low`` and ``p_high`` the ``low``-th and ``high``-th percentiles (NumPy's default
    linear interpolation) of the image. Values are not clipped, so the darkest and brightest
    percent fall a little outside [0, 1]. Statistics are taken over the last two axes, so a
    stack (..., H, W) is normalized image by image. A constant image (``p_high == p_low``)
    gives ``x - p_low``, i.e. zeros, instead of dividing by zero.

    Args:
        image: NumPy array or torch tensor, (H, W) or (..., H, W).
        low, high: percentiles in [0, 100], ``low < high``.

    Returns:
        float32 array (or tensor, on the input's device) of the same shape.
    """
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"normalize_input: need 0 <= low < high <= 100, got {low}, {high}")
    if isinstance(image, torch.Tensor):
        out = normalize_input(image.detach().cpu().numpy(), low, high)
        return torch.from_numpy(out).to(image.device)
    x = np.asarray(image, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"normalize_input: expected (..., H, W), got shape {x.shape}")
    p_low, p_high = np.percentile(x, [low, high], axis=(-2, -1), keepdims=True)
    span = p_high - p_low
    span = np.where(span > 0, span, 1.0)
    return ((x - p_low) / span).astype(np.float32)


def darkfield_to_D(values, units: str = "D", eps: float = 1e-6):
    """Convert stored dark-field values to D, the model's target.

    ``units="D"``: the values already are ``D = -ln(V / V0)``; returned as float32.
    ``units="visibility"``: the values are normalized visibility ``v = V / V0`` and
    ``D = -ln(max(v, eps))``. The floor ``eps`` keeps a zero visibility finite; values above 1
    (noise) are kept and give a slightly negative D, so the conversion adds no bias.

    Works on NumPy arrays and torch tensors.
    """
    if units not in DARKFIELD_UNITS:
        raise ValueError(f"darkfield_to_D: unknown units {units!r}; allowed: {DARKFIELD_UNITS}")
    if isinstance(values, torch.Tensor):
        v = values.float()
        return v.clone() if units == "D" else -torch.log(torch.clamp(v, min=eps))
    v = np.asarray(values, dtype=np.float32)
    if units == "D":
        return v.copy()
    return (-np.log(np.maximum(v, np.float32(eps)))).astype(np.float32)


def _pad_amounts(h: int, w: int, multiple: int) -> tuple[int, int, int, int]:
    ph = (-h) % multiple
    pw = (-w) % multiple
    return (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)


def _reflect_torch(t: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Reflect-pad the last two axes by (top, bottom, left, right), any amount.

    ``F.pad(mode="reflect")`` needs each amount smaller than the size, so large pads are done
    in several reflections (like ``np.pad(mode="reflect")``); a side of length 1 is replicated.
    """
    shape = t.shape
    x = t.reshape(-1, 1, shape[-2], shape[-1])
    dtype = x.dtype
    if not x.is_floating_point():  # reflect padding is implemented for floats only
        x = x.double()
    top, bottom, left, right = pad
    while top or bottom or left or right:
        h, w = x.shape[-2:]
        step = [min(left, w - 1), min(right, w - 1), min(top, h - 1), min(bottom, h - 1)]
        if h == 1 or w == 1:
            x = F.pad(x, (left, right, top, bottom), mode="replicate")
            break
        x = F.pad(x, tuple(step), mode="reflect")
        left, right, top, bottom = (
            a - s for a, s in zip((left, right, top, bottom), step, strict=True)
        )
    x = x.to(dtype)
    return x.reshape(*shape[:-2], x.shape[-2], x.shape[-1])


def pad_to_multiple(t, multiple: int):
    """Reflect-pad the last two axes so that H and W become multiples of ``multiple``.

    The padding is split evenly (an odd extra row/column goes to the bottom/right):
    ``pad = (top, bottom, left, right)``. ``unpad(padded, pad)`` gives the input back exactly.
    Works for NumPy arrays and torch tensors of shape (..., H, W), any dtype.

    Returns:
        ``(padded, pad)``.
    """
    if int(multiple) < 1:
        raise ValueError(f"pad_to_multiple: multiple must be >= 1, got {multiple}")
    h, w = t.shape[-2], t.shape[-1]
    pad = _pad_amounts(int(h), int(w), int(multiple))
    if not any(pad):
        return t, pad
    if isinstance(t, torch.Tensor):
        return _reflect_torch(t, pad), pad
    a = np.asarray(t)
    mode = "reflect" if min(h, w) > 1 else "edge"
    widths = [(0, 0)] * (a.ndim - 2) + [(pad[0], pad[1]), (pad[2], pad[3])]
    return np.pad(a, widths, mode=mode), pad


def unpad(t, pad):
    """Crop the padding added by ``pad_to_multiple``: exact inverse on the last two axes.

    ``pad`` is ``(top, bottom, left, right)``: a tuple, a tensor of shape (4,), or a collated
    batch of pads of shape (B, 4) whose rows must all be equal (a batch shares one size).
    """
    if isinstance(pad, torch.Tensor):
        p = pad.reshape(-1, 4)
        if not bool((p == p[0]).all()):
            raise ValueError(f"unpad: images in a batch have different pads: {p.tolist()}")
        pad = p[0].tolist()
    top, bottom, left, right = (int(v) for v in pad)
    h, w = t.shape[-2], t.shape[-1]
    return t[..., top : h - bottom, left : w - right]
