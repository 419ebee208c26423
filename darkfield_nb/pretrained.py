"""The shipped pretrained model: how it is exported into ``data_samples/`` and checked.

``data_samples/pretrained.pt``    the generator in float16 (a darkfield-nb checkpoint; loads as
                                  float32 with ``darkfield_nb.checkpoint.load``)
``data_samples/pretrained.sha256`` its checksum (``sha256sum -c`` format)
``data_samples/pretrained.json``   its training recipe, the data recipe it was trained on, its
                                  training history and the test metrics it reached
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from darkfield_nb import checkpoint
from darkfield_nb.contract import read_checksums, sha256_file, write_checksum_file
from darkfield_nb.io import atomic_write_text
from darkfield_nb.paths import PRETRAINED_NAME

INFO_NAME = "pretrained.json"
SUM_NAME = "pretrained.sha256"


#: Checkpoint entries an export carries over besides the generator: the training geometry,
#: the recalibration (``darkfield-nb calibrate``), the out-of-distribution detector and the
#: lung level (``darkfield-nb fit-level``).
CARRIED_ENTRIES = ("recalibration", "ood", "lung_level")


def export_pretrained(source: str | os.PathLike, out_dir: str | os.PathLike, *, info: dict) -> Path:
    """Store the generator of checkpoint ``source`` as ``out_dir/pretrained.pt`` in float16
    with its checksum, and ``info`` (recipes, metrics) plus the training history as JSON.
    The training geometry and the entries in :data:`CARRIED_ENTRIES` travel with it."""
    ckpt, model = checkpoint.load_with_generator(source)
    out_dir = Path(out_dir)
    path = checkpoint.save(
        out_dir / PRETRAINED_NAME,
        model,
        stage=int(ckpt["stage"]),
        epoch=int(ckpt["epoch"]),
        stages_trained=int(ckpt["stages_trained"]),
        history=ckpt["history"],
        train_config=ckpt["train_config"],
        rng=False,
        half=True,
        geometry=ckpt.get("geometry"),
    )
    carried = {k: ckpt[k] for k in CARRIED_ENTRIES if ckpt.get(k) is not None}
    if carried:
        from darkfield_nb.io import atomic_path

        stored = checkpoint.load_checkpoint(path)
        stored.update(carried)
        with atomic_path(path) as tmp:
            torch.save(stored, tmp)
    write_pretrained_checksum(out_dir)
    record = {"train_config": ckpt["train_config"], "history": ckpt["history"], **info}
    atomic_write_text(out_dir / INFO_NAME, json.dumps(record, indent=1) + "\n")
    return path


def write_pretrained_checksum(out_dir: str | os.PathLike) -> Path:
    """(Re)write ``out_dir/pretrained.sha256`` for ``out_dir/pretrained.pt`` (after an entry
    such as the recalibration was added to the exported file)."""
    out_dir = Path(out_dir)
    path = out_dir / SUM_NAME
    write_checksum_file(path, {PRETRAINED_NAME: sha256_file(out_dir / PRETRAINED_NAME)})
    return path


def verify_pretrained(out_dir: str | os.PathLike) -> list[str]:
    """Problems with the shipped model in ``out_dir`` (missing files, checksum); empty if fine."""
    out_dir = Path(out_dir)
    problems = [
        f"{out_dir / n}: missing"
        for n in (PRETRAINED_NAME, SUM_NAME, INFO_NAME)
        if not (out_dir / n).exists()
    ]
    if problems:
        return problems
    expected = read_checksums(out_dir / SUM_NAME).get(PRETRAINED_NAME)
    if sha256_file(out_dir / PRETRAINED_NAME) != expected:
        problems.append(f"{out_dir / PRETRAINED_NAME}: sha256 does not match {SUM_NAME}")
    return problems
