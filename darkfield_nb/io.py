"""Reading and writing images and small files, atomically.

Every writer here writes to a temporary file in the destination folder and renames it into
place (``os.replace`` is atomic on POSIX and Windows), so an interrupted run never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    Use it for writers that want a file name (``np.save``, ``torch.save``, ``tifffile``)::

        with atomic_path("out/x.npy") as tmp:
            np.save(tmp, array)

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (the ``sha256sum`` digest)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------

#: Suffixes ``read_image`` understands (compared case-insensitively).
PNG_COMPRESS_LEVEL = 3
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".npy", ".jpg", ".jpeg", ".dcm")
#: Suffixes ``write_image`` can write.
WRITABLE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".npy", ".jpg", ".jpeg")

#: ITU-R BT.601 luma weights used to turn RGB into grey (the same weights as Pillow's "L").
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


class ImageReadError(ValueError):
    """An image file could not be read as a 2-D grey image.

    The message always starts with the path, then names the problem.
    """


class ManifestError(ValueError):
    """``manifest.csv`` or ``dataset.json`` is missing or malformed (message names the file)."""


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


def _read_pillow(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
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
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: corrupt or unreadable image ({exc})") from exc


def _read_tiff(path: Path) -> np.ndarray:
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            arr = series.asarray()
            axes = series.axes
            photometric = tif.pages[0].photometric
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
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise ImageReadError(f"{path}: DICOM pixel data cannot be decoded ({exc})") from exc
    if int(ds.get("SamplesPerPixel", 1)) in (3, 4) and arr.ndim == 3:
        _warn_converted(path, f"DICOM {ds.get('PhotometricInterpretation', 'colour')}")
        return _rgb_to_grey(arr)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    out = arr.astype(np.float64) * slope + intercept
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1" and out.size:
        out = out.max() + out.min() - out  # MONOCHROME1: low values are white; invert in range
    return out


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
    Values are not rescaled, except that DICOM gets ``value * RescaleSlope + RescaleIntercept``
    and a DICOM MONOCHROME1 (or TIFF min-is-white) image is inverted as ``max + min - value``
    so that bright means dense and the value range is kept.

    Colour input (RGB, RGBA, palette, grey+alpha; an ``.npy``/``.tif`` array whose last axis
    has 3 or 4 channels) is converted to grey with the BT.601 luma
    ``0.299 R + 0.587 G + 0.114 B`` and a ``UserWarning`` naming the file. Axes of length 1
    are dropped (an (1, H, W) array is an image); any other shape than 2-D is an error.

    Raises:
        ImageReadError: (a ``ValueError``) naming the file and the problem: missing file,
            directory, unknown extension, empty file, corrupt file, wrong dimensionality, or
            NaN/Inf values (unless ``allow_nonfinite``).
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
    out = np.ascontiguousarray(arr, dtype=np.float32)
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


# --------------------------------------------------------------------------------------------
# Manifest and sidecar
# --------------------------------------------------------------------------------------------

MANIFEST_NAME = "manifest.csv"
SIDECAR_NAME = "dataset.json"
REQUIRED_COLUMNS: tuple[str, ...] = ("id", "patient", "split")
DARKFIELD_UNITS: tuple[str, ...] = ("D", "visibility")


def _manifest_path(root: str | os.PathLike) -> Path:
    root = Path(root)
    return root / MANIFEST_NAME if root.is_dir() else root


def check_manifest(root: str | os.PathLike) -> tuple[list[dict[str, str]], list[str]]:
    """Parse ``manifest.csv`` and collect every problem instead of stopping at the first.

    ``root`` is the data-set folder or the csv file itself. Returns ``(rows, problems)``;
    ``rows`` holds the rows that could be parsed (values are stripped strings, extra columns
    kept). Problems: missing file, missing required column (id, patient, split), empty id
    or patient, unknown split name, duplicate id, one patient in two splits.
    """
    from darkfield_nb.labels import SPLITS

    path = _manifest_path(root)
    if not path.exists():
        return [], [f"{path}: manifest not found (need a csv with columns id,patient,split)"]
    if path.is_dir():
        return [], [f"{path}: is a directory, expected the manifest csv file"]
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [f"{path}: unreadable manifest ({exc})"]
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        return [], [
            f"{path}: missing required column(s) {', '.join(missing)}; "
            f"found columns: {', '.join(columns) if columns else '(none)'}"
        ]
    reader.fieldnames = columns
    rows: list[dict[str, str]] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    patient_splits: dict[str, dict[str, int]] = {}
    for row in reader:
        line = reader.line_num
        if None in row:
            problems.append(f"{path}: line {line}: more values than columns")
            row.pop(None)
        clean = {k: (v or "").strip() for k, v in row.items()}
        if not any(clean.values()):
            continue  # blank line
        ok = True
        for col in ("id", "patient"):
            if not clean[col]:
                problems.append(f"{path}: line {line}: empty {col}")
                ok = False
        if clean["split"] not in SPLITS:
            problems.append(
                f"{path}: line {line}: unknown split {clean['split']!r} for id {clean['id']!r}; "
                f"allowed: {', '.join(SPLITS)}"
            )
            ok = False
        if clean["id"] in first_line:
            problems.append(
                f"{path}: line {line}: duplicate id {clean['id']!r} "
                f"(first on line {first_line[clean['id']]})"
            )
            ok = False
        elif clean["id"]:
            first_line[clean["id"]] = line
        if ok:
            patient_splits.setdefault(clean["patient"], {}).setdefault(clean["split"], line)
            rows.append(clean)
    for patient, splits in patient_splits.items():
        if len(splits) > 1:
            where = ", ".join(f"{s} (line {n})" for s, n in splits.items())
            problems.append(
                f"{path}: patient {patient!r} appears in more than one split: {where}; "
                "splits must be by patient"
            )
    return rows, problems


def read_manifest(root: str | os.PathLike) -> list[dict[str, str]]:
    """Read ``<root>/manifest.csv`` (or a csv path) into a list of row dicts.

    Required columns ``id, patient, split``; ``split`` must be one of
    ``darkfield_nb.labels.SPLITS``. Extra columns (``case``, ``ood``, ...) are kept as strings.

    Raises:
        ManifestError: listing every problem found (see ``check_manifest``).
    """
    rows, problems = check_manifest(root)
    if problems:
        raise ManifestError("\n".join(problems))
    return rows


def write_manifest(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write rows to a manifest csv atomically (``path`` is the file or the data-set folder).

    Columns: ``id, patient, split`` first, then any others in first-seen order. Values are
    written with ``str``; a missing value is written empty.

    Raises:
        ValueError: if a row lacks ``id``, ``patient`` or ``split``.
    """
    path = Path(path)
    if path.is_dir() or path.suffix == "":
        path = path / MANIFEST_NAME
    columns = list(REQUIRED_COLUMNS)
    for i, row in enumerate(rows):
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"{path}: row {i} lacks required key(s) {', '.join(missing)}")
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else str(row.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())


def read_sidecar(root: str | os.PathLike) -> dict:
    """Read ``<root>/dataset.json``; a missing file means ``{"darkfield_units": "D"}``.

    Other keys (provenance, generator settings) are returned as stored.

    Raises:
        ManifestError: naming the file if it is not a JSON object or ``darkfield_units`` is
            not one of ``"D"``, ``"visibility"``.
    """
    path = Path(root) / SIDECAR_NAME
    meta: dict = {"darkfield_units": "D"}
    if not path.exists():
        return meta
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(loaded, dict):
        raise ManifestError(f"{path}: expected a JSON object, got {type(loaded).__name__}")
    meta.update(loaded)
    if meta["darkfield_units"] not in DARKFIELD_UNITS:
        raise ManifestError(
            f"{path}: darkfield_units {meta['darkfield_units']!r} unknown; "
            f"allowed: {', '.join(DARKFIELD_UNITS)}"
        )
    return meta


def write_sidecar(root: str | os.PathLike, meta: dict) -> None:
    """Write ``meta`` to ``<root>/dataset.json`` atomically (sorted keys, 2-space indent)."""
    atomic_write_text(Path(root) / SIDECAR_NAME, json.dumps(meta, indent=2, sort_keys=True) + "\n")
