"""Anatomical regions for per-region calibration figures, derived from the label masks.

The masks (``darkfield_nb.labels``) carry bit flags for lung, bone, heart, pathology and
devices, but no body outline. The five regions used here form a *partition* of the image (every
pixel belongs to exactly one), assigned in this order of priority:

* ``device``       any device bit (pacemaker, cable, clip), wherever it lies;
* ``lung``         the lung bit (including pathology inside the lung and ribs projected over
                   the lung: the dark-field signal there is lung signal);
* ``bone``         the bone bit outside the lung (spine, clavicles, ribs outside the lung field);
* ``air``          pixels with *no* label bit whose percentile-normalized input (``x``, the
                   network input of ``darkfield_nb.data.transforms.normalize_input``) is below
                   ``air_threshold`` (0.15) *and* that belong to a connected component (4-
                   connectivity) touching the image border: the air around the patient. Dark
                   unlabeled pixels enclosed by the body (airways) stay soft tissue;
* ``soft_tissue``  everything else: the heart bit and the unlabeled body (mediastinum, neck,
                   shoulders, arms, abdomen, chest wall).

Without the input image ``x`` air cannot be told from soft tissue, and every unlabeled pixel
counts as ``soft_tissue``.

A radiograph has no label mask. For recalibration at inference the package uses a second
partition that needs none, the *predicted lung field* (:func:`field_masks`): with mu the MC mean
of the dark-field map being calibrated (in D) and t a threshold (``LUNG_THRESHOLD`` = 0.1 D,
about half the mean healthy-lung signal; soft tissue has none, bone and metal only a spurious
beam-hardening signal),

* ``predicted_lung``  {x: mu(x) > t};
* ``outside``         {x: mu(x) <= t}.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from darkfield_nb.labels import BONE, DEVICE_BITS, LUNG

REGIONS = ("lung", "bone", "soft_tissue", "air", "device")
AIR_THRESHOLD = 0.15
FIELDS = ("predicted_lung", "outside")
LUNG_THRESHOLD = 0.1


def _border_components(dark: np.ndarray) -> np.ndarray:
    """The pixels of ``dark`` (2-D boolean) in a 4-connected component touching the border."""
    labels, n = ndimage.label(dark)
    if n == 0:
        return np.zeros_like(dark)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    border = border[border > 0]
    return np.isin(labels, border)


def region_masks(
    mask: np.ndarray, x: np.ndarray | None = None, air_threshold: float = AIR_THRESHOLD
) -> dict[str, np.ndarray]:
    """Boolean maps of the five regions (see the module docstring), each of ``mask``'s shape.

    Args:
        mask: integer label masks, (H, W) or (N, H, W) (a leading channel axis of 1 is fine).
        x: the normalized network inputs of the same shape, to separate air from soft tissue.
        air_threshold: normalized input below which an unlabeled pixel may be air.

    Returns:
        ``{region: bool array}`` for every name in ``REGIONS``; the maps are disjoint and
        their union is the whole image.
    """
    m = np.asarray(mask).astype(np.int64)
    if x is not None and np.shape(x) != m.shape:
        raise ValueError(f"region_masks: input shape {np.shape(x)} != mask shape {m.shape}")
    device = (m & DEVICE_BITS) > 0
    lung = ((m & LUNG) > 0) & ~device
    bone = ((m & BONE) > 0) & ~device & ~lung
    unlabeled = m == 0
    air = np.zeros_like(unlabeled)
    if x is not None:
        dark = unlabeled & (np.asarray(x) < air_threshold)
        flat = dark.reshape(-1, *dark.shape[-2:])
        air = np.stack([_border_components(d) for d in flat]).reshape(dark.shape)
    soft = ~(device | lung | bone | air)
    return {"lung": lung, "bone": bone, "soft_tissue": soft, "air": air, "device": device}


def region_of_pixels(regions: dict[str, np.ndarray]) -> np.ndarray:
    """Integer map: the index into ``REGIONS`` of each pixel's region (-1 where none)."""
    shape = next(iter(regions.values())).shape
    out = np.full(shape, -1, dtype=np.int8)
    for k, name in enumerate(REGIONS):
        if name in regions:
            out[regions[name]] = k
    return out


def field_masks(mu: np.ndarray, threshold: float = LUNG_THRESHOLD) -> dict[str, np.ndarray]:
    """The predicted lung field and its complement from the predicted mean ``mu`` (any shape,
    D units): ``{"predicted_lung": mu > threshold, "outside": mu <= threshold}`` (module
    docstring). NaN in ``mu`` counts as outside. Needs no label mask."""
    if not np.isfinite(threshold):
        raise ValueError(f"field_masks: threshold {threshold!r} is not a finite number")
    inside = np.asarray(mu) > threshold
    return {"predicted_lung": inside, "outside": ~inside}
