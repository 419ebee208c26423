"""Networks: the progressive U-Net generator and the conditional PatchGAN discriminator.

``build_generator`` and ``build_discriminator`` are the one place that turns settings into modules.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .config import DiscriminatorConfig, GeneratorConfig
from .discriminator import PatchDiscriminator
from .progressive import MCPrefix, ProgressiveGenerator
from .unet import StageOutput, UNetStage

__all__ = [
    "DiscriminatorConfig",
    "GeneratorConfig",
    "MCPrefix",
    "PatchDiscriminator",
    "ProgressiveGenerator",
    "StageOutput",
    "UNetStage",
    "build_discriminator",
    "build_generator",
    "count_parameters",
]


def build_generator(cfg: GeneratorConfig | dict[str, Any] | None = None) -> ProgressiveGenerator:
    """A :class:`ProgressiveGenerator` from a config, a plain dict of its fields, or defaults."""
    if isinstance(cfg, dict):
        cfg = GeneratorConfig.from_dict(cfg)
    return ProgressiveGenerator(cfg)


def build_discriminator(
    cfg: DiscriminatorConfig | dict[str, Any] | None = None,
) -> PatchDiscriminator:
    """A :class:`PatchDiscriminator` from a config, a plain dict of its fields, or defaults."""
    if isinstance(cfg, dict):
        cfg = DiscriminatorConfig.from_dict(cfg)
    return PatchDiscriminator(cfg)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
