"""The lung-mask network: where the lungs are, read from the attenuation radiograph.

The lung level (:mod:`.lung_level`) sets each map's level so that its mean over the lung equals
the level networks' estimate L. Which pixels count as lung decides what that mean is: the
generator's own field {mu > t} differs from the patient's lungs by a few pixels at every edge,
and the ratio of the two means varies by about 6 % from image to image, enough to lower the
map's ranking of patients (Spearman 0.49 on seed-12 patients, where L alone ranks them at
0.52). This network predicts the lung mask itself, trained on the simulator's labels.

Architecture (:class:`LungMaskConfig`): the package's small U-Net
(:class:`~darkfield_nb.models.small_unet.SmallUNet`: double [3x3 conv, BN, ReLU] blocks, 2x2
max pooling, bilinear upsampling with skip connections, so no checkerboard; one logit per
pixel).
Training (:func:`train_lung_mask_net`) minimises

    loss = BCE(sigmoid(z), m) + (1 - Dice_soft),
    Dice_soft = (2 sum p m + 1) / (sum p + sum m + 1)        (per image, averaged)

with Adam and a cosine schedule, random left-right flips, and keeps the epoch with the best
Dice of the thresholded mask (p > 0.5) on a seeded holdout. The probability map is averaged over
the image and its left-right mirror (:func:`predict_lung_probability`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from darkfield_nb.hardware import pick_device, seed_everything
from darkfield_nb.models.small_unet import SmallUNet

from .epochs import holdout_split, train_early_stopped


@dataclass
class LungMaskConfig:
    """The network and its training; every field has a working default.

    channels: widths of the encoder levels (the last is the bottleneck); lr, weight_decay:
    Adam's; batch_size; max_epochs: length of the cosine schedule and the most epochs run;
    min_epochs / patience: stop after ``patience`` epochs without a better holdout Dice, not
    before ``min_epochs``; max_minutes: wall-clock cap; holdout_fraction: the seeded share of
    the images that decides early stopping; seed: initialization, holdout and batch order."""

    channels: tuple[int, ...] = (8, 16, 32, 64)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    max_epochs: int = 12
    min_epochs: int = 4
    patience: int = 3
    max_minutes: float = 40.0
    holdout_fraction: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) < 2 or min(self.channels) < 1:
            raise ValueError(
                f"LungMaskConfig.channels={self.channels}: need two or more positive widths"
            )
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(
                f"LungMaskConfig.holdout_fraction={self.holdout_fraction}: need 0 < f < 1"
            )
        if self.max_epochs < 1 or self.batch_size < 2:
            raise ValueError("LungMaskConfig: max_epochs >= 1 and batch_size >= 2 needed")


class LungMaskNet(SmallUNet):
    """:class:`~darkfield_nb.models.small_unet.SmallUNet` with ``cfg.channels``: (B, 1, H, W) ->
    (B, 1, H, W) logits of the lung mask (module docstring). H and W must be divisible by
    2^(len(channels) - 1), so that every pooling halves the image exactly."""

    def __init__(self, cfg: LungMaskConfig | None = None) -> None:
        cfg = cfg or LungMaskConfig()
        super().__init__(cfg.channels)
        self.cfg = cfg
        self.multiple = 2 ** (len(cfg.channels) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.multiple or x.shape[-1] % self.multiple:
            raise ValueError(
                f"LungMaskNet: input {tuple(x.shape[-2:])} is not divisible by {self.multiple}"
            )
        return super().forward(x)


@torch.no_grad()
def predict_lung_probability(
    model: nn.Module, x: torch.Tensor | np.ndarray, device: str | torch.device = "cpu",
    batch: int = 32,
) -> np.ndarray:  # fmt: skip
    """P(lung) per pixel, (B, H, W) float32, of inputs ``x`` (B, 1, H, W): the sigmoid of the
    logits averaged over the image and its left-right mirror, in eval mode."""
    model.eval()
    x = torch.as_tensor(x, dtype=torch.float32)
    out = []
    for i in range(0, len(x), batch):
        b = x[i : i + batch].to(device)
        p = (torch.sigmoid(model(b)) + torch.sigmoid(model(b.flip(-1))).flip(-1)) / 2
        out.append(p[:, 0].float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0,) + tuple(x.shape[-2:]), np.float32)


def dice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice coefficient 2|P n T| / (|P| + |T|) per image of boolean stacks (B, H, W); 1 where
    both are empty."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    inter = (pred & truth).sum(axis=(-2, -1))
    size = pred.sum(axis=(-2, -1)) + truth.sum(axis=(-2, -1))
    return np.where(size > 0, 2.0 * inter / np.maximum(size, 1), 1.0)


def _loss(logits: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, m)
    p = torch.sigmoid(logits)
    soft = (2 * (p * m).sum((1, 2, 3)) + 1) / (p.sum((1, 2, 3)) + m.sum((1, 2, 3)) + 1)
    return bce + (1 - soft).mean()


def train_lung_mask_net(
    x: np.ndarray,
    lung: np.ndarray,
    cfg: LungMaskConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[LungMaskNet, dict]:
    """Train :class:`LungMaskNet` on inputs ``x`` (N, H, W) (normalized, as the generator sees
    them) and boolean lung masks ``lung`` (N, H, W) (module docstring); deterministic for a seed
    on one device. Returns (the network at its best holdout epoch, in eval mode on the CPU,
    ``info``: ``best_holdout_dice`` (mean over holdout images), ``n_fit``, ``n_holdout``,
    ``history``)."""
    cfg = cfg or LungMaskConfig()
    x, lung = np.asarray(x), np.asarray(lung)
    if x.ndim != 3 or x.shape != lung.shape:
        raise ValueError(
            f"train_lung_mask_net: inputs {x.shape} and masks {lung.shape} must both be (N, H, W)"
        )
    device = pick_device(device)
    seed_everything(cfg.seed)
    hold, fit = holdout_split(
        len(x), cfg.holdout_fraction, cfg.seed, min_holdout=2, where="train_lung_mask_net"
    )
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))[:, None]
    mt = torch.from_numpy(np.ascontiguousarray(lung, np.float32))[:, None]
    model = LungMaskNet(cfg).to(device)

    def batch_loss(idx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        xb, mb = xt[idx], mt[idx]  # copies: the flips below leave xt and mt alone
        xb[flip], mb[flip] = xb[flip].flip(-1), mb[flip].flip(-1)
        return _loss(model(xb.to(device)), mb.to(device))

    def holdout_dice() -> float:
        prob = predict_lung_probability(model, xt[hold], device)
        return float(dice(prob > 0.5, lung[hold]).mean())

    best, history = train_early_stopped(
        model, fit, batch_loss, holdout_dice, cfg,
        desc="lung mask", score_name="holdout_dice", progress=progress,
    )  # fmt: skip
    info = {
        "best_holdout_dice": best,
        "n_fit": len(fit),
        "n_holdout": len(hold),
        "history": history,
    }
    return model.cpu().eval(), info


__all__ = [
    "LungMaskConfig",
    "LungMaskNet",
    "dice",
    "predict_lung_probability",
    "train_lung_mask_net",
]
