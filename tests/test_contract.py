"""Tests of darkfield_nb.contract: manifest and sidecar, units, checksums, the split rule.

References: the rows we wrote (round trips), hashlib and the ``sha256sum`` line format,
the standard library's csv module, and counts computed by hand for the split rule.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest

from darkfield_nb import contract, data, io
from darkfield_nb.contract import (
    DARKFIELD_UNITS,
    ManifestError,
    assign_splits,
    check_manifest,
    checksums,
    cut_splits,
    read_checksums,
    read_manifest,
    read_sidecar,
    sha256_file,
    split_counts,
    verify_checksums,
    write_checksums,
    write_manifest,
    write_sidecar,
)

# ------------------------------------------------------------------ manifest and sidecar


def test_manifest_round_trip_keeps_extra_columns(tmp_path):
    rows = [
        {"id": "a", "patient": "p1", "split": "train", "case": "healthy"},
        {"id": "b", "patient": "p2", "split": "ood", "case": "pacemaker", "ood": "pacemaker"},
    ]
    write_manifest(tmp_path, rows)
    assert (tmp_path / "manifest.csv").read_text().splitlines()[0] == "id,patient,split,case,ood"
    back = read_manifest(tmp_path)
    assert back[0] == {**rows[0], "ood": ""}
    assert back[1] == rows[1]


def test_manifest_missing(tmp_path):
    with pytest.raises(ManifestError, match="manifest.csv: manifest not found"):
        read_manifest(tmp_path)


def test_manifest_missing_split_column(tmp_path):
    (tmp_path / "manifest.csv").write_text("id,patient\na,p1\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path)
    assert "manifest.csv" in str(info.value) and "missing required column(s) split" in str(
        info.value
    )


def test_manifest_unknown_split_names_row_and_value(tmp_path):
    (tmp_path / "manifest.csv").write_text("id,patient,split\na,p1,train\nb,p2,training\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path)
    assert "line 3" in str(info.value) and "unknown split 'training'" in str(info.value)


def test_manifest_collects_every_problem(tmp_path):
    (tmp_path / "manifest.csv").write_text(
        "id,patient,split\na,p1,train\na,p2,val\nb,p1,test\nc,,train\n"
    )
    rows, problems = check_manifest(tmp_path)
    text = "\n".join(problems)
    assert "duplicate id 'a'" in text
    assert "patient 'p1' appears in more than one split" in text
    assert "line 5: empty patient" in text
    assert len(problems) == 3


def test_write_manifest_is_atomic_and_requires_columns(tmp_path):
    with pytest.raises(ValueError, match="lacks required key"):
        write_manifest(tmp_path / "manifest.csv", [{"id": "a", "patient": "p"}])
    assert list(tmp_path.iterdir()) == []


def test_sidecar_default_and_round_trip(tmp_path):
    assert read_sidecar(tmp_path) == {"darkfield_units": "D"}
    write_sidecar(tmp_path, {"darkfield_units": "visibility", "generator": "phantom"})
    assert read_sidecar(tmp_path) == {"darkfield_units": "visibility", "generator": "phantom"}
    assert json.loads((tmp_path / "dataset.json").read_text())["generator"] == "phantom"


@pytest.mark.parametrize(
    "text, problem", [("{not json", "not valid JSON"), ('{"darkfield_units": "mm"}', "'mm'")]
)
def test_sidecar_bad(tmp_path, text, problem):
    (tmp_path / "dataset.json").write_text(text)
    with pytest.raises(ManifestError) as info:
        read_sidecar(tmp_path)
    assert "dataset.json" in str(info.value) and problem in str(info.value)


def test_sha256_file_matches_hashlib_on_multi_chunk_file(tmp_path):
    data = bytes(range(256)) * 5000  # 1.28 MB: more than one 1 MiB chunk
    (tmp_path / "f.bin").write_bytes(data)
    assert sha256_file(tmp_path / "f.bin") == hashlib.sha256(data).hexdigest()
    assert sha256_file(tmp_path / "f.bin", chunk=7) == hashlib.sha256(data).hexdigest()


def test_sidecar_units_are_the_one_list():
    """One definition of the units: the data layer re-exports the contract's tuple, and io (the
    floor below the contract) holds no copy of the contract's names."""
    assert DARKFIELD_UNITS == ("D", "visibility")
    assert data.DARKFIELD_UNITS is DARKFIELD_UNITS
    for name in ("DARKFIELD_UNITS", "read_manifest", "write_manifest", "check_manifest"):
        assert not hasattr(io, name), name
        assert hasattr(contract, name)


def test_sidecar_visibility_units_reach_the_dataset(tmp_path):
    write_sidecar(tmp_path, {"darkfield_units": "visibility"})
    assert read_sidecar(tmp_path)["darkfield_units"] == "visibility"
    assert json.loads((tmp_path / "dataset.json").read_text()) == {"darkfield_units": "visibility"}


