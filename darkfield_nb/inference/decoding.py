"""Decoding radiographs for the pipeline, in ``torch.utils.data`` worker processes: read, refuse
what is not a radiograph (by name: the error is returned, the run goes on), pixel size,
resampling to the training geometry (``geometry.plan_resample``), per-image normalization
(``data.normalize_input``). Item k of :class:`GroupDataset` is group k of the shard, the unit
of one model call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from darkfield_nb.data import normalize_input
from darkfield_nb.inference import records
from darkfield_nb.inference.geometry import (
    TrainingGeometry,
    dicom_pixel_spacing,
    plan_resample,
    resize,
)
from darkfield_nb.inference.inputs import load_radiograph


def decode(path: Path, geometry: TrainingGeometry, resample: bool) -> dict[str, Any]:
    """Read, check, plan and resample one radiograph; never raises (errors are returned as
    ``{"path", "error"}``, the message naming the file)."""
    try:
        digest = records.sha256_file(path)
        image = load_radiograph(path)
        spacing = dicom_pixel_spacing(path)
        plan = plan_resample(image.shape, geometry, spacing, resample=resample, name=str(path))
        model_in = normalize_input(image)
        if not plan.identity:
            model_in = resize(model_in, plan.model_shape)
        return {
            "path": path,
            "digest": digest,
            "image": image,
            "x": torch.from_numpy(np.ascontiguousarray(model_in, dtype=np.float32)),
            "plan": plan,
        }
    except Exception as exc:  # any unreadable file (PIL's DecompressionBombError included)
        msg = str(exc) or type(exc).__name__
        if str(path) not in msg:
            msg = f"{path}: {msg}"
        return {"path": path, "error": msg}


class GroupDataset(Dataset):
    """Item k: the decoded radiographs of group k (a list of paths)."""

    def __init__(self, groups: list[list[Path]], geometry: TrainingGeometry, resample: bool):
        self.groups, self.geometry, self.resample = groups, geometry, resample

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, k: int) -> list[dict[str, Any]]:
        torch.set_num_threads(1)
        return [decode(p, self.geometry, self.resample) for p in self.groups[k]]


def identity(batch):
    """The loader's collate function: a group stays a list of decoded items."""
    return batch
