"""The lung-level network: one number per radiograph, the mean dark-field D of its lungs.

A pixel-wise generator trained with a per-pixel loss ranks patients' mean lung D poorly (v5:
Spearman 0.18 on 150 never-trained patients): the patient's level is a property of the whole
image, and each pixel's loss barely sees it. A small CNN trained directly for the per-image
number, on many more simulated patients, reads it far better (``bench/lung_d_regressor.py``).
This module is that network; :mod:`.lung_level` uses it to set the level of the generator's
map.

Architecture (:class:`LevelConfig`, 0.52 M parameters with the defaults): six blocks of
[3x3 conv stride 2, BN, ReLU, 3x3 conv, BN, ReLU] (channels 16-32-48-64-96-128), global average
pool, head Linear(128, 64) - ReLU - Dropout - Linear(64, 1). It predicts the standardized target
``z = (t - m) / s`` (m, s: mean and standard deviation of the training targets), so that

    t_hat(x) = m + s * (f(x) + f(flip(x))) / 2

with ``flip`` the left-right mirror (:func:`predict_standardized` averages the two).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn


@dataclass
class LevelConfig:
    """The network and its training (:func:`darkfield_nb.level.fit.train_level_net`); every
    field has a working default.

    channels: output channels of the six stride-2 blocks; hidden: width of the head; lr,
    weight_decay: Adam's; batch_size; dropout: in the head; max_epochs: length of the cosine
    schedule and the most epochs run; min_epochs / patience: stop after ``patience`` epochs
    without a better holdout Spearman, not before ``min_epochs``; max_minutes: wall-clock cap;
    holdout_fraction: the seeded share of the training images that decides early stopping;
    seed: initialization, holdout and batch order."""

    channels: tuple[int, ...] = (16, 32, 48, 64, 96, 128)
    hidden: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    dropout: float = 0.2
    max_epochs: int = 30
    min_epochs: int = 12
    patience: int = 8
    max_minutes: float = 13.0
    holdout_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"LevelConfig.channels={self.channels}: need positive widths")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(
                f"LevelConfig.holdout_fraction={self.holdout_fraction}: need 0 < f < 1"
            )
        if self.max_epochs < 1 or self.batch_size < 2:
            raise ValueError("LevelConfig: max_epochs >= 1 and batch_size >= 2 needed")


class LevelNet(nn.Module):
    """Strided conv blocks, global average pool, two-layer head: one number per image
    (module docstring)."""

    def __init__(self, in_channels: int = 1, cfg: LevelConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or LevelConfig()
        layers: list[nn.Module] = []
        c = in_channels
        for k in cfg.channels:
            layers += [
                nn.Conv2d(c, k, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(k),
                nn.ReLU(inplace=True),
                nn.Conv2d(k, k, 3, padding=1, bias=False),
                nn.BatchNorm2d(k),
                nn.ReLU(inplace=True),
            ]
            c = k
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Linear(c, cfg.hidden), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout)
        )
        self.out = nn.Linear(cfg.hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B,) standardized predictions."""
        f = self.features(x).mean((2, 3))
        return self.out(self.head(f))[:, 0]


@torch.no_grad()
def predict_standardized(
    model: nn.Module, x: torch.Tensor, device: str | torch.device = "cpu", batch: int = 64
) -> np.ndarray:
    """The model's output (B,) float64, averaged over each image and its left-right mirror,
    in eval mode, ``batch`` images at a time."""
    model.eval()
    out = []
    for i in range(0, len(x), batch):
        b = x[i : i + batch].to(device)
        out.append(((model(b) + model(b.flip(-1))) / 2).double().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


__all__ = ["LevelConfig", "LevelNet", "predict_standardized"]
