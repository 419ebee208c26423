"""Images in and out: :func:`read_image` (any known format to a checked 2-D float32 array),
:func:`write_image` (atomic, format from the suffix) and :func:`list_images` (a folder's
inputs). The format codecs live in :mod:`.raster` (PNG, JPEG, TIFF, NPY) and :mod:`.dicom`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from darkfield_nb.io._codec import ImageReadError
from darkfield_nb.io.dicom import read_dicom
from darkfield_nb.io.raster import (
    read_npy,
    read_pillow,
    read_tiff,
    write_jpeg,
    write_npy,
    write_png,
    write_tiff,
)

#: Suffixes ``read_image`` understands (compared case-insensitively).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".npy", ".jpg", ".jpeg", ".dcm")
#: Suffixes ``write_image`` can write.
WRITABLE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".npy", ".jpg", ".jpeg")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files in ``folder`` (not recursive) whose suffix ``read_image`` knows, sorted.

    Hidden names (starting with ``.``) are skipped: they include the temporary files of an
    unfinished atomic write (:func:`is_temporary`), which are never inputs.

    Raises:
        FileNotFoundError: naming ``folder`` when it is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, expected a folder" if folder.exists() else "folder not found"
        raise FileNotFoundError(f"{folder}: {what}")
    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


_READERS = {
    ".png": read_pillow,
    ".jpg": read_pillow,
    ".jpeg": read_pillow,
    ".tif": read_tiff,
    ".tiff": read_tiff,
    ".npy": read_npy,
    ".dcm": read_dicom,
}
_WRITERS = {
    ".png": write_png,
    ".jpg": write_jpeg,
    ".jpeg": write_jpeg,
    ".tif": write_tiff,
    ".tiff": write_tiff,
    ".npy": write_npy,
}


def read_image(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> np.ndarray:
    """Read one grey image as a 2-D float32 array of its raw values.

    Formats by suffix (case-insensitive): ``.png`` (8/16-bit grey), ``.tif``/``.tiff`` (any
    dtype, float32 included), ``.npy``, ``.jpg``/``.jpeg`` and ``.dcm`` (needs pydicom).
    Values are not rescaled, except that DICOM gets its modality transform
    (``value * RescaleSlope + RescaleIntercept`` or the Modality LUT) and, when the file has
    one, its VOI LUT or window (pydicom's ``apply_modality_lut`` and ``apply_voi_lut``), and
    a DICOM MONOCHROME1 (or TIFF min-is-white) image is inverted as ``max + min - value`` so
    that bright means dense and the value range is kept.

    Colour input (RGB, RGBA, palette, grey+alpha; an ``.npy``/``.tif`` array whose last axis
    has 3 or 4 channels) is converted to grey with the BT.601 luma
    ``0.299 R + 0.587 G + 0.114 B`` and a ``UserWarning`` naming the file. Axes of length 1
    are dropped (an (1, H, W) array is an image); any other shape than 2-D is an error.

    Raises:
        ImageReadError: (a ``ValueError``) naming the file and the problem: missing file,
            directory, unknown extension, empty file, corrupt file, wrong dimensionality,
            more than :data:`MAX_IMAGE_PIXELS` pixels declared (a decompression bomb: refused
            before decoding), float values beyond the float32 range (always, since the cast
            would turn them into Inf), or NaN/Inf values (unless ``allow_nonfinite``).
        ImportError: for ``.dcm`` when pydicom is not installed.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():
        raise ImageReadError(f"{path}: file not found")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a directory, expected an image file")
    if suffix not in _READERS:
        raise ImageReadError(
            f"{path}: unknown image extension {path.suffix!r}; known: {', '.join(IMAGE_SUFFIXES)}"
        )
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    arr = _READERS[suffix](path)
    if arr.dtype == object or np.iscomplexobj(arr) or arr.dtype.kind not in "biuf":
        raise ImageReadError(f"{path}: unsupported pixel type {arr.dtype}")
    while arr.ndim > 2 and 1 in arr.shape:
        arr = arr.squeeze(axis=arr.shape.index(1))
    if arr.ndim != 2:
        raise ImageReadError(
            f"{path}: wrong dimensionality: shape {tuple(arr.shape)}, expected a 2-D grey image"
        )
    if arr.size == 0:
        raise ImageReadError(f"{path}: empty image (shape {tuple(arr.shape)})")
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4:
        n_over = int(np.isinf(out).sum()) - int(np.isinf(arr).sum())
        if n_over:
            big = float(np.abs(arr[np.isfinite(arr)]).max())
            raise ImageReadError(
                f"{path}: values beyond float32 range (max |x| = {big:.4g}, {n_over} of "
                f"{arr.size} pixels; float32 holds up to {np.finfo(np.float32).max:.4g}); "
                "rescale the image before saving it"
            )
    if not allow_nonfinite:
        n_nan = int(np.isnan(out).sum())
        n_inf = int(np.isinf(out).sum())
        if n_nan or n_inf:
            raise ImageReadError(
                f"{path}: contains non-finite values "
                f"({n_nan} NaN, {n_inf} Inf of {out.size} pixels)"
            )
    return out


def write_image(path: str | os.PathLike, array) -> None:
    """Write a 2-D array to ``path`` atomically; the format comes from the suffix.

    - ``.png``: uint8 or uint16 (bool is stored as uint8 0/1); floats are refused, scale and
      cast them first or use ``.tif``/``.npy``.
    - ``.tif``/``.tiff``: any numeric dtype (float32 included), zlib-compressed, no timestamp.
    - ``.npy``: any numeric dtype.
    - ``.jpg``/``.jpeg``: uint8 only, quality 95 (lossy: for display copies, not data).

    The same array always gives the same bytes. Non-finite values are refused, so a written
    file always reads back with ``read_image``.

    Raises:
        ValueError: naming the file: unknown suffix, not 2-D, empty, wrong dtype for the
            format, or NaN/Inf values.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    arr = np.asarray(array)
    if suffix not in WRITABLE_SUFFIXES:
        raise ValueError(
            f"{path}: cannot write extension {path.suffix!r}; writable: "
            f"{', '.join(WRITABLE_SUFFIXES)}"
        )
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D array, got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise ValueError(f"{path}: refusing to write an empty array (shape {arr.shape})")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{path}: unsupported dtype {arr.dtype} (need bool, int or float)")
    if arr.dtype.kind == "f":
        n_bad = int((~np.isfinite(arr)).sum())
        if n_bad:
            raise ValueError(
                f"{path}: refusing to write {n_bad} non-finite (NaN/Inf) values of {arr.size}"
            )
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))  # native byte order

    _WRITERS[suffix](path, arr)
