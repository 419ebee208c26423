"""What predict writes: output sets (all files or none), previews, the summary table.

One input ``<stem>`` gives the set::

    <out>/darkfield/<stem>.tif   <out>/aleatoric/<stem>.tif
    <out>/epistemic/<stem>.tif   <out>/total/<stem>.tif     [<out>/preview/<stem>.png]

``format="tiff"``: float32 D (the physical values). ``format="png16"``: 16-bit PNG that an
ordinary viewer opens, ``D = offset + scale * value`` with the offset and scale of each map
in ``<out>/png16_scale.json`` (PNG16_SCALE: resolution 2^-15 D; values outside the range are
clipped). :func:`write_set` writes every file of a set to a temporary name, then renames them
all; when anything fails it removes every file of the set, so a dark-field map never stands
without its uncertainty partners.
"""

from __future__ import annotations

import io as _io
import json
import os
from pathlib import Path

import numpy as np

from darkfield_nb.atomic import temporary_beside
from darkfield_nb.inference.records import read_record
from darkfield_nb.io import atomic_write_text, write_csv, write_image

MAPS = ("darkfield", "aleatoric", "epistemic", "total")
FORMATS = ("tiff", "png16")
SUFFIX = {"tiff": ".tif", "png16": ".png"}
#: D = offset + scale * value for 16-bit PNG outputs (range offset .. offset + 2 D).
PNG16_SCALE: dict[str, dict[str, float]] = {
    "darkfield": {"offset": -0.5, "scale": 2.0**-15},
    "aleatoric": {"offset": 0.0, "scale": 2.0**-15},
    "epistemic": {"offset": 0.0, "scale": 2.0**-15},
    "total": {"offset": 0.0, "scale": 2.0**-15},
}
SCALE_SIDECAR = "png16_scale.json"
PREVIEW_DIR = "preview"


def set_files(stem: str, fmt: str, preview: bool) -> list[str]:
    """Paths of a set relative to the output folder."""
    files = [f"{name}/{stem}{SUFFIX[fmt]}" for name in MAPS]
    if preview:
        files.append(f"{PREVIEW_DIR}/{stem}.png")
    return files


def encode_png16(values: np.ndarray, name: str) -> np.ndarray:
    """uint16 ``round((values - offset) / scale)`` clipped to 0..65535 (PNG16_SCALE[name])."""
    s = PNG16_SCALE[name]
    q = np.rint((np.asarray(values, np.float64) - s["offset"]) / s["scale"])
    return np.clip(q, 0, 65535).astype(np.uint16)


def decode_png16(values: np.ndarray, name: str) -> np.ndarray:
    """D values of a 16-bit PNG output: ``offset + scale * value``."""
    s = PNG16_SCALE[name]
    return (s["offset"] + s["scale"] * np.asarray(values, np.float64)).astype(np.float32)


def write_scale_sidecar(out_dir: Path) -> Path:
    """``<out>/png16_scale.json``: how to turn the 16-bit PNG values back into D."""
    path = Path(out_dir) / SCALE_SIDECAR
    doc = {
        "formula": "D = offset + scale * value",
        "units": "D = -ln(V/V0)",
        "maps": PNG16_SCALE,
    }
    atomic_write_text(path, json.dumps(doc, indent=1))
    return path


