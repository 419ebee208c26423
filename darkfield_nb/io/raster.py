"""Raster image codecs: PNG and JPEG (Pillow), TIFF (tifffile) and NPY (NumPy), read and
written. Readers return the raw array (colour already grey); ``darkfield_nb.io.images`` checks
and casts it. Writers take a checked, native-byte-order 2-D array and write atomically.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from darkfield_nb.atomic import atomic_path
from darkfield_nb.io._codec import (
    MAX_IMAGE_PIXELS,
    ImageReadError,
    rgb_to_grey,
    too_many_pixels,
    warn_converted,
)

#: zlib level of written PNGs: about 4x faster than Pillow's default 6 for ~4 % larger files.
PNG_COMPRESS_LEVEL = 3


def read_pillow(path: Path) -> np.ndarray:
    """PNG or JPEG through Pillow; refuses a declared size over :data:`MAX_IMAGE_PIXELS`."""
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that: refuse both
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        n = int(found.group(1)) if found else MAX_IMAGE_PIXELS + 1
        raise too_many_pixels(path, n) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: corrupt or unreadable image ({exc})") from exc
    try:
        with im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:  # also when Image.MAX_IMAGE_PIXELS was lifted
                raise too_many_pixels(path, w * h, f"{w} x {h}")
            im.load()
            mode = im.mode
            if mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "P", "PA", "LA", "La", "RGBa"):
                if mode in ("LA", "La"):
                    arr = np.asarray(im.getchannel("L"))
                    warn_converted(path, f"grey+alpha ({mode})")
                    return arr
                if mode not in ("RGB", "RGBA"):
                    im = im.convert("RGBA" if "A" in mode or mode == "P" else "RGB")
                warn_converted(path, f"colour ({mode})")
                return rgb_to_grey(np.asarray(im))
            return np.asarray(im)
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, MemoryError) as exc:
        raise ImageReadError(f"{path}: corrupt or unreadable image ({exc})") from exc


def read_tiff(path: Path) -> np.ndarray:
    """The first series of a TIFF (tifffile); RGB to grey, min-is-white inverted."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            n = math.prod(series.shape)
            if n > MAX_IMAGE_PIXELS * (4 if "S" in series.axes else 1):
                raise too_many_pixels(path, n, " x ".join(map(str, series.shape)))
            arr = series.asarray()
            axes = series.axes
            photometric = tif.pages[0].photometric
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile raises many kinds of errors on broken files
        raise ImageReadError(f"{path}: corrupt or unreadable TIFF ({exc})") from exc
    if "S" in axes and arr.ndim == 3 and arr.shape[axes.index("S")] in (3, 4):
        arr = np.moveaxis(arr, axes.index("S"), -1)
        warn_converted(path, "RGB TIFF")
        return rgb_to_grey(arr)
    if photometric == tifffile.PHOTOMETRIC.MINISWHITE and arr.ndim == 2:
        arr = arr.astype(np.float64)
        arr = arr.max() + arr.min() - arr  # white is zero: invert, keeping the range
    return arr


def read_npy(path: Path) -> np.ndarray:
    """One array from a ``.npy`` file (no pickles); an RGB-like last axis to grey."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ImageReadError(f"{path}: corrupt or unreadable .npy file ({exc})") from exc
    if not isinstance(arr, np.ndarray):
        raise ImageReadError(f"{path}: expected one array, found {type(arr).__name__}")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        warn_converted(path, f"RGB-like {arr.shape}")
        return rgb_to_grey(arr)
    return arr


def write_png(path: Path, arr: np.ndarray) -> None:
    """uint8 (mode "L") or uint16 (mode "I;16") as PNG, zlib level :data:`PNG_COMPRESS_LEVEL`."""
    if arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"{path}: PNG stores uint8 or uint16, got {arr.dtype}; cast it "
            "(e.g. np.clip(x, 0, 65535).astype(np.uint16)) or write .tif/.npy for floats"
        )
    image = Image.fromarray(arr)  # uint8 -> mode "L", uint16 -> mode "I;16"
    with atomic_path(path) as tmp:
        # zlib level 3: about 4x faster than Pillow's default 6 for ~4 % larger files
        image.save(tmp, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)


def write_jpeg(path: Path, arr: np.ndarray) -> None:
    """uint8 as JPEG, quality 95 (lossy: for display copies, not data)."""
    if arr.dtype != np.uint8:
        raise ValueError(f"{path}: JPEG stores uint8 only, got {arr.dtype}; use .png/.tif")
    image = Image.fromarray(arr)
    with atomic_path(path) as tmp:
        image.save(tmp, format="JPEG", quality=95)


def write_tiff(path: Path, arr: np.ndarray) -> None:
    """Any numeric dtype as a zlib-compressed, min-is-black TIFF without a timestamp."""
    with atomic_path(path) as tmp:
        # metadata=None: no JSON description; tifffile writes no DateTime unless asked.
        tifffile.imwrite(tmp, arr, compression="zlib", metadata=None, photometric="minisblack")


def write_npy(path: Path, arr: np.ndarray) -> None:
    """Any numeric dtype as ``.npy`` (no pickles)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)
