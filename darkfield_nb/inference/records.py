"""Completion records: an output set counts as done only if what produced it is unchanged.

After the last file of a set is in place, ``<out>/.records/<stem>.json`` is written
(atomically). It holds the run key (checkpoint digest, MC samples, seed, stage, resampling
mode, output format, ``OUTPUT_VERSION``, recalibration digest, OOD scoring, epistemic map),
the input's
fingerprint (size, mtime, SHA-256), the names of the files of the set and the image's summary
row. A set is complete when its record exists, its run key equals the current one, its input is
unchanged and all its files exist:
:func:`completion_status` says so, or names what differs. The input's SHA-256 is recomputed
only when its size or modification time changed (a touched but unchanged file stays done).

:func:`clean_stale_temporaries` removes temporary files of our own naming that an interrupted
run left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from darkfield_nb.inference.inputs import is_temporary
from darkfield_nb.io import atomic_write_text

#: Bumped when the content or layout of the outputs changes (old sets are then redone).
OUTPUT_VERSION = 2
RECORDS_DIR = ".records"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(path: str | os.PathLike, digest: str | None = None) -> dict[str, Any]:
    """``{"size", "mtime_ns", "sha256"}`` of an input file."""
    st = os.stat(path)
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": digest or sha256_file(path),
    }


def run_key(
    checkpoint_sha256: str,
    samples: int,
    seed: int,
    stage: int,
    resample: str,
    fmt: str,
    recalibration: str | None = None,
    ood: bool = False,
    epistemic: str = "mc",
    level: str | None = None,
) -> dict[str, Any]:
    """What produced an output set, apart from the input. ``recalibration``: the digest of the
    applied recalibration (``hookups.recalibration_digest``, None without one); ``ood``:
    whether the sets carry an OOD score; ``epistemic``: the epistemic map written ("mc" or
    "combined"; "mc" is stored as None, so sets made before the option resume); ``level``: the
    digest of the applied lung level (``LungLevel.digest``; None without one)."""
    return {
        "checkpoint_sha256": checkpoint_sha256,
        "samples": int(samples),
        "seed": int(seed),
        "stage": int(stage),
        "resample": resample,
        "format": fmt,
        "output_version": OUTPUT_VERSION,
        "recalibration": recalibration,
        "ood": True if ood else None,  # None as in records that predate the field
        "epistemic": None if epistemic == "mc" else epistemic,
        "level": level,
    }


_WHAT = {
    "checkpoint_sha256": "checkpoint changed",
    "samples": "MC samples changed",
    "seed": "seed changed",
    "stage": "stage changed",
    "resample": "resampling mode changed",
    "format": "output format changed",
    "output_version": "output version changed",
    "recalibration": "recalibration changed",
    "ood": "OOD detector added or removed",
    "epistemic": "epistemic map changed",
    "level": "lung level changed",
}


def record_path(out_dir: Path, stem: str) -> Path:
    return Path(out_dir) / RECORDS_DIR / f"{stem}.json"


def read_record(out_dir: Path, stem: str) -> dict | None:
    """The record of ``stem`` or None (missing or unreadable)."""
    try:
        return json.loads(record_path(out_dir, stem).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_record(out_dir: Path, stem: str, record: dict) -> None:
    atomic_write_text(record_path(out_dir, stem), json.dumps(record, indent=1, sort_keys=True))


def remove_record(out_dir: Path, stem: str) -> None:
    record_path(out_dir, stem).unlink(missing_ok=True)


def completion_status(
    out_dir: Path, path: Path, key: dict[str, Any]
) -> tuple[bool, str, dict | None]:
    """(complete, reason when not, record) of the output set of input ``path``."""
    rec = read_record(out_dir, path.stem)
    if rec is None:
        return False, "no completion record (new, or interrupted)", None
    old = rec.get("key") or {}
    changed = [_WHAT.get(k, f"{k} changed") for k in key if old.get(k) != key[k]]
    if changed:
        return False, ", ".join(changed), rec
    files = rec.get("files") or []
    missing = [f for f in files if not (Path(out_dir) / f).is_file()]
    if not files or missing:
        return False, f"output missing ({', '.join(missing) or 'no files'})", rec
    inp = rec.get("input") or {}
    try:
        st = os.stat(path)
    except OSError as exc:
        return False, f"input unreadable ({exc})", rec
    if inp.get("size") == st.st_size and inp.get("mtime_ns") == st.st_mtime_ns:
        return True, "", rec
    if inp.get("sha256") != sha256_file(path):
        return False, "input changed", rec
    return True, "", rec


def clean_stale_temporaries(out_dir: str | os.PathLike, depth: int = 2) -> list[Path]:
    """Remove temporary files of our own naming (``.<stem>.<random>.tmp<suffix>``) under
    ``out_dir`` down to ``depth`` folder levels; return what was removed. Call it before any
    writer of this run starts."""
    out_dir = Path(out_dir)
    removed: list[Path] = []
    if not out_dir.is_dir():
        return removed
    folders = [out_dir]
    for _ in range(depth):
        nxt = []
        for folder in folders:
            try:
                entries = list(folder.iterdir())
            except OSError:
                continue
            for p in entries:
                if p.is_dir() and not p.is_symlink():
                    nxt.append(p)
                elif p.is_file() and is_temporary(p):
                    try:
                        p.unlink()
                        removed.append(p)
                    except OSError:
                        pass
        folders = nxt
    return removed
