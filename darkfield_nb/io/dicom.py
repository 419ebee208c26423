"""DICOM radiographs: pixel data to modality values (rescale or Modality LUT), the VOI LUT or
window when present, MONOCHROME1 inverted; pydicom does the work and is needed only here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from darkfield_nb.io._codec import (
    MAX_IMAGE_PIXELS,
    ImageReadError,
    rgb_to_grey,
    too_many_pixels,
    warn_converted,
)


def read_dicom(path: Path) -> np.ndarray:
    try:
        import pydicom
    except ImportError as exc:
        raise ImportError(
            f"{path}: reading DICOM files needs pydicom; install it with "
            "`pip install darkfield-nb[dicom]` (or `pip install pydicom`)"
        ) from exc
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise ImageReadError(f"{path}: not a readable DICOM file ({exc})") from exc
    if "PixelData" not in ds:
        raise ImageReadError(f"{path}: DICOM file has no pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(
            f"{path}: wrong dimensionality: DICOM has {frames} frames, expected one 2-D image"
        )
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols > MAX_IMAGE_PIXELS:  # compressed pixel data can be a bomb too
        raise too_many_pixels(path, rows * cols, f"{rows} x {cols}")
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise ImageReadError(f"{path}: DICOM pixel data cannot be decoded ({exc})") from exc
    if int(ds.get("SamplesPerPixel", 1)) in (3, 4) and arr.ndim == 3:
        warn_converted(path, f"DICOM {ds.get('PhotometricInterpretation', 'colour')}")
        return rgb_to_grey(arr)
    out = dicom_values(ds, arr, path)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1" and out.size:
        out = out.max() + out.min() - out  # MONOCHROME1: low values are white; invert in range
    return out


def dicom_values(ds, arr: np.ndarray, path: Path) -> np.ndarray:
    """Stored pixels -> modality values (Rescale Slope/Intercept or a Modality LUT), then the
    VOI LUT or window when the file has one, with pydicom's own functions."""
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut  # pydicom >= 3
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    try:
        out = apply_modality_lut(arr, ds)
        if "VOILUTSequence" in ds or "WindowCenter" in ds:
            out = apply_voi_lut(out, ds)
    except Exception as exc:
        raise ImageReadError(f"{path}: DICOM rescale or VOI LUT cannot be applied ({exc})") from exc
    return np.asarray(out, dtype=np.float64)
