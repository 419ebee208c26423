"""The training history: one record (a flat dict) per epoch, written as CSV and JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

from darkfield_nb.io import atomic_write_text, write_csv

HISTORY_JSON = "history.json"
HISTORY_CSV = "history.csv"


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/Inf; null reads back as "no value"
    return value


def write_history(out_dir: str | Path, history: list[dict]) -> None:
    """Write ``history.json`` (a list of records; NaN/Inf as null) and ``history.csv``
    (columns in first-seen order; NaN written as "nan") into ``out_dir``, atomically."""
    out_dir = Path(out_dir)
    records = [{k: _json_safe(v) for k, v in rec.items()} for rec in history]
    atomic_write_text(out_dir / HISTORY_JSON, json.dumps(records, indent=1) + "\n")
    write_csv(out_dir / HISTORY_CSV, history)


def read_history(out_dir: str | Path) -> list[dict]:
    """Read ``history.json`` from ``out_dir`` (nulls come back as NaN)."""
    path = Path(out_dir) / HISTORY_JSON
    if not path.exists():
        raise FileNotFoundError(f"{path}: no training history here")
    records = json.loads(path.read_text(encoding="utf-8"))
    return [{k: math.nan if v is None else v for k, v in rec.items()} for rec in records]
