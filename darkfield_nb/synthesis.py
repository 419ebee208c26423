"""Synthesize dark-field images with uncertainty maps from ordinary radiographs.

``synthesize`` turns one radiograph (any size, raw values as ``io.read_image`` returns them) into
four maps in physical dark-field units D: the Monte Carlo dropout mean and the aleatoric,
epistemic and total standard deviations (total^2 = aleatoric^2 + epistemic^2). It is
geometry-aware: the image is resampled to the geometry the model was trained on
(``darkfield_nb.inference.geometry``; the pixel size given, else the whole image taken as a
chest field of the training field of view), predicted, and the maps resampled back to the
input's size (sigma maps through their variance). ``Synthesis.plan`` records what was done.

``synthesize_folder`` does that for a folder or a list of files with the streaming pipeline
(``darkfield_nb.inference.predict_folder``) and writes

    <out>/darkfield/<stem>.tif   <out>/aleatoric/<stem>.tif
    <out>/epistemic/<stem>.tif   <out>/total/<stem>.tif      <out>/summary.csv

each set atomically (all four or none). It is resumable: a set whose completion record matches
(checkpoint, samples, seed, input) is skipped. A file that cannot be read or is not a greyscale
radiograph is reported (file and problem) and the run goes on.

``samples=0`` is one deterministic pass with dropout off: the epistemic map is 0 and the
total equals the aleatoric map.

A model loaded with ``inference.load_model`` carries its checkpoint's recalibration and OOD
detector: the sigma maps are recalibrated (times the factor map s(x) = f_in where the image's
own predicted mean exceeds the stored lung threshold, f_out elsewhere, at the model geometry;
the global factor for an entry without field factors) and each image gets an OOD score and
flag (``Synthesis.ood_score``, the ``summary.csv`` columns).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from darkfield_nb.data import normalize_input
from darkfield_nb.hardware import pick_device
from darkfield_nb.inference.geometry import (
    ResamplePlan,
    TrainingGeometry,
    plan_resample,
    resize,
    resize_mean,
    resize_sigma,
)
from darkfield_nb.inference.hookups import (
    apply_recalibration_maps,
    combine_epistemic,
    density_of_input,
    epistemic_mode,
    ood_of_input,
)
from darkfield_nb.inference.inputs import list_radiographs
from darkfield_nb.inference.mc import mc_predict_batch
from darkfield_nb.inference.outputs import MAPS
from darkfield_nb.inference.pipeline import PredictConfig, PredictReport, predict_folder

__all__ = [
    "MAPS",
    "Synthesis",
    "SynthesisReport",
    "list_radiographs",
    "model_geometry",
    "synthesize",
    "synthesize_folder",
]

SynthesisReport = PredictReport


@dataclass
class Synthesis:
    """Maps of one synthesized image, each (H, W) float32 in D units; ``plan`` says how the
    image was resampled for the model (None for older callers that build one by hand);
    ``scale`` the recalibration factor applied to the sigma maps (None: none applied): a number
    for an entry without field factors, else the map s(x) (float64) at the model geometry
    (``plan.model_shape``), from which the sigma maps were resampled back;
    ``ood_score`` / ``ood_flag`` the OOD detector's verdict on the model input (None: no
    detector); ``lung_level`` / ``level_factor`` the lung level L and the factor g that scaled
    the maps, ``lung_field`` (H, W) bool the lung field F its mean was taken over (resampled to
    the input's size; empty where the level was not applied) (None: the checkpoint carries no
    lung level)."""

    darkfield: np.ndarray
    aleatoric: np.ndarray
    epistemic: np.ndarray
    total: np.ndarray
    plan: ResamplePlan | None = None
    scale: float | np.ndarray | None = None
    ood_score: float | None = None
    ood_flag: bool | None = None
    lung_level: float | None = None
    level_factor: float | None = None
    lung_field: np.ndarray | None = None


def model_geometry(model: torch.nn.Module) -> TrainingGeometry:
    """The training geometry a loaded model carries (``checkpoint.load`` and
    ``inference.load_model`` set ``model.training_geometry``), else the default geometry of
    checkpoints that record none (``checkpoint.DEFAULT_GEOMETRY``)."""
    geo = getattr(model, "training_geometry", None)
    if isinstance(geo, TrainingGeometry):
        return geo
    if isinstance(geo, dict):  # set by checkpoint.generator_from_checkpoint / checkpoint.load
        return TrainingGeometry.from_dict(geo)
    from darkfield_nb.checkpoint import DEFAULT_GEOMETRY

    return TrainingGeometry.from_dict(DEFAULT_GEOMETRY)


@torch.no_grad()
def synthesize(
    model: torch.nn.Module,
    image: np.ndarray,
    *,
    samples: int = 20,
    device: str | torch.device = "cpu",
    seed: int = 0,
    stage: int = -1,
    geometry: TrainingGeometry | None = None,
    pixel_mm: float | tuple[float, float] | None = None,
    resample: bool = True,
    name: str = "image",
    recalibration: dict | None = None,
    detector=None,
    epistemic: str = "auto",
    level=None,
) -> Synthesis:
    """Predict the dark-field image of one radiograph with MC dropout (``samples`` passes;
    0: one deterministic pass).

    ``geometry``: the model's training geometry (default :func:`model_geometry`);
    ``pixel_mm``: the radiograph's pixel size (row, column) if known (a DICOM's
    ``inference.dicom_pixel_spacing``); ``resample=False`` predicts at the input's own size.
    A radiograph far from the training geometry gets a ``UserWarning`` naming ``name``.
    ``stage``: which stage's output (0-based; -1 the last). ``device``: "auto" | "cpu" |
    "cuda" | a ``torch.device`` (``hardware.pick_device``).
    ``recalibration`` / ``detector``: a checkpoint's recalibration entry and OOD detector
    (default: ``model.recalibration`` / ``model.ood_detector``, which ``inference.load_model``
    sets); the sigma maps are multiplied by the recalibration's factor map s(x), f_in where
    this prediction's MC mean (at the model geometry, before resampling back) exceeds the
    stored lung threshold t and f_out elsewhere, or the global factor for an entry without
    field factors (``inference.hookups``); the model input is scored for OOD.
    ``epistemic``: as ``predict --epistemic``: "mc" the MC-dropout spread; "combined" adds the
    detector's density sigma d in quadrature, ``epistemic = sqrt((s mc)^2 + d^2)``,
    ``total = sqrt((s aleatoric)^2 + epistemic^2)``; "auto" (default) "combined" when there is
    a detector, else "mc" (``inference.hookups.epistemic_mode``).
    ``level``: a checkpoint's lung level (default ``model.lung_level``): before the
    recalibration, the dark-field and sigma maps are multiplied by its factor g
    (``inference.hookups.apply_level_factor``).
    """
    if recalibration is None:
        recalibration = getattr(model, "recalibration", None)
    if detector is None:
        detector = getattr(model, "ood_detector", None)
    if level is None:
        level = getattr(model, "lung_level", None)
    if image.ndim != 2:
        raise ValueError(f"synthesize: expected a 2-D radiograph, got shape {image.shape}")
    mode = epistemic_mode(epistemic, detector, getattr(model, "checkpoint_path", None))
    geometry = geometry or model_geometry(model)
    spacing = None
    if pixel_mm is not None:
        row, col = (pixel_mm, pixel_mm) if np.isscalar(pixel_mm) else pixel_mm
        spacing = (float(row), float(col), "given")
    plan = plan_resample(image.shape, geometry, spacing, resample=resample, name=name)
    for w in plan.warnings:
        warnings.warn(w, UserWarning, stacklevel=2)
    x = normalize_input(image).astype(np.float32)
    if not plan.identity:
        x = resize(x, plan.model_shape)
    device = pick_device(device)
    model = model.to(device).eval()
    xt = torch.from_numpy(np.ascontiguousarray(x))[None, None].to(device)
    maps = mc_predict_batch(model, xt, samples=samples, seed=seed, stage=stage)
    out = {k: v[0, 0].float().cpu().numpy() for k, v in maps.items()}
    lung_level = level_factor = lung_field = None
    if level is not None:
        mean = out["darkfield"][None]
        field, agreement = level.lung_field_checked(xt, mean)
        lung_field = field[0]
        lung_level = float(level.estimate(xt)[0])
        level_factor = float(level.factors_of(np.array([lung_level]), mean, field)[0])
        said = level.level_warning(level_factor, None if agreement is None else agreement[0])
        if said:
            warnings.warn(f"{name}: {said}" if name else said, UserWarning, stacklevel=2)
    out, scale = apply_recalibration_maps(out, recalibration, level_factor=level_factor)
    ood = {}
    if mode == "combined":
        ood, density = density_of_input(detector, x, device)
        out = combine_epistemic(out, density)
    elif detector is not None:
        ood = ood_of_input(detector, x, device)
    if not plan.identity:
        shape = plan.input_shape
        out = {
            k: resize_mean(v, shape) if k == "darkfield" else resize_sigma(v, shape)
            for k, v in out.items()
        }
        if lung_field is not None:
            lung_field = resize(lung_field.astype(np.float32), shape) > 0.5
    return Synthesis(
        **{k: out[k] for k in MAPS},
        plan=plan,
        scale=scale,
        lung_level=lung_level,
        level_factor=level_factor,
        lung_field=lung_field,
        **ood,
    )


def synthesize_folder(
    model: torch.nn.Module,
    inputs: str | os.PathLike | list,
    out_dir: str | os.PathLike,
    *,
    samples: int = 20,
    device: str | torch.device = "cpu",
    seed: int = 0,
    stage: int = -1,
    progress: bool = True,
    checkpoint_sha256: str = "",
    **options,
) -> PredictReport:
    """Synthesize every radiograph of ``inputs`` (a folder, a paired-data root or a list of
    files) into ``out_dir`` with :func:`darkfield_nb.inference.predict_folder`. ``options``:
    further :class:`~darkfield_nb.inference.PredictConfig` fields (``format``, ``preview``,
    ``batch_size``, ``workers``, ``resample``, ``precision``)."""
    cfg = PredictConfig(samples=samples, seed=seed, stage=stage, progress=progress, **options)
    return predict_folder(
        model,
        inputs,
        out_dir,
        geometry=model_geometry(model),
        checkpoint_sha256=checkpoint_sha256,
        config=cfg,
        device=device,
        recalibration=getattr(model, "recalibration", None),
        detector=getattr(model, "ood_detector", None),
    )
