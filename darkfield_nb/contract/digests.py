"""Checksums of a data set: ``checksums.sha256`` in ``sha256sum`` format over the manifest, the
sidecar and every image (``sha256sum -c`` reads it)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from darkfield_nb.contract.layout import CHECKSUM_NAME, DATA_DIRS, MANIFEST_NAME, SIDECAR_NAME
from darkfield_nb.io import atomic_write_text


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
