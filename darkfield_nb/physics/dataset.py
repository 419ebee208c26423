"""Write a simulated paired data set in the folder contract, reproducibly.

```
<out>/attenuation/<id>.png   processed radiograph, 12-bit values in a 16-bit PNG
<out>/darkfield/<id>.tif     measured D = -ln(V/V0), float32 TIFF
<out>/masks/<id>.png         uint16 sums of darkfield_nb.labels bits
<out>/dataset.json           provenance: version, seed, every parameter, darkfield_units "D"
<out>/manifest.csv           id, patient, split, case, ood, severity, and the framing and
                             display of each image (written last)
```

The manifest's extra columns: ``severity`` (0 healthy, else the pathology's severity in
[0, 1]), ``fov_cm`` and ``pixel_mm`` (the field of view varies per image), ``chest_fraction``
(torso width / image width), ``rotation_deg``, ``arms_up``, ``collimated`` (1 if a shutter
cuts an edge), ``look`` (the vendor display) and ``bits`` (8 or 12; 8-bit images are written
as 8-bit PNGs).

One image per patient. Patient ``i`` is drawn from ``SeedSequence(seed, spawn_key=(i,))``, so
the files do not depend on generation order or on the number of worker processes: the same
arguments give the same bytes.
"""

from __future__ import annotations

import errno
import os
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from darkfield_nb import __version__, labels
from darkfield_nb.contract import (
    CHECKSUM_NAME,
    DATA_DIRS,
    MANIFEST_NAME,
    SIDECAR_NAME,
    cut_splits,
    write_manifest,
    write_sidecar,
)
from darkfield_nb.contract import checksums as checksums  # re-exported: it lived here
from darkfield_nb.contract import read_checksums as read_checksums
from darkfield_nb.contract import verify_checksums as verify_checksums
from darkfield_nb.contract import write_checksums as write_checksums
from darkfield_nb.io import WriteError, check_writable_dir, clean_stale_temporaries, write_image
from darkfield_nb.physics.acquisition import AcquisitionConfig
from darkfield_nb.physics.display import DisplayRanges
from darkfield_nb.physics.framing import FramingRanges
from darkfield_nb.physics.pathology import PATHOLOGY_CASES
from darkfield_nb.physics.simulate import CASES, make_patient, simulate

DEFAULT_OOD_CASES = ("pacemaker", "cables", "clips", "high_contrast")


def plan_cases(
    n_patients: int,
    seed: int,
    *,
    ood_patients: int = 0,
    pathology_fraction: float = 0.5,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    ood_cases: tuple[str, ...] = DEFAULT_OOD_CASES,
) -> list[dict]:
    """The manifest rows (without files): one per patient, with split and case.

    In-distribution patients ``0 .. n-1``: a fraction ``pathology_fraction`` (rounded) carry
    a pathology, the kinds cycling through emphysema, pneumonia, pneumothorax, effusion,
    nodule; healthy and pathology patients are each shuffled and cut train/val/test by
    ``split_fractions`` with ``darkfield_nb.contract.cut_splits`` (so every split gets both).
    Out-of-distribution patients
    ``n .. n+ood-1`` go to split ``ood`` with cases cycling through ``ood_cases``.
    """
    if n_patients < 0 or ood_patients < 0:
        raise ValueError(
            f"n_patients ({n_patients}) and ood_patients ({ood_patients}) must be >= 0"
        )
    if n_patients + ood_patients == 0:
        raise ValueError("nothing to generate: n_patients + ood_patients is 0")
    if len(split_fractions) != 3 or min(split_fractions) < 0 or sum(split_fractions) <= 0:
        raise ValueError(
            f"split_fractions must be three non-negative numbers, got {split_fractions}"
        )
    if not 0.0 <= pathology_fraction <= 1.0:
        raise ValueError(f"pathology_fraction must be in [0, 1], got {pathology_fraction}")
    bad = [c for c in ood_cases if c not in CASES]
    if bad or not ood_cases:
        raise ValueError(
            f"ood_cases: unknown or empty {bad or ood_cases}; known: {', '.join(CASES)}"
        )
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(2**32 - 1,)))
    n_path = int(round(pathology_fraction * n_patients))
    order = rng.permutation(n_patients)
    cases = ["healthy"] * n_patients
    for k, idx in enumerate(order[:n_path]):
        cases[idx] = PATHOLOGY_CASES[k % len(PATHOLOGY_CASES)]
    fr = [float(f) / sum(split_fractions) for f in split_fractions]
    splits: dict = {}
    for group in (order[:n_path], order[n_path:]):
        splits.update(cut_splits([int(i) for i in rng.permutation(group)], fr))
    rows = [
        {"id": f"p{i:04d}", "patient": f"p{i:04d}", "split": splits[i], "case": cases[i], "ood": 0}
        for i in range(n_patients)
    ]
    for k in range(ood_patients):
        i = n_patients + k
        rows.append(
            {
                "id": f"p{i:04d}",
                "patient": f"p{i:04d}",
                "split": "ood",
                "case": ood_cases[k % len(ood_cases)],
                "ood": 1,
            }
        )
    return rows