def write_set(
    out_dir: Path, stem: str, maps: dict[str, np.ndarray], fmt: str, preview: bytes | None = None
) -> list[str]:
    """Write the maps (and the preview PNG bytes) of ``stem``: every file to a temporary name
    first, then all renamed into place. On any failure every file of the set (old or new) and
    every temporary is removed and the error re-raised. Returns the relative file names."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {FORMATS}")
    out_dir = Path(out_dir)
    names = set_files(stem, fmt, preview is not None)
    targets = [out_dir / n for n in names]
    temps: list[Path] = []
    try:
        for name, target in zip(MAPS, targets, strict=False):
            tmp = temporary_beside(target)
            temps.append(tmp)
            arr = maps[name].astype(np.float32)
            if fmt == "png16":
                arr = encode_png16(arr, name)
            # write_image is atomic itself; writing to our temporary name keeps the set's
            # files invisible under their final names until all are written
            write_image(tmp, arr)
        if preview is not None:
            tmp = temporary_beside(targets[-1])
            temps.append(tmp)
            tmp.write_bytes(preview)
        for tmp, target in zip(temps, targets, strict=True):
            os.replace(tmp, target)
    except BaseException:
        for p in (*temps, *targets):
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass
        raise
    return names


# --------------------------------------------------------------------------------------------
# Summary statistics
# --------------------------------------------------------------------------------------------


def lung_region(shape: tuple[int, int]) -> np.ndarray:
    """A fixed central-lung mask for a PA chest framing (no segmentation): two ellipses
    centred at 45 % of the height and 30 % / 70 % of the width, semi-axes 20 % of the
    height and 11 % of the width. A proxy for "the lungs" that is the same region at any
    image size, so lung D can be compared across sizes."""
    h, w = shape
    y = (np.arange(h) + 0.5)[:, None] / h
    x = (np.arange(w) + 0.5)[None, :] / w
    mask = np.zeros((h, w), bool)
    for cx in (0.30, 0.70):
        mask |= ((y - 0.45) / 0.20) ** 2 + ((x - cx) / 0.11) ** 2 <= 1.0
    return mask


#: What the ``epistemic`` column of the summary says for each mode ("mc+density": the MC
#: spread and the OOD detector's sigma, its feature density and, where the detector has one, its
#: foreign-body map).
EPISTEMIC_COLUMN = {"mc": "mc", "combined": "mc+density"}


def map_stats(maps: dict[str, np.ndarray]) -> dict[str, float]:
    """Summary columns: lung D (mean D over :func:`lung_region`), mean D, mean sigmas."""
    d = maps["darkfield"]
    lung = lung_region(d.shape)
    return {
        "lung_D": round(float(d[lung].mean()), 6),
        "mean_D": round(float(d.mean()), 6),
        "mean_aleatoric": round(float(maps["aleatoric"].mean()), 6),
        "mean_epistemic": round(float(maps["epistemic"].mean()), 7),
        "mean_total": round(float(maps["total"].mean()), 6),
    }


SUMMARY_COLUMNS = (
    "id",
    "input",
    "status",
    "height",
    "width",
    "pixel_mm",
    "pixel_source",
    "scale",
    "model_height",
    "model_width",
    "lung_D",
    "mean_D",
    "mean_aleatoric",
    "mean_epistemic",
    "mean_total",
    "ood_score",
    "ood_flag",
    "lung_level",
    "lung_level_sd",
    "level_factor",
    "seconds",
    "warnings",
    "epistemic",
)


# --------------------------------------------------------------------------------------------
# Preview panel
# --------------------------------------------------------------------------------------------


def preview_png(image: np.ndarray, maps: dict[str, np.ndarray], title: str = "") -> bytes:
    """An 8-bit RGB PNG panel: input (grey), dark-field (magma, 0..D_MAX), aleatoric and
    epistemic sigma (viridis, 0..99th percentile), each with a colour bar (the colour
    convention of ``darkfield_nb.panels``). Uses matplotlib's object API (thread-safe per
    figure)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from darkfield_nb.panels import D_CMAP, D_MAX, SIGMA_CMAP

    fig = Figure(figsize=(13, 3.6), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    lo, hi = np.percentile(image, [1, 99])
    panels = (
        (image, "input", "gray", lo, hi),
        (maps["darkfield"], "dark-field D", D_CMAP, 0.0, D_MAX),
        (maps["aleatoric"], "aleatoric sigma (D)", SIGMA_CMAP, 0.0, None),
        (maps["epistemic"], "epistemic sigma (D)", SIGMA_CMAP, 0.0, None),
    )
    for ax, (arr, label, cmap, vmin, vmax) in zip(axes, panels, strict=True):
        if vmax is None:
            vmax = float(np.percentile(arr, 99)) or 1e-6
        im = ax.imshow(arr, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(label, fontsize=9)
        ax.set_axis_off()
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    if title:
        fig.suptitle(title, fontsize=9)
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    # flatten to 8-bit RGB (no alpha), so every viewer shows it the same way
    from PIL import Image

    buf.seek(0)
    with Image.open(buf) as im:
        rgb = im.convert("RGB")
        out = _io.BytesIO()
        rgb.save(out, format="PNG", optimize=False, compress_level=3)
    return out.getvalue()


# --------------------------------------------------------------------------------------------
# summary.csv
# --------------------------------------------------------------------------------------------


def summary_rows(out_dir: Path, paths: list[Path], failed: dict[str, str]) -> list[dict]:
    """Rows of ``summary.csv`` for ``paths``: the row each completion record holds, a
    "failed: ..." row for a refused input, "missing" when neither exists."""
    rows = []
    for p in paths:
        if str(p) in failed:
            rows.append({"id": p.stem, "input": str(p), "status": f"failed: {failed[str(p)]}"})
            continue
        rec = read_record(out_dir, p.stem)
        if rec and rec.get("row"):
            rows.append(rec["row"])
        else:
            rows.append({"id": p.stem, "input": str(p), "status": "missing"})
    return rows


def merge_summary_parts(out_dir: Path, world: int) -> Path:
    """Rank 0: merge ``summary.part-*.csv`` into ``summary.csv`` (rows sorted by id)."""
    import csv

    rows: list[dict] = []
    parts = [out_dir / f"summary.part-{r:05d}-of-{world:05d}.csv" for r in range(world)]
    for part in parts:
        with open(part, newline="", encoding="utf-8") as fh:
            rows.extend(csv.DictReader(fh))
    rows.sort(key=lambda r: r["id"])
    path = out_dir / "summary.csv"
    write_csv(path, rows, SUMMARY_COLUMNS)
    for part in parts:
        part.unlink(missing_ok=True)
    return path
