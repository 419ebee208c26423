"""Inference at archive scale: geometry-aware, streaming, sharded, resumable batch synthesis.

geometry   TrainingGeometry, plan_resample, dicom_pixel_spacing, resize, resize_sigma
inputs     resolve_inputs, load_radiograph (what is and is not a radiograph)
mc         mc_predict_batch (MC dropout whose result does not depend on the batch)
shared_decoder, fast_norm   what MC passes share, computed once; instance norm in any layout
decoding   decode, GroupDataset (the loader's worker side)
records    completion records keyed on what produced an output; stale temporary cleanup
outputs    output sets (all files or none), 16-bit PNG scale, preview panels, summary
pipeline   PredictConfig, PredictReport, predict_folder
context    process_context (torchrun group or a single process)
hookups    recalibration, OOD score, epistemic mode (mc | combined with the density sigma)
loading    load_model (generator, stages, training geometry, checkpoint digest)
"""

from darkfield_nb.inference.geometry import (
    ResamplePlan,
    TrainingGeometry,
    dicom_pixel_spacing,
    plan_resample,
    resize,
    resize_mean,
    resize_sigma,
)
from darkfield_nb.inference.inputs import NotARadiograph, load_radiograph, resolve_inputs
from darkfield_nb.inference.loading import LoadedModel, load_model
from darkfield_nb.inference.mc import mc_predict_batch
from darkfield_nb.inference.pipeline import PredictConfig, PredictReport, predict_folder

__all__ = [
    "LoadedModel",
    "NotARadiograph",
    "PredictConfig",
    "PredictReport",
    "ResamplePlan",
    "TrainingGeometry",
    "dicom_pixel_spacing",
    "load_model",
    "load_radiograph",
    "mc_predict_batch",
    "plan_resample",
    "predict_folder",
    "resize",
    "resize_mean",
    "resize_sigma",
    "resolve_inputs",
]
