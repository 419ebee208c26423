"""Geometry-aware inference: bring every radiograph to the geometry the model was trained on.

A checkpoint records its training geometry (``darkfield_nb.checkpoint.checkpoint_geometry``):
image size, field of view and pixel size in mm. A radiograph's pixel size comes from its DICOM
header (``PixelSpacing``, else ``ImagerPixelSpacing``) when it has one; otherwise the whole
image is taken as a chest field of the training field of view along its longer side::

    pixel_mm (known)    = the header's (row, column) spacing
    pixel_mm (assumed)  = field_of_view_mm / max(H, W)
    scale               = pixel_mm / training pixel_mm         (model pixels per input pixel)
    model shape         = (round(H * scale_row), round(W * scale_col))

The image is resampled to the model shape, the model predicts, and the maps are resampled back
to (H, W) (:func:`resize_mean`, :func:`resize_sigma`). A radiograph far from the training
geometry (a field of view more than ``FAR_FACTOR`` times off, an aspect ratio beyond
``MAX_ASPECT``) gets warnings that name the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: Warn when the radiograph's field of view differs from the training one by more than this.
FAR_FACTOR = 2.0
#: Warn when max(H, W) / min(H, W) exceeds this (training images are square).
MAX_ASPECT = 1.5
#: Smallest side the model is given after resampling.
MIN_MODEL_SIDE = 16
SOURCES = ("PixelSpacing", "ImagerPixelSpacing", "assumed", "native")


@dataclass(frozen=True)
class TrainingGeometry:
    """The geometry a model was trained on: ``size`` (H, W) pixels, ``pixel_mm`` per pixel,
    ``field_of_view_mm = max(H, W) * pixel_mm``."""

    size: tuple[int, int] = (256, 256)
    pixel_mm: float = 1.5625

    @property
    def field_of_view_mm(self) -> float:
        return max(self.size) * self.pixel_mm

    @classmethod
    def from_dict(cls, geo: dict[str, Any]) -> TrainingGeometry:
        """From a checkpoint's ``geometry`` entry (``checkpoint.checkpoint_geometry``)."""
        h, w = (int(v) for v in geo["size"])
        pixel = geo.get("pixel_mm")
        if pixel is None:
            pixel = float(geo["field_of_view_mm"]) / max(h, w)
        return cls((h, w), float(pixel))

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> TrainingGeometry:
        from darkfield_nb.checkpoint import checkpoint_geometry

        return cls.from_dict(checkpoint_geometry(ckpt))

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": list(self.size),
            "field_of_view_mm": self.field_of_view_mm,
            "pixel_mm": self.pixel_mm,
        }


@dataclass(frozen=True)
class ResamplePlan:
    """What inference does with one radiograph.

    ``input_shape`` (H, W); ``model_shape`` the shape the model sees; ``pixel_mm`` the input's
    (row, column) pixel size and ``pixel_source`` where it came from ("PixelSpacing",
    "ImagerPixelSpacing", "assumed": whole image = training field of view, "native": no
    resampling asked); ``scale`` model pixels per input pixel (row, column); ``warnings`` the
    reasons the radiograph is far from the training geometry (empty when it is not).
    """

    input_shape: tuple[int, int]
    model_shape: tuple[int, int]
    pixel_mm: tuple[float, float]
    pixel_source: str
    scale: tuple[float, float]
    warnings: tuple[str, ...] = field(default=())

    @property
    def identity(self) -> bool:
        return self.model_shape == self.input_shape

    def summary(self) -> dict[str, Any]:
        """Columns for ``summary.csv``."""
        return {
            "height": self.input_shape[0],
            "width": self.input_shape[1],
            "pixel_mm": round(float(np.mean(self.pixel_mm)), 6),
            "pixel_source": self.pixel_source,
            "scale": round(float(np.mean(self.scale)), 6),
            "model_height": self.model_shape[0],
            "model_width": self.model_shape[1],
        }


def dicom_pixel_spacing(path: str | os.PathLike) -> tuple[float, float, str] | None:
    """(row mm, column mm, tag name) of a DICOM file: ``PixelSpacing`` (spacing in the patient
    plane) when present, else ``ImagerPixelSpacing`` (at the detector); None when the file has
    neither, is not DICOM (by suffix) or pydicom is missing. Reads the header only."""
    path = Path(path)
    if path.suffix.lower() != ".dcm":
        return None
    try:
        import pydicom
    except ImportError:
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # an unreadable header: read_image reports the file itself
        return None
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(tag)
        if value is None:
            continue
        try:
            row, col = (float(v) for v in list(value)[:2])
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0 and np.isfinite(row) and np.isfinite(col):
            return row, col, tag
    return None


