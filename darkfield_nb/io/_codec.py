"""What every image reader shares: its error, the most pixels it decodes, colour to grey."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

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


def rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """Luma of an (H, W, 3 or 4) array: ``0.299 R + 0.587 G + 0.114 B`` (alpha ignored)."""
    rgb = rgb[..., :3].astype(np.float64)
    grey = rgb @ np.asarray(LUMA_WEIGHTS)
    return grey.astype(np.float32)


def warn_converted(path: Path, what: str) -> None:
    """Warn, naming the file, that a colour image became grey (points at the reader's caller)."""
    warnings.warn(
        f"{path}: {what} image converted to grey (luma 0.299 R + 0.587 G + 0.114 B)",
        UserWarning,
        stacklevel=3,
    )


def too_many_pixels(path: Path, n: int, size: str = "") -> ImageReadError:
    """The error for a header declaring ``n`` > :data:`MAX_IMAGE_PIXELS` pixels."""
    declared = f"{size} = {n:,}" if size else f"{n:,}"
    return ImageReadError(
        f"{path}: image declares {declared} pixels, more than the {MAX_IMAGE_PIXELS:,} "
        "read_image decodes (a decompression bomb, or not a radiograph); refused unread"
    )
