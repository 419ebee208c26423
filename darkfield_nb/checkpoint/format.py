"""The checkpoint file format: its marker, version, required keys and error type."""

from __future__ import annotations

FORMAT = "darkfield-nb-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "format",
    "format_version",
    "generator_config",
    "generator",
    "stage",
    "epoch",
    "stages_trained",
)


class CheckpointError(ValueError):
    """A file that cannot be used as a darkfield-nb checkpoint (the message names the file)."""
