"""The paired-folder contract (DESIGN section 3) in one place.

```
<root>/attenuation/<id>.<ext>   input radiograph
<root>/darkfield/<id>.<ext>     target dark-field image (units in dataset.json)
<root>/masks/<id>.png           optional uint16 sums of darkfield_nb.labels bits
<root>/manifest.csv             id, patient, split[, case, ood, ...]
<root>/dataset.json             optional sidecar, {"darkfield_units": "D" | "visibility", ...}
<root>/checksums.sha256         optional, ``sha256sum`` format over the data files
```

This module holds the names, the manifest and sidecar readers and writers, the dark-field
units, what an input image must be (:func:`radiograph_problems`: not constant, not too small),
checksums, and the one patient-level split rule. It sits at the floor of the import
flow: it imports only ``darkfield_nb.io`` (atomic writes, the CSV writer) and
``darkfield_nb.labels``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from darkfield_nb.io import atomic_write_text, write_csv
from darkfield_nb.labels import SPLITS

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


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


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
    for i, row in enumerate(rows):
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"{path}: row {i} lacks required key(s) {', '.join(missing)}")
    write_csv(path, rows, columns=REQUIRED_COLUMNS)


# --------------------------------------------------------------------------------------------
# Sidecar and units
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# What an input image must be
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (the ``sha256sum`` digest)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def write_checksum_file(path: str | os.PathLike, digests: dict[str, str]) -> Path:
    """Write ``{relative path: sha256}`` to ``path`` in ``sha256sum`` format, atomically."""
    path = Path(path)
    atomic_write_text(path, "".join(f"{digest}  {rel}\n" for rel, digest in digests.items()))
    return path


def read_checksums(path: str | os.PathLike) -> dict[str, str]:
    """Parse a ``sha256sum`` file into ``{relative path: sha256}``."""
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            out[rel.lstrip("*").strip()] = digest
    return out


def _data_files(root: Path) -> list[Path]:
    files = [root / name for name in (MANIFEST_NAME, SIDECAR_NAME) if (root / name).is_file()]
    for sub in DATA_DIRS:
        if (root / sub).is_dir():
            # hidden names (temporary files of an unfinished write) are not data
            files += sorted(
                p for p in (root / sub).iterdir() if p.is_file() and not p.name.startswith(".")
            )
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def checksums(root: str | os.PathLike) -> dict[str, str]:
    """``{relative path: sha256}`` of every data file (images, manifest, dataset.json)."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in _data_files(root)}


def write_checksums(root: str | os.PathLike) -> Path:
    """Write ``<root>/checksums.sha256`` in ``sha256sum`` format (``sha256sum -c`` reads it)."""
    return write_checksum_file(Path(root) / CHECKSUM_NAME, checksums(root))


def verify_checksums(root: str | os.PathLike) -> list[str]:
    """Every mismatch between ``<root>/checksums.sha256`` and the files; empty when all match."""
    root = Path(root)
    path = root / CHECKSUM_NAME
    if not path.is_file():
        return [f"{path}: checksum file not found"]
    expected = read_checksums(path)
    actual = checksums(root)
    problems = [f"{root / rel}: missing" for rel in expected if rel not in actual]
    problems += [
        f"{root / rel}: not listed in {CHECKSUM_NAME}" for rel in actual if rel not in expected
    ]
    problems += [
        f"{root / rel}: sha256 mismatch"
        for rel in expected
        if rel in actual and actual[rel] != expected[rel]
    ]
    return problems


# --------------------------------------------------------------------------------------------
# Patient-level splits
# --------------------------------------------------------------------------------------------


def split_counts(n: int, fractions: Sequence[float], *, fill_every: bool = False) -> list[int]:
    """How many of ``n`` ordered patients go to each split: the one counting rule.

    Every split but the last gets ``round(f_k * n)`` (Python's ``round``, half to even),
    capped so the running total stays <= ``n``; the last split gets the rest. ``fractions``
    must already sum to 1. With ``fill_every`` and at least as many patients as non-zero
    fractions, a split with a non-zero fraction left empty takes one patient from the largest
    split (the earliest on ties).
    """
    counts: list[int] = []
    left = int(n)
    for f in fractions[:-1]:
        c = min(int(round(float(f) * n)), left)
        counts.append(c)
        left -= c
    counts.append(left)
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if fill_every and n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[i] += 1
    return counts


def cut_splits(
    ordered: Sequence,
    fractions: Sequence[float],
    names: Sequence[str] = ("train", "val", "test"),
    *,
    fill_every: bool = False,
) -> dict:
    """``{patient: split}``: consecutive blocks of ``ordered`` sized by :func:`split_counts`.

    The caller decides the order (a seeded shuffle, a hash); this decides the sizes.
    """
    counts = split_counts(len(ordered), fractions, fill_every=fill_every)
    out: dict = {}
    start = 0
    for name, count in zip(names, counts, strict=True):
        for p in ordered[start : start + count]:
            out[p] = name
        start += count
    return out


def _key(patient: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{patient}".encode()).hexdigest()


def assign_splits(
    patients: Iterable,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    names: Sequence[str] = ("train", "val", "test"),
) -> dict:
    """Assign every patient to one split, deterministically and independent of input order.

    The unique patients are ordered by ``sha256(f"{seed}:{patient}")`` (so the result depends
    only on the set of patients and the seed) and cut by :func:`cut_splits` with
    ``fill_every=True``: when there are at least as many patients as non-zero fractions every
    such split gets at least one. All images of a patient end up in the same split.

    Returns:
        ``{patient: split_name}``.
    """
    fractions = [float(f) for f in fractions]
    if len(fractions) != len(names):
        raise ValueError(f"assign_splits: {len(fractions)} fractions for {len(names)} names")
    if any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"assign_splits: fractions must be >= 0 and sum to 1, got {fractions}")
    unique = sorted(set(patients), key=lambda p: _key(str(p), seed))
    return cut_splits(unique, fractions, names, fill_every=True)
