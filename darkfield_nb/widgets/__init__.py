"""Interactive pictures: the uncertainty threshold explorer (``threshold_explorer``) and the
numbers behind its readout (``threshold_stats``, ``sparsification``, ``parse_readout``)."""

from .explorer import KINDS, Case, ThresholdExplorer, make_cases, threshold_explorer
from .readout import (
    READOUT_KEYS,
    ThresholdStats,
    format_readout,
    interval_factor,
    parse_readout,
    sparsification,
    threshold_at_percentile,
    threshold_stats,
)

__all__ = [
    "KINDS",
    "READOUT_KEYS",
    "Case",
    "ThresholdExplorer",
    "ThresholdStats",
    "format_readout",
    "interval_factor",
    "make_cases",
    "parse_readout",
    "sparsification",
    "threshold_at_percentile",
    "threshold_explorer",
    "threshold_stats",
]