def plan_resample(
    shape: tuple[int, int],
    geometry: TrainingGeometry,
    spacing: tuple[float, float, str] | None = None,
    *,
    resample: bool = True,
    name: str = "",
) -> ResamplePlan:
    """The :class:`ResamplePlan` of an (H, W) radiograph (see the module docstring).

    ``spacing``: (row mm, column mm, source) from :func:`dicom_pixel_spacing`, or None.
    ``resample=False`` keeps the input's size (``pixel_source="native"``; warnings still say
    how far the image is from the training geometry). ``name`` prefixes the warnings.
    """
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise ValueError(f"{name or 'plan_resample'}: empty image shape {shape}")
    train_px = geometry.pixel_mm
    if spacing is not None:
        pixel = (float(spacing[0]), float(spacing[1]))
        source = spacing[2]
    else:
        est = geometry.field_of_view_mm / max(h, w)
        pixel = (est, est)
        source = "assumed"
    warnings: list[str] = []
    prefix = f"{name}: " if name else ""
    fov = max(h * pixel[0], w * pixel[1])
    ratio = fov / geometry.field_of_view_mm
    far = not 1.0 / FAR_FACTOR <= ratio <= FAR_FACTOR
    if far and source == "given":  # the caller's own pixel size: respected, with a warning
        warnings.append(
            f"{prefix}field of view {fov:.0f} mm ({source} {pixel[0]:.4g} mm x {max(h, w)} px) "
            f"is {ratio:.2f}x the model's {geometry.field_of_view_mm:.0f} mm: far from the "
            "training geometry, the dark-field may be unreliable"
        )
    elif far and source != "assumed":
        # A header that puts a chest radiograph in a field this far from the training one is
        # more often stale (an archive image downsampled without updating the tag) than true:
        # fall back to the whole image as the chest field, and say so.
        est = geometry.field_of_view_mm / max(h, w)
        warnings.append(
            f"{prefix}{source} {pixel[0]:.4g} mm x {max(h, w)} px implies a {fov:.0f} mm field, "
            f"{ratio:.2f}x the model's {geometry.field_of_view_mm:.0f} mm: implausible for a "
            "chest radiograph, so the spacing is ignored and the whole image is taken as the "
            "chest field; check the header, the dark-field may be unreliable"
        )
        pixel, source = (est, est), f"assumed ({source} ignored)"
    aspect = max(h, w) / min(h, w)
    if aspect > MAX_ASPECT:
        warnings.append(
            f"{prefix}aspect ratio {aspect:.2f} ({h} x {w} px) is far from the square training "
            "images: the dark-field may be unreliable"
        )
    if not resample:
        return ResamplePlan((h, w), (h, w), pixel, "native", (1.0, 1.0), tuple(warnings))
    sy, sx = pixel[0] / train_px, pixel[1] / train_px
    model_shape = (max(1, round(h * sy)), max(1, round(w * sx)))
    if min(model_shape) < MIN_MODEL_SIDE:
        raise ValueError(
            f"{prefix}{h} x {w} px of {pixel[0]:.4g} mm ({source}) would be resampled to "
            f"{model_shape[0]} x {model_shape[1]} px of the model's {train_px:.4g} mm: too small "
            "to predict (check the pixel size, or use resample='off')"
        )
    if model_shape == (h, w):
        sy = sx = 1.0  # within half a pixel of the training geometry: no resampling
    return ResamplePlan((h, w), model_shape, pixel, source, (sy, sx), tuple(warnings))


def _as_4d(array) -> tuple[torch.Tensor, bool, tuple[int, ...]]:
    is_np = not isinstance(array, torch.Tensor)
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)) if is_np else array
    shape = tuple(t.shape)
    return t.reshape(-1, 1, *shape[-2:]), is_np, shape


def resize(array, shape: tuple[int, int]):
    """Resample an image (NumPy or torch, (..., H, W)) to ``shape`` by bilinear interpolation
    on pixel centres (``align_corners=False``: pixel i of n covers [i, i+1) * size / n), with
    the antialiasing triangle filter when shrinking (``torch.nn.functional.interpolate``,
    ``antialias=True``; its width grows with the shrink factor, so no aliasing). Same shape
    in, same array out; returns the input's type, float32."""
    t, is_np, orig = _as_4d(array)
    shape = (int(shape[0]), int(shape[1]))
    if tuple(orig[-2:]) == shape:
        out = t.float()
    else:
        shrink = shape[0] < orig[-2] or shape[1] < orig[-1]
        out = F.interpolate(
            t.float(), size=shape, mode="bilinear", align_corners=False, antialias=shrink
        )
    out = out.reshape(*orig[:-2], *shape)
    return out.numpy() if is_np else out


def resize_mean(array, shape: tuple[int, int]):
    """Resample a map of values (the dark-field mean D) back: :func:`resize`."""
    return resize(array, shape)


def resize_sigma(sigma, shape: tuple[int, int]):
    """Resample a standard-deviation map: ``sqrt(resize(sigma^2))``.

    Interpolating the variance (a convex combination of the neighbours' variances) keeps
    ``total^2 = aleatoric^2 + epistemic^2`` exact after resampling, and never gives a
    negative variance. Interpolating sigma itself would break that identity."""
    if isinstance(sigma, torch.Tensor):
        return resize(sigma.float() ** 2, shape).clamp_min(0).sqrt()
    var = resize(np.asarray(sigma, dtype=np.float32) ** 2, shape)
    return np.sqrt(np.maximum(var, 0.0)).astype(np.float32)
