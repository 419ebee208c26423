"""Epistemic uncertainty designs for the progressive generator.

* :mod:`.placement`: where Monte Carlo dropout sits (last decoder level, every decoder level,
  bottleneck, encoder and decoder; ``GeneratorConfig.dropout_placement``), applied to a built
  generator;
* :mod:`.ensemble`: a deep ensemble of the last stage;
* :mod:`.density`: Mahalanobis distance of encoder features (or their local patches) to the
  training features;
* :mod:`.knn`: distance to the nearest members of a coreset of training patch vectors
  (PatchCore);
* :mod:`.knn_contrast`: the detector's optional per-image lung contrast from that density;
* :mod:`.fpi` (import it by name): a self-supervised Foreign-Patch-Interpolation anomaly map,
  measured against the density in ``bench/ood_fpi.py``; not part of the detector;
* :mod:`.conversion`: distance to an epistemic sigma in dark-field units;
* :mod:`.score`: a per-image out-of-distribution score and its calibrated threshold;
* :mod:`.combined`: the default per-image score, a global (pooled distance) and a local
  (lung-field contrast of the distance map) statistic combined as the larger validation
  z-score;
* :mod:`.detector`: the fitted density, calibrated flag and epistemic sigma map in one object
  (the default out-of-distribution detector);
* :mod:`.store` (import it by name; it reads data folders and checkpoints): fit the detector
  after training and keep it in a checkpoint under ``"ood"``.
"""

from .combined import LungContrast, MaxZScore
from .conversion import DistanceSigma
from .density import (
    FeatureDensity,
    GaussianDensity,
    MultiLevelDensity,
    distance_to_sigma,
    encoder_features,
    ledoit_wolf,
    patch_features,
)
from .detector import OODDetector, OODPrediction
from .ensemble import ensemble_predict, reinit_last_stage, train_last_stage_ensemble
from .knn import KNNDensity
from .knn_contrast import default_contrast_knn
from .placement import (
    KINDS,
    PLACEMENTS,
    Placement,
    apply_placement,
    dropout_layers,
    has_encoder_dropout,
    mc_strategy,
    set_rate,
)
from .score import OODThreshold, image_auroc, image_score, rank_vs_median

__all__ = [
    "KINDS",
    "PLACEMENTS",
    "DistanceSigma",
    "FeatureDensity",
    "GaussianDensity",
    "KNNDensity",
    "LungContrast",
    "MaxZScore",
    "MultiLevelDensity",
    "OODDetector",
    "OODPrediction",
    "OODThreshold",
    "Placement",
    "apply_placement",
    "default_contrast_knn",
    "distance_to_sigma",
    "dropout_layers",
    "encoder_features",
    "ensemble_predict",
    "has_encoder_dropout",
    "image_auroc",
    "image_score",
    "ledoit_wolf",
    "mc_strategy",
    "patch_features",
    "rank_vs_median",
    "reinit_last_stage",
    "set_rate",
    "train_last_stage_ensemble",
]
