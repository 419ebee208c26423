"""Input handling shared by the calibration functions: any array-likes (NumPy, torch, floats)
of one shape, an optional boolean mask, flattened to float64 pixel vectors."""

from __future__ import annotations

from typing import Any

import numpy as np

ArrayLike = Any  # np.ndarray | torch.Tensor | float


def as_numpy(a: ArrayLike) -> np.ndarray:
    """A float64 NumPy copy of ``a`` (torch tensors are detached and moved to the CPU)."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def pixels(
    *arrays: ArrayLike, mask: ArrayLike | None = None, name: str = "calibration"
) -> list[np.ndarray]:
    """Broadcast ``arrays`` to one shape and return their selected pixels as 1-D float64
    vectors: all pixels, or those where ``mask`` (boolean, that shape) is true. Raises when
    shapes do not broadcast, when nothing is selected, or when a value is not finite."""
    arrs = [as_numpy(a) for a in arrays]
    try:
        arrs = list(np.broadcast_arrays(*arrs))
    except ValueError as err:
        shapes = [a.shape for a in arrs]
        raise ValueError(f"{name}: array shapes {shapes} do not broadcast") from err
    if mask is not None:
        m = np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask)
        if m.dtype != bool:
            raise ValueError(f"{name}: mask must be boolean, got {m.dtype}")
        if m.shape != arrs[0].shape:
            raise ValueError(f"{name}: mask shape {m.shape} != array shape {arrs[0].shape}")
        arrs = [a[m] for a in arrs]
    else:
        arrs = [a.ravel() for a in arrs]
    if arrs[0].size == 0:
        raise ValueError(f"{name}: no pixels selected (empty array or all-false mask)")
    for a in arrs:
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name}: arrays hold NaN or Inf")
    return arrs
