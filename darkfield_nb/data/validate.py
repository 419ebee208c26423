"""Check a paired data folder against the contract and report every problem at once.

The contract (DESIGN section 3)::

    <root>/attenuation/<id>.<ext>   input radiograph
    <root>/darkfield/<id>.<ext>     dark-field target, same id, same shape
    <root>/masks/<id>.<ext>         optional multi-label masks (integer bit flags)
    <root>/manifest.csv             id, patient, split[, case, ood, ...]
    <root>/dataset.json             optional, {"darkfield_units": "D" | "visibility"}

Errors make a data set unusable (``PairedDataset`` refuses it). Warnings do not: a colour image
that is converted to grey, an image file that the manifest does not list (it is ignored), a mask
without an image, visibility values <= 0 (clipped before the log), a constant dark-field target,
and an empty ``train`` or ``val`` split.

Empty splits are warnings, not errors, because a folder with only a ``test`` split is a valid
data set for ``evaluate`` and ``predict``. Training cannot use it: ``train`` calls
:func:`require_splits` (``("train", "val")``), which raises :class:`EmptySplitError` naming the
manifest and the empty split; ``evaluate`` can call it with its own split.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm
from typing_extensions import TypedDict, Unpack

from darkfield_nb.contract import (
    ATTENUATION_DIR,
    DARKFIELD_DIR,
    MANIFEST_NAME,
    MASKS_DIR,
    MIN_IMAGE_SIDE,
    ManifestError,
    check_manifest,
    radiograph_problems,
    read_manifest,
    read_sidecar,
)
from darkfield_nb.io import IMAGE_SUFFIXES, read_image

FOLDERS = (ATTENUATION_DIR, DARKFIELD_DIR)
MASK_FOLDER = MASKS_DIR
#: The splits training needs: ``train`` to learn from, ``val`` to measure and pick checkpoints.
TRAINING_SPLITS: tuple[str, ...] = ("train", "val")


class EmptySplitError(ValueError):
    """A split a task needs has no images; the message names the manifest and the split."""


@dataclass
class DatasetReport:
    """What ``inspect_dataset`` found: ``errors`` and ``warnings`` name the file each."""

    root: Path
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_pairs: int = 0
    split_counts: dict[str, int] = field(default_factory=dict)
    #: Splits of ``required_splits`` (``inspect_dataset``) with no manifest rows.
    empty_splits: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def scan_folder(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Map id -> file for the images in ``folder``; collect problems with its entries.

    Hidden names (starting with ".", e.g. temporary files of an unfinished atomic write) are
    skipped. Problems: a sub-directory, an unknown extension, one id with two files.
    """
    files: dict[str, Path] = {}
    problems: list[str] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            problems.append(f"{entry}: is a directory, expected an image file")
            continue
        if entry.suffix.lower() not in IMAGE_SUFFIXES:
            problems.append(
                f"{entry}: unknown image extension {entry.suffix!r}; "
                f"known: {', '.join(IMAGE_SUFFIXES)}"
            )
            continue
        if entry.stem in files:
            problems.append(
                f"{entry}: id {entry.stem!r} has two files: {files[entry.stem].name} and "
                f"{entry.name}; keep one"
            )
            continue
        files[entry.stem] = entry
    return files, problems


def split_problems(
    manifest: str | os.PathLike,
    counts: dict[str, int],
    required: tuple[str, ...] | list[str] = TRAINING_SPLITS,
    purpose: str = "training",
) -> list[str]:
    """One line per split of ``required`` with no rows in ``counts`` (``{split: n_rows}``)."""
    listing = ", ".join(f"{k} {n}" for k, n in counts.items() if n) or "no rows at all"
    return [
        f"{manifest}: split {s!r} has no images, but {purpose} needs it (manifest: {listing})"
        for s in required
        if not counts.get(s)
    ]


