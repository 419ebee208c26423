"""Load a checkpoint for inference: the generator, its trained stages, geometry and digest."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from darkfield_nb.inference.geometry import TrainingGeometry
from darkfield_nb.inference.records import sha256_file


@dataclass
class LoadedModel:
    """``model`` (float32, eval mode; carries ``model.training_geometry``), ``stages_trained``,
    the training ``geometry`` (recorded, else ``checkpoint.DEFAULT_GEOMETRY``), whether it was
    ``recorded``, the checkpoint file's ``sha256`` and ``path``; the checkpoint's
    ``recalibration`` entry (``calibration.recalibration_of``), OOD ``detector``
    (``epistemic.detector_from_checkpoint``, on ``model``) and lung ``level``
    (``level.LungLevel``), None when it carries none. All three are also attached to the model
    (``model.recalibration``, ``model.ood_detector``, ``model.lung_level``), which
    ``predict_folder`` and ``synthesize`` read by default. A recalibration fitted with another
    lung level than the checkpoint carries (or with one it lacks) is a CheckpointError."""

    model: torch.nn.Module
    stages_trained: int
    geometry: TrainingGeometry
    recorded: bool
    sha256: str
    path: Path
    recalibration: dict | None = None
    detector: Any = None
    level: Any = None


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
    ckpt, model = checkpoint.load_with_generator(path, device)
    if int(ckpt["stages_trained"]) < 1:
        raise checkpoint.CheckpointError(
            f"{path}: no stage of this generator is trained yet (stages_trained=0); predict "
            "with a stage{k}.pt or model.pt"
        )
    geometry = TrainingGeometry.from_checkpoint(ckpt)
    model.training_geometry = geometry
    from darkfield_nb.calibration.store import recalibration_of
    from darkfield_nb.epistemic.store import detector_from_checkpoint
    from darkfield_nb.level.store import stored_level

    try:
        recal = recalibration_of(ckpt)
        detector = detector_from_checkpoint(ckpt, model)
        level = stored_level(ckpt, recal, str(path))
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise checkpoint.CheckpointError(f"{path}: unusable stored entry ({exc})") from exc
    if level is not None:
        level.to(next(model.parameters()).device)
    model.recalibration, model.ood_detector, model.lung_level = recal, detector, level
    model.checkpoint_path = path  # named by predict_folder's errors
    return LoadedModel(
        model=model,
        stages_trained=int(ckpt["stages_trained"]),
        geometry=geometry,
        recorded=bool(ckpt.get("geometry")),
        sha256=sha256_file(path),
        path=path,
        recalibration=recal,
        detector=detector,
        level=level,
    )