def _render_and_write(task: tuple) -> dict:
    root, row, index, seed, size, fov_cm, acq, framing, display = task
    patient = make_patient(seed, index, row["case"], framing=framing, display=display)
    pair = simulate(patient, size, fov_cm, acq)
    image = pair.attenuation.astype(np.uint8) if pair.bits <= 8 else pair.attenuation
    write_image(Path(root) / "attenuation" / f"{row['id']}.png", image)
    write_image(Path(root) / "darkfield" / f"{row['id']}.tif", pair.darkfield)
    write_image(Path(root) / "masks" / f"{row['id']}.png", pair.mask)
    fr = pair.framing
    return {
        "severity": round(float(patient.severity), 4),
        "fov_cm": round(fr.fov_cm, 3),
        "pixel_mm": round(fr.fov_cm * 10.0 / size, 4),
        "chest_fraction": round(fr.chest_fraction, 4),
        "rotation_deg": round(fr.rotation_deg, 3),
        "arms_up": int(patient.anatomy.arms_up),
        "collimated": int(any(d > 0 for d in fr.collimation)),
        "look": patient.display.look if patient.display else "exposure",
        "bits": int(pair.bits),
    }


def _prepare_output(out: Path, overwrite: bool) -> None:
    """Make ``out`` ready for a new data set, or refuse before any rendering.

    Refuses a path that is a file and a non-empty folder (unless ``overwrite``); temporary
    files of ours that a killed run left do not count as content and are removed. Then every
    folder the data set is written into is checked for writing (``io.check_writable_dir``), so
    a read-only folder fails now, one line naming it, not after the first images.
    """
    if out.exists() and not out.is_dir():
        raise WriteError(errno.ENOTDIR, f"{out}: cannot write: is a file, expected a folder")
    if out.is_dir():
        removed = clean_stale_temporaries(out)
        if removed:
            warnings.warn(
                f"{out}: removed {len(removed)} temporary file(s) left by an interrupted write",
                UserWarning,
                stacklevel=3,
            )
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            n = sum(1 for _ in out.iterdir())
            raise FileExistsError(
                f"{out}: output folder is not empty ({n} entries); choose an empty folder or "
                "pass overwrite=True (CLI: --overwrite) to replace the data set in it"
            )
        for sub in (out, *(out / d for d in DATA_DIRS if (out / d).is_dir())):
            check_writable_dir(sub, create=False)
        # Remove the old data set's files only (never anything else the user keeps there);
        # the manifest goes first so a half-replaced folder is never mistaken for a data set.
        for name in (MANIFEST_NAME, SIDECAR_NAME, CHECKSUM_NAME):
            (out / name).unlink(missing_ok=True)
        for sub, suffix in (("attenuation", ".png"), ("darkfield", ".tif"), ("masks", ".png")):
            if (out / sub).is_dir():
                for f in (out / sub).iterdir():
                    if f.is_file() and f.suffix == suffix:
                        f.unlink()
    check_writable_dir(out)
    for sub in DATA_DIRS:
        check_writable_dir(out / sub)


