"""Which files are radiographs, and whether a decoded image is one.

* :func:`resolve_inputs`: a folder, a paired-data root (its ``attenuation/`` is used, and the
  notes say so) or a list of files -> the sorted radiograph paths. Hidden files and temporary
  files of our own naming (an interrupted write) are never inputs.
* :func:`load_radiograph`: read one file (``io.read_image``) and refuse, naming the file and
  the reason, what is not a greyscale radiograph: a colour image (an RGB file whose channels
  differ), an image smaller than ``MIN_SIDE`` pixels on a side, a constant image. An RGB file
  whose channels are equal (a grey image saved as RGB) is accepted silently.

When the shared input checks of ``darkfield_nb.io`` (``check_radiograph``) land, the size and
constant checks here should call them instead.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np

from darkfield_nb.io import IMAGE_SUFFIXES, read_image

#: Smallest accepted side in pixels: 16 px or less is an icon, not a radiograph (and too small
#: for the U-Net's pooling).
MIN_SIDE = 17
#: A pixel is coloured when two channels differ by more than this fraction of the value range;
#: an image is a colour image when more than COLOUR_FRACTION of its pixels are coloured.
COLOUR_TOLERANCE = 0.02
COLOUR_FRACTION = 0.01

#: Temporary names of our atomic writers: ``.<stem>.<random>.tmp<suffix>``.
TEMPORARY = re.compile(r"^\..+\.tmp(\.[A-Za-z0-9]+)?$")


class NotARadiograph(ValueError):
    """A file that is not a greyscale radiograph; the message starts with the path."""


def is_temporary(path: str | os.PathLike) -> bool:
    """True for a temporary file of our own naming (``.<stem>.<random>.tmp<suffix>``)."""
    return bool(TEMPORARY.match(Path(path).name))


def is_paired_root(folder: Path) -> bool:
    """A paired data set root: an ``attenuation/`` folder beside ``darkfield/`` or a manifest."""
    return (folder / "attenuation").is_dir() and (
        (folder / "darkfield").is_dir() or (folder / "manifest.csv").is_file()
    )


def list_radiographs(folder: str | os.PathLike) -> list[Path]:
    """Files in ``folder`` (not recursive) whose suffix ``io.read_image`` knows, sorted; hidden
    and temporary files are left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not p.name.startswith(".")
        and not is_temporary(p)
    )


#: Image formats a folder of radiographs may hold that ``read_image`` does not decode: named in
#: a note instead of being passed over in silence.
UNSUPPORTED_IMAGE_SUFFIXES = (".bmp", ".gif", ".webp", ".jp2", ".j2k", ".pgm", ".ppm", ".heic")


def resolve_inputs(inputs) -> tuple[list[Path], list[str]]:
    """(sorted radiograph paths, notes) for a folder, a paired-data root or a list of files.

    Raises FileNotFoundError when a folder is missing or holds no radiograph, ValueError when
    two inputs share a stem (their outputs would clash).
    """
    notes: list[str] = []
    if isinstance(inputs, (list, tuple)):
        paths = [Path(p) for p in inputs]
        if len(paths) == 1 and paths[0].is_dir():
            return resolve_inputs(paths[0])
        paths = sorted(p for p in paths if not is_temporary(p))
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{', '.join(missing)}: file not found")
        where = "the given files"
    else:
        folder = Path(inputs)
        if folder.is_dir() and is_paired_root(folder):
            notes.append(f"{folder} is a paired data set: synthesizing its attenuation/ images")
            folder = folder / "attenuation"
        paths = list_radiographs(folder)
        where = str(folder)
        if folder.is_dir():
            odd = sorted(
                p.name
                for p in folder.iterdir()
                if p.is_file() and p.suffix.lower() in UNSUPPORTED_IMAGE_SUFFIXES
            )
            if odd:
                notes.append(
                    f"{folder}: skipped {len(odd)} image(s) of a format read_image does not "
                    f"read ({', '.join(odd[:5])}{', ...' if len(odd) > 5 else ''}); convert them "
                    f"to one of {', '.join(IMAGE_SUFFIXES)}"
                )
    if not paths:
        raise FileNotFoundError(f"{where}: no radiographs with a known suffix {IMAGE_SUFFIXES}")
    stems = [p.stem for p in paths]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:
        raise ValueError(f"{where}: several files share the name(s) {clash}; outputs would clash")
    return paths, notes


def _colour_fraction(path: Path) -> float:
    """Fraction of coloured pixels of a colour-coded file (PNG/JPEG/TIFF), 0 if not colour."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "RGBX", "RGBa"):
                return 0.0
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
    except Exception:
        return 0.0
    span = float(rgb.max() - rgb.min()) or 1.0
    diff = np.max(np.abs(rgb - rgb[..., :1]), axis=-1) / span
    return float((diff > COLOUR_TOLERANCE).mean())


def load_radiograph(path: str | os.PathLike, min_side: int = MIN_SIDE) -> np.ndarray:
    """Read ``path`` as a 2-D float32 radiograph or raise :class:`NotARadiograph` /
    ``io.ImageReadError`` (both ValueErrors starting with the path) with the reason."""
    path = Path(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = read_image(path)
    converted = any("converted to grey" in str(w.message) for w in caught)
    for w in caught:
        if "converted to grey" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if converted and path.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
        frac = _colour_fraction(path)
        if frac > COLOUR_FRACTION:
            raise NotARadiograph(
                f"{path}: a colour image ({100 * frac:.0f} % of pixels coloured), not a "
                "greyscale radiograph: skipped"
            )
    h, w = image.shape
    if min(h, w) < min_side:
        raise NotARadiograph(
            f"{path}: image of {h} x {w} px is too small (under {min_side} px on a side) to be "
            "a chest radiograph: skipped"
        )
    if float(image.max()) == float(image.min()):
        raise NotARadiograph(
            f"{path}: constant image (every pixel {float(image.min()):g}), not a radiograph: "
            "skipped"
        )
    return image
