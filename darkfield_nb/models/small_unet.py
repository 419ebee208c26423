"""A small segmentation U-Net: one logit per pixel of a one-channel image.

Used by the lung-mask network (``level.lung_mask``) and the foreign-patch-interpolation anomaly
map (``epistemic.fpi``). Encoder levels of :func:`double_conv` (two [3x3 conv, BN, ReLU]) with
2x2 max pooling between them; decoder levels that upsample bilinearly to the skip connection's
size (no transposed convolution, so no checkerboard, and any input size works), concatenate it
and apply the same double convolution; a 1x1 convolution to one logit per pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def double_conv(c_in: int, c_out: int) -> nn.Sequential:
    """[3x3 conv (no bias), BatchNorm, ReLU] twice."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallUNet(nn.Module):
    """``channels``: widths of the encoder levels (the last is the bottleneck; at least two).
    (B, in_channels, H, W) -> (B, 1, H, W) logits (module docstring)."""

    def __init__(self, channels: Sequence[int], in_channels: int = 1) -> None:
        super().__init__()
        ch = [int(c) for c in channels]
        if len(ch) < 2 or min(ch) < 1:
            raise ValueError(f"SmallUNet: channels={tuple(ch)}; need two or more positive widths")
        self.in_channels = in_channels
        self.down = nn.ModuleList(
            [double_conv(in_channels if i == 0 else ch[i - 1], c) for i, c in enumerate(ch)]
        )
        self.up = nn.ModuleList(
            [double_conv(ch[i + 1] + ch[i], ch[i]) for i in reversed(range(len(ch) - 1))]
        )
        self.head = nn.Conv2d(ch[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


__all__ = ["SmallUNet", "double_conv"]