# ------------------------------------------------------------------ checksums


def _tiny_dataset(root):
    for sub, name, payload in (
        ("attenuation", "a.png", b"att"),
        ("darkfield", "a.tif", b"dfd"),
        ("masks", "a.png", b"msk"),
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub / name).write_bytes(payload)
    write_manifest(root, [{"id": "a", "patient": "p", "split": "train"}])
    write_sidecar(root, {"darkfield_units": "D"})
    (root / "notes.txt").write_text("not a data file")
    return root


def test_checksums_cover_the_data_files_in_sha256sum_format(tmp_path):
    root = _tiny_dataset(tmp_path / "ds")
    sums = checksums(root)
    assert list(sums) == [
        "attenuation/a.png",
        "darkfield/a.tif",
        "dataset.json",
        "manifest.csv",
        "masks/a.png",
    ]
    assert sums["attenuation/a.png"] == hashlib.sha256(b"att").hexdigest()
    path = write_checksums(root)
    lines = path.read_text().splitlines()
    assert lines[0] == f"{hashlib.sha256(b'att').hexdigest()}  attenuation/a.png"
    assert read_checksums(path) == sums
    assert verify_checksums(root) == []
    (root / "darkfield" / "a.tif").write_bytes(b"changed")
    (root / "masks" / "a.png").unlink()
    (root / "attenuation" / "b.png").write_bytes(b"new")
    problems = "\n".join(verify_checksums(root))
    assert "darkfield/a.tif: sha256 mismatch" in problems
    assert "masks/a.png: missing" in problems
    assert "attenuation/b.png: not listed in checksums.sha256" in problems


def test_verify_checksums_without_file(tmp_path):
    assert verify_checksums(tmp_path) == [
        f"{tmp_path / 'checksums.sha256'}: checksum file not found"
    ]


# ------------------------------------------------------------------ splits


@pytest.mark.parametrize(
    "n, fractions, expected",
    [
        (40, (0.7, 0.15, 0.15), [28, 6, 6]),
        (16, (0.7, 0.15, 0.15), [11, 2, 3]),  # round(11.2) = 11, round(2.4) = 2, rest 3
        (10, (0.7, 0.15, 0.15), [7, 2, 1]),  # round(1.5) = 2 (half to even), rest 1
        (3, (0.5, 0.5, 0.0), [2, 1, 0]),  # round(1.5) = 2, then capped at the 1 left
        (0, (0.7, 0.15, 0.15), [0, 0, 0]),
    ],
)
def test_split_counts_by_hand(n, fractions, expected):
    assert split_counts(n, fractions) == expected


def test_split_counts_fill_every():
    assert split_counts(3, (0.7, 0.15, 0.15)) == [2, 0, 1]
    assert split_counts(3, (0.7, 0.15, 0.15), fill_every=True) == [1, 1, 1]
    assert split_counts(2, (0.7, 0.15, 0.15), fill_every=True) == [1, 0, 1]  # too few to fill


def test_cut_splits_keeps_the_callers_order():
    assert cut_splits(["d", "c", "b", "a"], (0.5, 0.25, 0.25)) == {
        "d": "train",
        "c": "train",
        "b": "val",
        "a": "test",
    }


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_assign_splits_by_patient_never_two_splits(seed):
    """Images of one patient (here 1 to 4 images each) all land in their patient's split."""
    rng = np.random.default_rng(seed)
    images = [(f"img{k}", f"pat{int(rng.integers(0, 120))}") for k in range(300)]
    by_patient = assign_splits([p for _, p in images], seed=seed)
    split_of_image = {i: by_patient[p] for i, p in images}
    seen: dict[str, set[str]] = {}
    for i, p in images:
        seen.setdefault(p, set()).add(split_of_image[i])
    assert all(len(s) == 1 for s in seen.values())
    assert set(by_patient) == {p for _, p in images}


def test_assign_splits_deterministic_per_seed_and_close_to_fractions():
    patients = [f"P{i:04d}" for i in range(1000)]
    fractions = (0.6, 0.25, 0.15)
    a = assign_splits(patients, fractions, seed=11)
    assert a == assign_splits(list(reversed(patients)), fractions, seed=11)
    assert a != assign_splits(patients, fractions, seed=12)
    counts = Counter(a.values())
    for name, f in zip(("train", "val", "test"), fractions, strict=True):
        assert abs(counts[name] / len(patients) - f) <= 1 / len(patients)


def test_assign_splits_bad_input():
    with pytest.raises(ValueError, match="2 fractions for 3 names"):
        assign_splits(["a"], fractions=(0.5, 0.5))
    with pytest.raises(ValueError, match="sum to 1"):
        assign_splits(["a"], fractions=(0.5, 0.2, 0.2))
