"""The training geometry a checkpoint records (image size, field of view, pixel size)."""

import json
import os
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------
# Training geometry
# --------------------------------------------------------------------------------------------

#: Field of view assumed when a data set does not say (the simulator's default, 40 cm).
DEFAULT_FIELD_OF_VIEW_MM = 400.0
#: Geometry of checkpoints that record none: every one of them (the shipped model included)
#: was trained on 256 x 256 simulated images of a 40 cm field, so 1.5625 mm pixels.
DEFAULT_GEOMETRY: dict[str, Any] = {
    "size": [256, 256],
    "field_of_view_mm": 400.0,
    "pixel_mm": 1.5625,
}


def make_geometry(
    size: tuple[int, int] | list[int] | int,
    field_of_view_mm: float | None = None,
    pixel_mm: float | None = None,
) -> dict[str, Any]:
    """The geometry entry of a checkpoint: ``{"size": [H, W], "field_of_view_mm": F,
    "pixel_mm": P}`` with ``F = max(H, W) * P``.

    Give the field of view or the pixel size (the other follows); with neither, the whole image
    is taken as a chest field of DEFAULT_FIELD_OF_VIEW_MM along its longer side.
    """
    h, w = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ValueError(f"make_geometry: size {size!r} must be positive")
    if pixel_mm is None:
        fov = float(field_of_view_mm or DEFAULT_FIELD_OF_VIEW_MM)
        pixel_mm = fov / max(h, w)
    if not pixel_mm > 0:
        raise ValueError(f"make_geometry: pixel_mm={pixel_mm!r} must be positive")
    return {
        "size": [h, w],
        "field_of_view_mm": float(pixel_mm) * max(h, w),
        "pixel_mm": float(pixel_mm),
    }


def checkpoint_geometry(ckpt: dict) -> dict[str, Any]:
    """The training geometry recorded in a raw checkpoint dict, else DEFAULT_GEOMETRY."""
    geo = ckpt.get("geometry")
    if not geo:
        return dict(DEFAULT_GEOMETRY, size=list(DEFAULT_GEOMETRY["size"]))
    return make_geometry(
        geo["size"], pixel_mm=geo.get("pixel_mm"), field_of_view_mm=geo.get("field_of_view_mm")
    )


def dataset_geometry(data: Any) -> dict[str, Any] | None:
    """The geometry of a paired data set (a root folder or a dataset with ``.root``).

    ``dataset.json`` gives ``size`` and ``pixel_mm`` (or ``fov_cm``), as written by
    ``darkfield_nb.physics.generate_dataset``. Without them the size of the first attenuation
    image is used and the whole image is taken as a chest field of DEFAULT_FIELD_OF_VIEW_MM.
    None when nothing can be found (the checkpoint then records no geometry).
    """
    root = data if isinstance(data, (str, os.PathLike)) else getattr(data, "root", None)
    if root is None:
        return None
    root = Path(root)
    meta: dict[str, Any] = {}
    try:
        meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = {}
    size = meta.get("size")
    if size is None:
        from darkfield_nb.io import IMAGE_SUFFIXES, read_image

        images = sorted(
            p for p in (root / "attenuation").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not images:
            return None
        try:
            size = list(read_image(images[0]).shape)
        except (ValueError, ImportError):
            return None
    fov = meta.get("fov_cm")
    return make_geometry(
        size if not isinstance(size, (int, float)) else int(size),
        field_of_view_mm=None if fov is None else float(fov) * 10.0,
        pixel_mm=meta.get("pixel_mm"),
    )


# --------------------------------------------------------------------------------------------
# RNG states
