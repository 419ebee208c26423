"""The one CSV writer of the package (atomic, like every writer)."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence

from darkfield_nb.atomic import atomic_write_text


def write_csv(
    path: str | os.PathLike, rows: Iterable[dict], columns: Sequence[str] = ()
) -> list[str]:
    """Write dict rows as CSV to ``path`` atomically; the one CSV writer of the package.

    Columns: ``columns`` first, then every other key in first-seen order. A value is written
    with ``str`` (floats as ``repr``: ``nan``, ``0.1``); a missing key or ``None`` is written
    empty. Lines end in ``\n``. Returns the column names written.
    """
    rows = list(rows)
    names = list(columns)
    for row in rows:
        names += [k for k in row if k not in names]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else str(row.get(k)) for k in names})
    atomic_write_text(path, buf.getvalue())
    return names
