"""Reading and writing images and small files, atomically.

Images: :func:`read_image` (PNG/TIFF/NPY/JPEG/DICOM to a 2-D float32 array, every problem an
:class:`ImageReadError` naming the file) and :func:`write_image`; :func:`list_images` lists a
folder's inputs (never hidden or temporary files). Every writer writes to a temporary name and
renames (``darkfield_nb.atomic``, whose names are re-exported here: ``atomic_path``,
``atomic_write_text``, ``write_json``, ``WriteError``, ``check_writable_dir``,
``clean_stale_temporaries`` ...).
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from darkfield_nb.atomic import (
    STALE_AFTER_S,
    TEMPORARY_NAME,
    WriteError,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    check_output_file,
    check_writable_dir,
    clean_stale_temporaries,
    is_temporary,
    stale_temporaries,
    write_json,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "LUMA_WEIGHTS",
    "MAX_IMAGE_PIXELS",
    "PNG_COMPRESS_LEVEL",
    "STALE_AFTER_S",
    "TEMPORARY_NAME",
    "WRITABLE_SUFFIXES",
    "ImageReadError",
    "WriteError",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_file",
    "check_writable_dir",
    "clean_stale_temporaries",
    "is_temporary",
    "list_images",
    "read_image",
    "stale_temporaries",
    "write_csv",
    "write_image",
    "write_json",
]


def write_csv(
    path: str | os.PathLike, rows: Iterable[dict], columns: Sequence[str] = ()
) -> list[str]:
    """Write dict rows as CSV to ``path`` atomically; the one CSV writer of the package.

    Columns: ``columns`` first, then every other key in first-seen order. A value is written
    with ``str`` (floats as ``repr``: ``nan``, ``0.1``); a missing key or ``None`` is written
    empty. Lines end in ``\n``. Returns the column names written.
    """
    rows = list(rows)
    names = list(columns)
    for row in rows:
        names += [k for k in row if k not in names]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else str(row.get(k)) for k in names})
    atomic_write_text(path, buf.getvalue())
    return names


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------

#: zlib level of written PNGs: about 4x faster than Pillow's default 6 for ~4 % larger files.
PNG_COMPRESS_LEVEL = 3
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


#: The most pixels ``read_image`` decodes: Pillow's default ``Image.MAX_IMAGE_PIXELS`` (about
#: 9459 x 9459, ten times the largest chest radiograph). A header declaring more is refused
#: before any pixel is decoded (a "decompression bomb" would otherwise allocate gigabytes).
MAX_IMAGE_PIXELS = 89_478_485

#: ITU-R BT.601 luma weights used to turn RGB into grey (the same weights as Pillow's "L").
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


class ImageReadError(ValueError):
    """An image file could not be read as a 2-D grey image.

    The message always starts with the path, then names the problem.
    """


def _rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """Luma of an (H, W, 3 or 4) array: ``0.299 R + 0.587 G + 0.114 B`` (alpha ignored)."""
    rgb = rgb[..., :3].astype(np.float64)
    grey = rgb @ np.asarray(LUMA_WEIGHTS)
    return grey.astype(np.float32)


def _warn_converted(path: Path, what: str) -> None:
    warnings.warn(
        f"{path}: {what} image converted to grey (luma 0.299 R + 0.587 G + 0.114 B)",
        UserWarning,
        stacklevel=3,
    )


def _too_many_pixels(path: Path, n: int, size: str = "") -> ImageReadError:
    declared = f"{size} = {n:,}" if size else f"{n:,}"
    return ImageReadError(
        f"{path}: image declares {declared} pixels, more than the {MAX_IMAGE_PIXELS:,} "
        "read_image decodes (a decompression bomb, or not a radiograph); refused unread"
    )


def _read_pillow(path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that: refuse both
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        n = int(found.group(1)) if found else MAX_IMAGE_PIXELS + 1
        raise _too_many_pixels(path, n) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: corrupt or unreadable image ({exc})") from exc
    try:
        with im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:  # also when Image.MAX_IMAGE_PIXELS was lifted
                raise _too_many_pixels(path, w * h, f"{w} x {h}")
            im.load()
            mode = im.mode
            if mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "P", "PA", "LA", "La", "RGBa"):
                if mode in ("LA", "La"):
                    arr = np.asarray(im.getchannel("L"))
                    _warn_converted(path, f"grey+alpha ({mode})")
                    return arr
                if mode not in ("RGB", "RGBA"):
                    im = im.convert("RGBA" if "A" in mode or mode == "P" else "RGB")
                _warn_converted(path, f"colour ({mode})")
                return _rgb_to_grey(np.asarray(im))
            return np.asarray(im)
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, MemoryError) as exc:
        raise ImageReadError(f"{path}: corrupt or unreadable image ({exc})") from exc


def _read_tiff(path: Path) -> np.ndarray:
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            n = math.prod(series.shape)
            if n > MAX_IMAGE_PIXELS * (4 if "S" in series.axes else 1):
                raise _too_many_pixels(path, n, " x ".join(map(str, series.shape)))
            arr = series.asarray()
            axes = series.axes
            photometric = tif.pages[0].photometric
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile raises many kinds of errors on broken files
        raise ImageReadError(f"{path}: corrupt or unreadable TIFF ({exc})") from exc
    if "S" in axes and arr.ndim == 3 and arr.shape[axes.index("S")] in (3, 4):
        arr = np.moveaxis(arr, axes.index("S"), -1)
        _warn_converted(path, "RGB TIFF")
        return _rgb_to_grey(arr)
    if photometric == tifffile.PHOTOMETRIC.MINISWHITE and arr.ndim == 2:
        arr = arr.astype(np.float64)
        arr = arr.max() + arr.min() - arr  # white is zero: invert, keeping the range
    return arr


def _read_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ImageReadError(f"{path}: corrupt or unreadable .npy file ({exc})") from exc
    if not isinstance(arr, np.ndarray):
        raise ImageReadError(f"{path}: expected one array, found {type(arr).__name__}")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        _warn_converted(path, f"RGB-like {arr.shape}")
        return _rgb_to_grey(arr)
    return arr


def _read_dicom(path: Path) -> np.ndarray:
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
        raise _too_many_pixels(path, rows * cols, f"{rows} x {cols}")
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise ImageReadError(f"{path}: DICOM pixel data cannot be decoded ({exc})") from exc
    if int(ds.get("SamplesPerPixel", 1)) in (3, 4) and arr.ndim == 3:
        _warn_converted(path, f"DICOM {ds.get('PhotometricInterpretation', 'colour')}")
        return _rgb_to_grey(arr)
    out = _dicom_values(ds, arr, path)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1" and out.size:
        out = out.max() + out.min() - out  # MONOCHROME1: low values are white; invert in range
    return out


def _dicom_values(ds, arr: np.ndarray, path: Path) -> np.ndarray:
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


_READERS = {
    ".png": _read_pillow,
    ".jpg": _read_pillow,
    ".jpeg": _read_pillow,
    ".tif": _read_tiff,
    ".tiff": _read_tiff,
    ".npy": _read_npy,
    ".dcm": _read_dicom,
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

    if suffix == ".png":
        if arr.dtype not in (np.uint8, np.uint16):
            raise ValueError(
                f"{path}: PNG stores uint8 or uint16, got {arr.dtype}; cast it "
                "(e.g. np.clip(x, 0, 65535).astype(np.uint16)) or write .tif/.npy for floats"
            )
        image = Image.fromarray(arr)  # uint8 -> mode "L", uint16 -> mode "I;16"
        with atomic_path(path) as tmp:
            # zlib level 3: about 4x faster than Pillow's default 6 for ~4 % larger files
            image.save(tmp, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
    elif suffix in (".jpg", ".jpeg"):
        if arr.dtype != np.uint8:
            raise ValueError(f"{path}: JPEG stores uint8 only, got {arr.dtype}; use .png/.tif")
        image = Image.fromarray(arr)
        with atomic_path(path) as tmp:
            image.save(tmp, format="JPEG", quality=95)
    elif suffix in (".tif", ".tiff"):
        with atomic_path(path) as tmp:
            # metadata=None: no JSON description; tifffile writes no DateTime unless asked.
            tifffile.imwrite(tmp, arr, compression="zlib", metadata=None, photometric="minisblack")
    else:  # .npy
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
