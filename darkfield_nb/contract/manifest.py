"""``manifest.csv`` (id, patient, split, extra columns) and the ``dataset.json`` sidecar: read
with every problem collected, written atomically."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from darkfield_nb.contract.layout import (
    DARKFIELD_UNITS,
    MANIFEST_NAME,
    REQUIRED_COLUMNS,
    SIDECAR_NAME,
    ManifestError,
)
from darkfield_nb.io import atomic_write_text, write_csv
from darkfield_nb.labels import SPLITS


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


# ---------------------------------------------------------------------------- sidecar


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
