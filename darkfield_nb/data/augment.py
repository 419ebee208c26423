"""Training augmentation: pair-aligned geometry and input-only "display processing".

Two kinds, with different rules:

* Geometry (flip, shift) moves anatomy, so it is applied identically to the input, the target
  and the mask: the pair stays aligned pixel for pixel.
* Display processing mimics what vendors and archives do to a radiograph before anyone sees it
  (window, gamma look-up table, unsharp-mask edge enhancement, noise, 8-bit quantization; see
  DESIGN section 4, "Input domain"). It changes the input only: the dark-field target is a
  physical quantity and does not depend on how the attenuation image was displayed.

Randomness comes from a NumPy ``Generator`` seeded with ``(seed, epoch, index)``, so an item
gets the same augmentation whatever the number of DataLoader workers or the order of access.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class Augment:
    """Settings of the training augmentation; the defaults are a sensible training setup.

    Geometry (input, target and mask together):
        hflip: probability of a left-right flip. Off by default: a flip puts the heart on the
            right, which real chest radiographs almost never show.
        max_shift: largest translation in pixels along each axis (reflect-filled border).

    Display processing (input only), applied with probability ``display``:
        window: each end of the display window moves inward by up to this fraction of the
            image range; values outside are clipped (saturated), as in a windowed archive.
        gamma: range of the look-up-table exponent ``y = y ** g`` (log-uniform).
        unsharp: probability of unsharp masking ``y + a * (y - G_s * y)`` with ``s`` drawn
            from ``unsharp_sigma`` pixels and ``a`` from ``unsharp_amount``.
        noise: range of the standard deviation of additive Gaussian noise, as a fraction of
            the image range.
        quantize: probability of rounding to 8 bits (an 8-bit archive copy).

    seed: base seed; item ``i`` in epoch ``e`` uses ``np.random.default_rng([seed, e, i])``.
    """

    seed: int = 0
    hflip: float = 0.0
    max_shift: int = 8
    display: float = 0.8
    window: float = 0.1
    gamma: tuple[float, float] = (0.7, 1.5)
    unsharp: float = 0.5
    unsharp_sigma: tuple[float, float] = (1.0, 4.0)
    unsharp_amount: tuple[float, float] = (0.2, 1.0)
    noise: tuple[float, float] = (0.0, 0.02)
    quantize: float = 0.3

    def rng(self, index: int, epoch: int = 0) -> np.random.Generator:
        """The generator for item ``index`` in ``epoch`` (deterministic)."""
        return np.random.default_rng([int(self.seed), int(epoch), int(index)])

    def geometric(self, arrays: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        """Apply the same flip and shift to every (H, W) array in ``arrays``."""
        flip = bool(rng.random() < self.hflip)
        s = int(self.max_shift)
        dy, dx = (int(v) for v in rng.integers(-s, s + 1, size=2)) if s > 0 else (0, 0)
        out = []
        for a in arrays:
            if flip:
                a = a[:, ::-1]
            if dy or dx:
                a = _shift(a, dy, dx)
            out.append(np.ascontiguousarray(a))
        return out

    def display_processing(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Randomly re-process an attenuation radiograph the way a vendor or archive might.

        The image is first mapped to [0, 1] by its minimum and maximum; the result stays in
        [0, 1] (float32). Returns the image unchanged (as float32) with probability
        ``1 - display``. The random numbers drawn do not depend on the image.
        """
        draws = {
            "apply": rng.random(),
            "lo": rng.uniform(0.0, self.window),
            "hi": rng.uniform(0.0, self.window),
            "gamma": np.exp(rng.uniform(np.log(self.gamma[0]), np.log(self.gamma[1]))),
            "noise": rng.uniform(*self.noise),
            "unsharp": rng.random(),
            "sigma": rng.uniform(*self.unsharp_sigma),
            "amount": rng.uniform(*self.unsharp_amount),
            "quantize": rng.random(),
        }
        x = np.asarray(image, dtype=np.float32)
        if draws["apply"] >= self.display:
            return x.copy()
        lo, hi = float(x.min()), float(x.max())
        y = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
        w_lo, w_hi = draws["lo"], 1.0 - draws["hi"]
        y = np.clip((y - w_lo) / (w_hi - w_lo), 0.0, 1.0)
        y = y ** draws["gamma"]
        if draws["noise"] > 0:
            y = y + rng.normal(0.0, draws["noise"], size=y.shape)
        if draws["unsharp"] < self.unsharp:
            y = y + draws["amount"] * (
                y - ndimage.gaussian_filter(y, draws["sigma"], mode="reflect")
            )
        y = np.clip(y, 0.0, 1.0)
        if draws["quantize"] < self.quantize:
            y = np.round(y * 255.0) / 255.0
        return y.astype(np.float32)


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate ``a`` by (dy, dx) pixels: ``out[i, j] = a[i - dy, j - dx]``, reflect border."""
    py, px = abs(dy), abs(dx)
    mode = "reflect" if min(a.shape) > max(py, px) else "edge"
    padded = np.pad(a, ((py, py), (px, px)), mode=mode)
    h, w = a.shape
    return padded[py - dy : py - dy + h, px - dx : px - dx + w]
