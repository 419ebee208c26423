"""The lung level: a per-image estimate of the mean lung dark-field, read from the whole
radiograph, that sets the level of the generator's map (issue 9).

* :mod:`.net`: the network (a small CNN regressor) and its flip-averaged prediction;
* :mod:`.fit`: its training data (simulated paired folders) and training;
* :mod:`.lung_mask`: the lung-mask network (a small U-Net) whose field {P(lung) > 0.5} is where
  the map's mean is taken;
* :mod:`.lung_level`: :class:`LungLevel`, the factor ``g = L / mean over the lung field of mu``
  that scales the map and its sigmas;
* :mod:`.store` (import it by name; it reads data folders and checkpoints): the checkpoint
  entry ``"lung_level"`` and ``darkfield-nb fit-level``.
"""

from .lung_level import LungLevel
from .lung_mask import LungMaskConfig, LungMaskNet, predict_lung_probability
from .net import LevelConfig, LevelNet, predict_standardized

__all__ = [
    "LevelConfig",
    "LevelNet",
    "LungLevel",
    "LungMaskConfig",
    "LungMaskNet",
    "predict_lung_probability",
    "predict_standardized",
]
