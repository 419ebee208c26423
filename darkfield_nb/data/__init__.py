"""The paired-data layer: transforms, splits, augmentation, validation and the Dataset.

Public names::

    normalize_input(image, low=1.0, high=99.0)      # the one input normalization
    darkfield_to_D(values, units)                   # "D" or "visibility" -> D
    pad_to_multiple(t, multiple) -> (padded, pad); unpad(t, pad)
    assign_splits(patients, fractions, seed)        # patient-level, deterministic (contract)
    Augment                                         # aligned geometry + display processing
    validate_dataset(root) -> list[str]; inspect_dataset(root) -> DatasetReport
    require_splits(root, ("train", "val")) -> counts   # raises EmptySplitError naming the split
    PairedDataset(root, split=None, ...)
"""

from darkfield_nb.contract import DARKFIELD_UNITS, assign_splits
from darkfield_nb.data.augment import Augment
from darkfield_nb.data.dataset import PairedDataset
from darkfield_nb.data.transforms import (
    darkfield_to_D,
    normalize_input,
    pad_to_multiple,
    unpad,
)
from darkfield_nb.data.validate import (
    TRAINING_SPLITS,
    DatasetReport,
    EmptySplitError,
    inspect_dataset,
    require_splits,
    validate_dataset,
)

__all__ = [
    "DARKFIELD_UNITS",
    "TRAINING_SPLITS",
    "Augment",
    "DatasetReport",
    "EmptySplitError",
    "PairedDataset",
    "assign_splits",
    "darkfield_to_D",
    "inspect_dataset",
    "normalize_input",
    "pad_to_multiple",
    "require_splits",
    "unpad",
    "validate_dataset",
]
