"""Load a checkpoint for inference: the generator, its trained stages, geometry and digest."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from darkfield_nb.inference.geometry import TrainingGeometry
from darkfield_nb.inference.records import sha256_file


@dataclass
class LoadedModel:
    """``model`` (float32, eval mode; carries ``model.training_geometry``), ``stages_trained``,
    the training ``geometry`` (recorded, else ``checkpoint.DEFAULT_GEOMETRY``), whether it was
    ``recorded``, the checkpoint file's ``sha256`` and ``path``."""

    model: torch.nn.Module
    stages_trained: int
    geometry: TrainingGeometry
    recorded: bool
    sha256: str
    path: Path


def load_model(
    path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Load ``path`` (default: the shipped model) for inference. Errors name the file
    (``checkpoint.load_checkpoint`` / ``CheckpointError``)."""
    from darkfield_nb import checkpoint
    from darkfield_nb.paths import pretrained_checkpoint

    path = Path(path) if path is not None else pretrained_checkpoint()
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: checkpoint not found (train one with `darkfield-nb train`, or pass "
            "--checkpoint)"
        )
    ckpt = checkpoint.load_checkpoint(path)
    try:
        model = checkpoint.generator_from_checkpoint(ckpt, device)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise checkpoint.CheckpointError(f"{path}: cannot rebuild the generator ({exc})") from exc
    geometry = TrainingGeometry.from_checkpoint(ckpt)
    model.training_geometry = geometry
    return LoadedModel(
        model=model,
        stages_trained=int(ckpt["stages_trained"]),
        geometry=geometry,
        recorded=bool(ckpt.get("geometry")),
        sha256=sha256_file(path),
        path=path,
    )
