"""The folder layout of a paired data set: its names, the dark-field units, the errors of the
contract, and what an input image must be (not constant, not too small).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

ATTENUATION_DIR = "attenuation"
DARKFIELD_DIR = "darkfield"
MASKS_DIR = "masks"
#: The image folders of a data set, in the order checksums and tools list them.
DATA_DIRS: tuple[str, ...] = (ATTENUATION_DIR, DARKFIELD_DIR, MASKS_DIR)
MANIFEST_NAME = "manifest.csv"
SIDECAR_NAME = "dataset.json"
CHECKSUM_NAME = "checksums.sha256"
REQUIRED_COLUMNS: tuple[str, ...] = ("id", "patient", "split")
#: Units a data set may store its dark-field images in (``dataset.json``: ``darkfield_units``):
#: ``"D"`` is ``D = -ln(V / V0)``, ``"visibility"`` is ``v = V / V0``.
DARKFIELD_UNITS: tuple[str, ...] = ("D", "visibility")


#: The smallest image side accepted as input. The default generator (``depth`` 4, total
#: stride 16, instance norm) cannot take an image whose sides are all <= 16 px: its bottleneck is
#: 1 x 1 and normalization needs more than one pixel. A model with stride ``s`` needs ``s + 1``.
MIN_IMAGE_SIDE = 17


class ManifestError(ValueError):
    """``manifest.csv`` or ``dataset.json`` is missing or malformed (message names the file)."""


class ImageContentError(ValueError):
    """An image was read but cannot serve as input (constant, too small); names the file."""


def size_problem(
    path: str | os.PathLike, shape: Sequence[int], min_side: int = MIN_IMAGE_SIDE
) -> str | None:
    """One line naming ``path`` when an image of ``shape`` (H, W) has a side < ``min_side``."""
    h, w = (int(v) for v in tuple(shape)[-2:])
    if min(h, w) >= min_side:
        return None
    return f"{path}: image is {h} x {w} px, too small: each side must be at least {min_side} px"


def constant_problem(path: str | os.PathLike, array) -> str | None:
    """One line naming ``path`` when every pixel of ``array`` has the same value.

    A constant radiograph carries no anatomy: the per-image normalization maps it to zeros and
    the model returns a meaningless map (negative D included), so it is refused by name.
    """
    a = np.asarray(array)
    if a.size == 0:
        return None
    lo, hi = np.nanmin(a), np.nanmax(a)
    if lo != hi:
        return None
    return f"{path}: constant image (every pixel is {float(lo):g}): no contrast to work from"


def radiograph_problems(
    path: str | os.PathLike, array, *, min_side: int = MIN_IMAGE_SIDE
) -> list[str]:
    """Why ``array`` (read from ``path``) cannot be an input radiograph; empty when it can.

    Problems, one line each naming the file: a side shorter than ``min_side`` pixels
    (:func:`size_problem`), every pixel equal (:func:`constant_problem`). Reading problems
    (corrupt, NaN/Inf, wrong dimensionality) are ``darkfield_nb.io.read_image``'s.
    """
    a = np.asarray(array)
    found = [size_problem(path, a.shape, min_side), constant_problem(path, a)]
    return [p for p in found if p]


def check_radiograph(
    path: str | os.PathLike, array, *, min_side: int = MIN_IMAGE_SIDE
) -> np.ndarray:
    """Return ``array`` when it can be an input radiograph; else raise naming the file.

    The check ``predict`` runs per file after ``read_image`` (see :func:`radiograph_problems`).

    Raises:
        ImageContentError: (a ``ValueError``) one line: the problems joined by ``"; "``.
    """
    problems = radiograph_problems(path, array, min_side=min_side)
    if problems:
        prefix = f"{path}: "
        raise ImageContentError(prefix + "; ".join(m.removeprefix(prefix) for m in problems))
    return array