def require_splits(
    root: str | os.PathLike,
    required: tuple[str, ...] | list[str] = TRAINING_SPLITS,
    purpose: str = "training",
) -> dict[str, int]:
    """Rows per split of the manifest at ``root``; raise if a ``required`` split is empty.

    ``train`` calls it with the default ``("train", "val")`` before building anything;
    ``evaluate`` can call ``require_splits(root, (split,), "evaluate")``.

    Raises:
        EmptySplitError: one line naming the manifest and every empty split.
        ManifestError: the manifest is missing or malformed.
    """
    counts: dict[str, int] = {}
    for row in read_manifest(root):
        counts[row["split"]] = counts.get(row["split"], 0) + 1
    manifest = Path(root) / MANIFEST_NAME
    problems = split_problems(manifest, counts, required, purpose)
    if problems:
        prefix = f"{manifest}: "
        raise EmptySplitError(prefix + "; ".join(m.removeprefix(prefix) for m in problems))
    return counts


def _read(path: Path, report: DatasetReport) -> np.ndarray | None:
    """Read an image, turning its exceptions into errors and its warnings into warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            image = read_image(path)
        except (ValueError, ImportError) as exc:
            report.errors.append(str(exc))
            return None
        except Exception as exc:  # anything else a broken file may raise
            report.errors.append(f"{path}: unreadable ({type(exc).__name__}: {exc})")
            return None
    report.warnings += [str(w.message) for w in caught]
    return image


class InspectOptions(TypedDict, total=False):
    """The options of :func:`inspect_dataset` that :func:`validate_dataset` passes on (defaults:
    those of :func:`inspect_dataset`). ``progress``: a progress bar over the images;
    ``min_side``: the smallest accepted image side in pixels; ``required_splits``: the splits
    whose emptiness is reported (as a warning)."""

    progress: bool
    min_side: int
    required_splits: tuple[str, ...] | list[str]


def inspect_dataset(
    root: str | os.PathLike,
    *,
    progress: bool = False,
    min_side: int = MIN_IMAGE_SIDE,
    required_splits: tuple[str, ...] | list[str] = TRAINING_SPLITS,
) -> DatasetReport:
    """Check every part of a paired data set; never raises for a problem in the data.

    Reads every image once (use ``progress=True`` for a progress bar on large folders).
    ``min_side``: the smallest accepted image side (``contract.MIN_IMAGE_SIDE``; a model of
    stride ``s`` needs ``s + 1``). ``required_splits``: splits whose emptiness is reported as a
    warning (and listed in ``report.empty_splits``); ``()`` checks none.
    """
    root = Path(root)
    report = DatasetReport(root=root)
    if not root.exists():
        report.errors.append(f"{root}: data folder not found")
        return report
    if not root.is_dir():
        report.errors.append(f"{root}: is not a directory (expected a data folder)")
        return report

    files: dict[str, dict[str, Path]] = {}
    for name in (*FOLDERS, MASK_FOLDER):
        folder = root / name
        if not folder.is_dir():
            if name != MASK_FOLDER:
                what = "is not a directory" if folder.exists() else "missing folder"
                report.errors.append(f"{folder}: {what} (a data set needs {name}/)")
            files[name] = {}
            continue
        files[name], problems = scan_folder(folder)
        report.errors += problems

    rows, problems = check_manifest(root)
    report.errors += problems
    units = "D"
    try:
        units = read_sidecar(root)["darkfield_units"]
    except ManifestError as exc:
        report.errors.append(str(exc))

    att, dfd, masks = files[ATTENUATION_DIR], files[DARKFIELD_DIR], files[MASK_FOLDER]
    listed = {row["id"] for row in rows}
    for row in rows:
        i = row["id"]
        if i not in att and i not in dfd:
            report.errors.append(
                f"{root / MANIFEST_NAME}: id {i!r} names missing files "
                f"{root / ATTENUATION_DIR / i}.* and {root / DARKFIELD_DIR / i}.*"
            )
    for here, there, name in ((att, dfd, DARKFIELD_DIR), (dfd, att, ATTENUATION_DIR)):
        for i, path in here.items():
            if i not in there:
                report.errors.append(f"{path}: missing partner {root / name / i}.*")
    for i in sorted((set(att) | set(dfd)) - listed):
        if rows or not problems:  # only meaningful when the manifest could be read
            report.warnings.append(
                f"{att.get(i) or dfd.get(i)}: id {i!r} not listed in {MANIFEST_NAME}; ignored"
            )
    for i, path in masks.items():
        if i not in att:
            report.warnings.append(f"{path}: mask has no attenuation image with id {i!r}")

    ids = sorted(set(att) | set(dfd))
    for i in tqdm(ids, desc="validate", disable=not progress):
        a = _read(att[i], report) if i in att else None
        d = _read(dfd[i], report) if i in dfd else None
        if a is not None:
            report.errors += radiograph_problems(att[i], a, min_side=min_side)
        if d is not None and d.size and d.min() == d.max():
            report.warnings.append(
                f"{dfd[i]}: constant dark-field target (every pixel is {float(d.flat[0]):g})"
            )
        if a is not None and d is not None:
            if a.shape != d.shape:
                report.errors.append(
                    f"{att[i]}: shape {a.shape} does not match its partner {dfd[i]} {d.shape}"
                )
            elif i in listed:
                report.n_pairs += 1
        if d is not None and units == "visibility" and (d <= 0).any():
            report.warnings.append(
                f"{dfd[i]}: {int((d <= 0).sum())} visibility values <= 0 (clipped before -ln)"
            )
        if i in masks:
            m = _read(masks[i], report)
            if m is None:
                continue
            if np.any(m < 0) or np.any(m != np.round(m)):
                report.errors.append(
                    f"{masks[i]}: mask values must be non-negative integers (label bit flags)"
                )
            if a is not None and m.shape != a.shape:
                report.errors.append(
                    f"{masks[i]}: mask shape {m.shape} does not match {att[i]} {a.shape}"
                )
    for row in rows:
        report.split_counts[row["split"]] = report.split_counts.get(row["split"], 0) + 1
    if rows or not problems:  # a manifest that could be read
        report.empty_splits = [s for s in required_splits if not report.split_counts.get(s)]
        report.warnings += split_problems(
            root / MANIFEST_NAME, report.split_counts, report.empty_splits
        )
    return report


def validate_dataset(root: str | os.PathLike, **options: Unpack[InspectOptions]) -> list[str]:
    """Every error in the paired data set at ``root``; an empty list when it is valid.

    Each message starts with the file (or folder) it is about and names the problem: missing
    ``attenuation/`` or ``darkfield/`` folder, missing partner, one id with two extensions,
    shape mismatch (both shapes), NaN/Inf values, empty, corrupt or unreadable file, wrong
    dimensionality, unknown extension, a sub-directory among the images, a manifest row naming
    missing files, manifest problems (missing columns, unknown split, duplicate id, a patient
    in two splits), malformed ``dataset.json``, mask problems (shape, non-integer values), and
    input radiographs that cannot be used: a constant image, or a side shorter than
    ``min_side`` pixels (``contract.radiograph_problems``).

    Problems that do not make the folder unusable are issued as ``UserWarning`` rather than
    returned: colour images converted to grey, images missing from the manifest, masks without
    an image, a constant dark-field target, and an empty split of ``required_splits`` (default
    ``train`` and ``val``: a test-only folder is valid for ``evaluate``; ``train`` refuses it
    with :func:`require_splits`). Use ``inspect_dataset`` to get both lists and the counts.
    ``options``: ``progress``, ``min_side``, ``required_splits``, passed on to
    :func:`inspect_dataset` (:class:`InspectOptions`; its defaults).
    """
    report = inspect_dataset(root, **options)
    for message in report.warnings:
        warnings.warn(message, UserWarning, stacklevel=2)
    return report.errors
