"""Patient-level train/val/test splits that do not depend on the order of the input."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence


def _key(patient: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{patient}".encode()).hexdigest()


def assign_splits(
    patients: Iterable,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    names: Sequence[str] = ("train", "val", "test"),
) -> dict:
    """Assign every patient to one split, deterministically.

    The unique patients are ordered by ``sha256(f"{seed}:{patient}")`` (so the result does not
    depend on the order or repetition of ``patients``, only on the set and the seed) and cut
    into consecutive blocks whose sizes follow ``fractions``: each split first gets
    ``floor(f * n)`` patients, the remaining ones go to the largest fractional parts, and when
    there are at least as many patients as non-zero fractions every such split gets at least
    one. All images of a patient end up in the same split.

    Returns:
        ``{patient: split_name}``.
    """
    fractions = [float(f) for f in fractions]
    if len(fractions) != len(names):
        raise ValueError(f"assign_splits: {len(fractions)} fractions for {len(names)} names")
    if any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"assign_splits: fractions must be >= 0 and sum to 1, got {fractions}")
    unique = sorted(set(patients), key=lambda p: _key(str(p), seed))
    n = len(unique)
    exact = [f * n for f in fractions]
    counts = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[i] += 1
    out: dict = {}
    start = 0
    for name, count in zip(names, counts, strict=True):
        for p in unique[start : start + count]:
            out[p] = name
        start += count
    return out
