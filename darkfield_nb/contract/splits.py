"""Patient-level splits: the one counting rule and the one deterministic assignment."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence


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