def default_workers() -> int:
    """Worker processes: the CPUs this process may use (at most 8)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def generate_dataset(
    out: str | os.PathLike,
    n_patients: int = 269,
    size: int = 512,
    seed: int = 0,
    *,
    ood_patients: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    pathology_fraction: float = 0.5,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    ood_cases: tuple[str, ...] = DEFAULT_OOD_CASES,
    fov_cm: float | None = None,
    acquisition: AcquisitionConfig | None = None,
    workers: int | None = None,
    framing: FramingRanges | None = None,
    display: DisplayRanges | None = None,
) -> Path:
    """Simulate ``n_patients`` in-distribution and ``ood_patients`` out-of-distribution pairs.

    Writes the folder contract (module docstring) into ``out``, which must be empty or absent
    unless ``overwrite=True``. Image size ``size`` x ``size``; every patient's framing and
    display are drawn from ``framing`` and ``display`` (default :class:`FramingRanges`,
    :class:`DisplayRanges`: varied field of view, position, rotation, shutters and vendor
    looks; ``FramingRanges.fixed()`` / ``DisplayRanges.fixed()`` give the first simulator's
    single 40 cm framing and look). ``fov_cm`` overrides the field width of every image.
    A fraction ``pathology_fraction`` of the in-distribution patients carry a pathology of a
    random severity (manifest column ``severity``); devices are out-of-distribution only.
    ``workers`` processes render in parallel (default: the usable CPUs); the output is the
    same for any number of workers. Returns the output folder.
    """
    from tqdm.auto import tqdm

    if not 16 <= int(size) <= 4096:
        raise ValueError(f"size must be between 16 and 4096 pixels, got {size}")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    out = Path(out)
    acq = acquisition or AcquisitionConfig()
    rows = plan_cases(
        n_patients,
        seed,
        ood_patients=ood_patients,
        pathology_fraction=pathology_fraction,
        split_fractions=split_fractions,
        ood_cases=tuple(ood_cases),
    )
    _prepare_output(out, overwrite)
    fov = None if fov_cm is None else float(fov_cm)
    frame_ranges = framing or FramingRanges()
    display_ranges = display or DisplayRanges()
    tasks = [
        (str(out), row, i, int(seed), int(size), fov, acq, frame_ranges, display_ranges)
        for i, row in enumerate(rows)
    ]
    workers = default_workers() if workers is None else max(1, int(workers))
    bar = tqdm(total=len(tasks), desc="make-data", unit="pair", disable=not progress)
    extra = []
    if workers == 1 or len(tasks) == 1:
        for t in tasks:
            extra.append(_render_and_write(t))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for cols in pool.map(
                _render_and_write, tasks, chunksize=max(1, len(tasks) // (8 * workers))
            ):
                extra.append(cols)
                bar.update()
    bar.close()
    rows = [{**row, **cols} for row, cols in zip(rows, extra, strict=True)]
    meta = {
        "darkfield_units": "D",
        "generator": "darkfield_nb.physics.generate_dataset",
        "darkfield_nb_version": __version__,
        "seed": int(seed),
        "n_patients": int(n_patients),
        "ood_patients": int(ood_patients),
        "size": int(size),
        "fov_cm": fov,  # None: per image (manifest columns fov_cm, pixel_mm)
        "framing": asdict(frame_ranges),
        "display": asdict(display_ranges),
        "pathology_fraction": float(pathology_fraction),
        "split_fractions": [float(f) for f in split_fractions],
        "ood_cases": list(ood_cases),
        "acquisition": asdict(acq),
        "attenuation": "processed radiograph (to_radiograph): 12-bit values in 16-bit PNG, or "
        "8-bit PNG (manifest column bits)",
        "darkfield": "measured D = -ln(V/V0), float32 TIFF",
        "mask_bits": dict(labels.MASK_BITS),
        "cases": dict(sorted(Counter(r["case"] for r in rows).items())),
        "splits": dict(sorted(Counter(r["split"] for r in rows).items())),
    }
    write_sidecar(out, meta)
    write_manifest(out / MANIFEST_NAME, rows)
    return out


def sample_recipe() -> dict:
    """The exact arguments of :func:`generate_dataset` that made ``data_samples/``."""
    return {
        "n_patients": 24,
        "size": 256,
        "seed": 2601,
        "ood_patients": 10,
        "ood_cases": ("pacemaker", "cables", "clips", "high_contrast", "inverted_display"),
        "pathology_fraction": 0.5,
    }
